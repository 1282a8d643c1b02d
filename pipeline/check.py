"""`make check`: every configured split read once before any training (annotations validated,
every image decoded and its size compared, every mask read and its values checked), the label
shares sanity-checked and folds.csv compared with the data. Reports every problem at once."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from pipeline.config import Config
from pipeline.data.coco import load_coco
from pipeline.data.pool import labelled_pool
from pipeline.data.sources import open_split
from pipeline.data.stats import check_label_share, label_stats
from pipeline.engine.runtime import get_logger
from pipeline.errors import DataError

log = get_logger(__name__)
SHOWN = 20  # problems listed per split; the count is always complete


def check_split(cfg: Config, split: str) -> tuple[int, list[str]]:
    """(images, problems) of one split; annotation records are checked in non-strict mode so that
    all of them are reported, not only the first."""
    labelled = split != "test"
    data = dataclasses.replace(cfg.data, strict=False)
    sc = getattr(cfg.data, split)
    if not cfg.data.classes and sc.annotations:  # an EDA-only config (TACO): annotation records, no images
        try:
            coco = load_coco(Path(cfg.data.root) / sc.annotations, None, strict=False, require_annotations=labelled)
        except DataError as e:
            return 0, [str(e)]
        return len(coco.images), [f"{coco.path}: {s}" for s in coco.skipped]
    try:
        src = open_split(data, split, labelled=labelled)
    except DataError as e:
        return 0, [str(e)]
    problems = list(src.skipped)
    masks_on_disk = labelled and getattr(cfg.data, split).masks is not None
    for i, rec in enumerate(src.records):
        try:
            if rec.path is not None:
                src.image(i)
            if masks_on_disk:
                src.mask(i)
        except DataError as e:
            problems.append(str(e))
    if masks_on_disk and not problems and len(src):
        try:
            check_label_share(label_stats(src, range(len(src)), cfg.data.num_classes, cfg.data.ignore_index),
                              cfg.data.classes, cfg.data.ignore_index, f"data.{split}")
        except DataError as e:
            problems.append(str(e))
    return len(src), problems


def run(cfg: Config) -> dict:
    t0, report = time.time(), {}
    for split in ("train", "val", "test", "truth"):
        if getattr(cfg.data, split) is None:
            continue
        n, problems = check_split(cfg, split)
        report[split] = {"images": n, "problems": problems}
        log.info("check: %s: %d image(s), %d problem(s)", split, n, len(problems))
        for p in problems[:SHOWN]:
            log.info("  %s", p)
        if len(problems) > SHOWN:
            log.info("  ... and %d more", len(problems) - SHOWN)
    if cfg.folds_csv.exists():
        try:
            labelled_pool(cfg)
            report["folds"] = {"problems": []}
        except DataError as e:
            report["folds"] = {"problems": [str(e)]}
            log.info("check: folds: %s", e)
    total = sum(len(r["problems"]) for r in report.values())
    log.info("check: %d problem(s) in %.1fs", total, time.time() - t0)
    if total:
        raise DataError(f"{total} problem(s) in the data of {cfg.data.name} (listed above)")
    return report
