"""EDA on TACO's annotations: segpipe's RLE-space summary vs decoding every annotation with
pycocotools' annToMask and counting with numpy (per-category unions and pair intersections).

    python bench/eda_speed.py [--brute-images 1500]
"""
from __future__ import annotations

import argparse
import itertools
import time

from common import SHARED, save

from pipeline.data.coco import load_coco
from pipeline.eda import coco_summary


def brute(path, limit):
    from pycocotools.coco import COCO

    coco = COCO(str(path))
    by_image = {}  # grouped from the raw list: TACO reuses annotation ids, which COCO's index collapses
    for a in coco.dataset["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    pixels = {}
    for img_id in list(coco.imgs)[:limit]:
        per_cat = {}
        for a in by_image.get(img_id, []):
            m = coco.annToMask(a).astype(bool)
            per_cat[a["category_id"]] = per_cat.get(a["category_id"], False) | m
        for cid, m in per_cat.items():
            pixels[cid] = pixels.get(cid, 0) + int(m.sum())
        for a, b in itertools.combinations(sorted(per_cat), 2):
            _ = int((per_cat[a] & per_cat[b]).sum())
    return pixels


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--brute-images", type=int, default=1500)
    a = p.parse_args()
    path = SHARED / "taco" / "annotations.json"
    if not path.exists():
        raise SystemExit(f"{path}: not found (the benchmark needs ../shared/datasets/taco)")
    t = time.perf_counter()
    s = coco_summary(load_coco(path))
    ours = time.perf_counter() - t
    t = time.perf_counter()
    px = brute(path, a.brute_images)
    theirs = time.perf_counter() - t
    ids = list(px)
    agree = all(next(c for c in s["categories"] if c["id"] == i)["pixels"] == px[i] for i in ids) \
        if a.brute_images >= s["num_images"] else None
    save("eda_speed", {"images": s["num_images"], "annotations": s["num_annotations"],
                       "segpipe_seconds": round(ours, 2), "annToMask_seconds": round(theirs, 2),
                       "annToMask_images": min(a.brute_images, s["num_images"]),
                       "speedup": round(theirs / ours * s["num_images"] / min(a.brute_images, s["num_images"]), 1),
                       "pixel_counts_agree": agree, "multilabel_pixels": s["overlap"]["multilabel_pixels"],
                       "images_with_multilabel_pixels": s["overlap"]["images_with_multilabel_pixels"]})


if __name__ == "__main__":
    main()
