"""Data-loader throughput (images/s through SegDataset + train transforms) on a COCO source, with
the on-disk mask cache (warm) and without it (every polygon/RLE rasterised on every read).

    python bench/loader_speed.py [--data camvid_coco] [--images 200]
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from common import REPO, save

from pipeline.config import load_config
from pipeline.data.dataset import SegDataset, train_transform
from pipeline.data.sources import open_split


def rate(ds, n):
    t = time.perf_counter()
    for k in range(n):
        ds[k % len(ds)]
    return n / (time.perf_counter() - t)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", default="camvid_coco")
    p.add_argument("--images", type=int, default=200)
    a = p.parse_args()
    cfg = load_config(a.data, "unet", None, [], 0, REPO / "configs")
    cache = Path(tempfile.mkdtemp())
    try:
        plain = open_split(cfg.data, "train")
        cached = open_split(cfg.data, "train", cache_dir=cache)
        n = min(a.images, len(plain))
        tf = train_transform(cfg.train, cfg.data.ignore_index)
        t = time.perf_counter()
        for i in range(n):
            cached.mask(i)
        fill = time.perf_counter() - t
        no_cache = rate(SegDataset(plain, range(n), tf), n)
        warm = rate(SegDataset(cached, range(n), tf), n)
        t = time.perf_counter()
        for i in range(n):
            plain.mask(i)
        masks_only_plain = n / (time.perf_counter() - t)
        t = time.perf_counter()
        for i in range(n):
            cached.mask(i)
        masks_only_cached = n / (time.perf_counter() - t)
    finally:
        shutil.rmtree(cache)
    save("loader_speed", {"data": a.data, "images": n, "cache_fill_seconds": round(fill, 2),
                          "no_cache_img_per_s": round(no_cache, 1), "warm_cache_img_per_s": round(warm, 1),
                          "masks_only_no_cache_per_s": round(masks_only_plain, 1),
                          "masks_only_warm_cache_per_s": round(masks_only_cached, 1)})


if __name__ == "__main__":
    main()
