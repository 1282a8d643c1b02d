"""`make check`: every configured split read once before any training (annotations validated,
every image decoded and its size compared, every mask read and its values checked), the label
shares sanity-checked and folds.csv compared with the data. Reports every problem at once."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from pipeline.competition.leaderboard import read_leaderboard
from pipeline.competition.postprocess import rules_problems
from pipeline.competition.truth import truth_problems
from pipeline.config import Config, StageArgs
from pipeline.data.coco import load_coco
from pipeline.data.pool import folded_splits, folds_problems, labelled_pool
from pipeline.data.sources import open_split
from pipeline.data.stats import check_label_share, label_stats
from pipeline.engine.runtime import get_logger
from pipeline.errors import DataError
from pipeline.inference.outdir import Preds
from pipeline.inference.space import outputs_space
from pipeline.io import human_bytes, read_json

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


def _report(report: dict, name: str, problems: list[str], images: int | None = None) -> None:
    report[name] = {"problems": problems} if images is None else {"images": images, "problems": problems}
    counted = "" if images is None else f"{images} image(s), "
    log.info("check: %s: %s%d problem(s)", name, counted, len(problems))
    for p in problems[:SHOWN]:
        log.info("  %s", p)
    if len(problems) > SHOWN:
        log.info("  ... and %d more", len(problems) - SHOWN)


def run(cfg: Config, args: StageArgs = StageArgs()) -> dict:
    t0, report = time.time(), {}
    for split in ("train", "val", "test", "truth"):
        if getattr(cfg.data, split) is None:
            continue
        n, problems = check_split(cfg, split)
        _report(report, split, problems, n)
    if cfg.folds_csv.exists():
        _, problems = folds_problems(cfg.folds_csv, folded_splits(cfg))
        if not problems:
            try:
                labelled_pool(cfg)
            except DataError as e:
                problems = [str(e)]
        _report(report, "folds", problems)
    _check_hand_edited(cfg, report)
    if cfg.data.classes and cfg.data.test is not None and not report.get("test", {}).get("problems"):
        _check_disk(cfg, report)
    total = sum(len(r["problems"]) for r in report.values())
    log.info("check: %d problem(s) in %.1fs", total, time.time() - t0)
    if total:
        raise DataError(f"{total} problem(s) in the data of {cfg.data.name} (listed above)")
    return report


def _check_hand_edited(cfg: Config, report: dict) -> None:
    """The files people edit by hand that later stages read, through the same readers they use."""
    if cfg.data.truth is not None and cfg.data.test is not None and not report.get("truth", {}).get("problems"):
        try:
            truth = [r.stem for r in open_split(cfg.data, "truth").records]
            test = [r.stem for r in open_split(cfg.data, "test", labelled=False).records]
            _report(report, "truth vs test list", truth_problems(truth, test, f"data.truth ({cfg.data.root})"))
        except DataError as e:
            _report(report, "truth vs test list", [str(e)])
    preds = Preds.of(cfg)
    if preds.root.is_dir():
        problems = []
        try:
            preds.read_manifest()
        except DataError as e:
            problems.append(str(e))
        try:
            problems += _rules(preds.postprocess, cfg)
        except DataError as e:  # not JSON at all
            problems.append(str(e))
        _report(report, f"predictions {preds.root}", problems)
    board = Path(cfg.submissions) / "leaderboard.csv"
    if board.exists():
        try:
            read_leaderboard(board)
            _report(report, "leaderboard", [])
        except DataError as e:
            _report(report, "leaderboard", [str(e)])


def _check_disk(cfg: Config, report: dict) -> None:
    """Room on the outputs disk for what `make infer-tta` (and a pseudo-labelling refit) will write
    at the end of the hour, said before it starts."""
    try:
        needed, what, problem = outputs_space(cfg)
    except DataError as e:  # stale folds: reported above
        log.info("check: disk space not estimated (%s)", e)
        return
    log.info("check: %s: about %s", what, human_bytes(needed))
    _report(report, "disk", [problem] if problem else [])


def _rules(path: Path, cfg: Config) -> list[str]:
    return rules_problems(read_json(path), cfg.data.classes, str(path)) if path.exists() else []  # all, not the first
