"""`make check` on the real data beside the checkout: every image decoded, every mask read, every
annotation validated. Best of 3 runs per data config.

    python bench/check_speed.py
"""
from __future__ import annotations

import logging

from common import REPO, SHARED, save, timed

from pipeline import check
from pipeline.config import load_config


def main():
    logging.disable(logging.INFO)
    rows = []
    for data in ("camvid", "camvid_coco", "taco"):
        if not SHARED.exists():
            break
        cfg = load_config(data, "unet", None, ["outputs=/tmp/segpipe-check-bench"], 0, REPO / "configs")
        report = {}

        def once():
            report.update(check.run(cfg))

        seconds = timed(once, repeat=3)
        images = sum(r.get("images", 0) for r in report.values())
        rows.append({"data": data, "images": images, "seconds": round(seconds, 2),
                     "what": {"camvid": "images decoded, mask PNGs read and checked",
                              "camvid_coco": "images decoded, COCO annotations validated",
                              "taco": "COCO annotations validated (no images in ../shared)"}[data]})
    save("check_speed", {"results": rows})


if __name__ == "__main__":
    main()
