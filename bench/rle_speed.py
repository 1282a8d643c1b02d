"""RLE encode/decode throughput: segpipe's vectorised functions vs pycocotools' C RLE vs a naive
Python loop, on 1,000 masks of 512x512 and of 360x480 (blobs, like real class masks).

    python bench/rle_speed.py [--n 1000]
"""
from __future__ import annotations

import argparse

import numpy as np
from common import save, timed
from pycocotools import mask as mask_utils

from pipeline.competition import rle


def blobs(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.zeros((n, h, w), bool)
    for k in range(n):
        for _ in range(rng.integers(1, 6)):
            cy, cx, ry, rx = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(5, h / 4), rng.uniform(5, w / 4)
            out[k] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
    return out


def naive_encode(mask: np.ndarray) -> str:
    flat, runs, start = mask.ravel(order="F"), [], None
    for i, v in enumerate(flat):
        if v and start is None:
            start = i
        elif not v and start is not None:
            runs += [start + 1, i - start]
            start = None
    if start is not None:
        runs += [start + 1, len(flat) - start]
    return " ".join(map(str, runs))


def naive_decode(text: str, shape) -> np.ndarray:
    flat = np.zeros(shape[0] * shape[1], bool)
    v = [int(x) for x in text.split()]
    for s, n in zip(v[0::2], v[1::2]):
        for i in range(s - 1, s - 1 + n):
            flat[i] = True
    return flat.reshape(shape, order="F")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--naive", type=int, default=10, help="masks timed with the naive loop (rate extrapolated)")
    a = p.parse_args()
    rows = []
    for h, w in ((512, 512), (360, 480)):
        masks = blobs(a.n, h, w)
        texts = [rle.encode(m) for m in masks]
        fortran = [np.asfortranarray(m.astype(np.uint8)) for m in masks]
        cocos = [mask_utils.encode(f) for f in fortran]
        stacked = np.asfortranarray(np.stack(fortran, axis=2))
        assert all(np.array_equal(rle.decode(t, (h, w)), m) for t, m in zip(texts[:20], masks[:20]))
        r = {"shape": [h, w], "masks": a.n}
        r["segpipe_encode_masks_per_s"] = a.n / timed(lambda: [rle.encode(m) for m in masks])
        r["segpipe_encode_row_masks_per_s"] = a.n / timed(lambda: [rle.encode(m, "row") for m in masks])
        r["pycocotools_encode_masks_per_s"] = a.n / timed(lambda: [mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for m in masks])
        r["pycocotools_encode_prepared_masks_per_s"] = a.n / timed(lambda: mask_utils.encode(stacked) and None)
        r["naive_encode_masks_per_s"] = a.naive / timed(lambda: [naive_encode(m) for m in masks[: a.naive]], 1)
        r["segpipe_decode_masks_per_s"] = a.n / timed(lambda: [rle.decode(t, (h, w)) for t in texts])
        r["pycocotools_decode_masks_per_s"] = a.n / timed(lambda: [mask_utils.decode(c) for c in cocos])
        r["naive_decode_masks_per_s"] = a.naive / timed(lambda: [naive_decode(t, (h, w)) for t in texts[: a.naive]], 1)
        rows.append({k: (round(v, 1) if isinstance(v, float) else v) for k, v in r.items()})
    save("rle_speed", {"note": "pycocotools writes its own compressed counts (not Kaggle start/length text); "
                               "'prepared' = one call on a pre-stacked Fortran uint8 array",
                       "results": rows})


if __name__ == "__main__":
    main()
