"""The local leaderboard: the competition metric of a submission against local ground truth,
appended to submissions/leaderboard.csv and printed ranked."""
from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from pipeline.competition.leaderboard import append_row, read_leaderboard, read_submission_meta
from pipeline.competition.metrics import competition_metric
from pipeline.competition.truth import truth_problems
from pipeline.competition.submission import (class_ids, image_key, output_label, prediction_masks, read_submission,
                                             validate)
from pipeline.config import Config, StageArgs
from pipeline.data.sources import open_split
from pipeline.engine.runtime import get_logger
from pipeline.errors import DataError
from pipeline.inference.outdir import Preds
from pipeline.io import save_figure

log = get_logger(__name__)


def newest_submission(cfg: Config) -> Path:
    folder = Path(cfg.submissions) / cfg.data.name
    subs = sorted(folder.glob("*.csv"), key=lambda p: p.stat().st_mtime)
    if not subs:
        raise FileNotFoundError(f"{folder}: no submission; run `make submission` first")
    return subs[-1]


def score_labels(preds: Preds, cfg: Config) -> float:
    """The competition metric of a prediction folder's label maps (the raw predictions, before any
    post-processing) against the local truth, at the submission's size."""
    truth, meter = open_split(cfg.data, "truth"), competition_metric(cfg)
    for k, r in enumerate(truth.records):
        pred = output_label(preds.read_label(r.stem), cfg.submission)
        meter.update(pred, output_label(truth.mask(k), cfg.submission))
    return meter.compute()["score"]


def check_truth_covers_test(truth, test: dict, cfg: Config) -> None:
    problems = truth_problems([r.stem for r in truth.records], list(test), f"data.truth ({cfg.data.root})")
    if problems:
        raise DataError(" ".join(problems))


def score_submission(path: Path, cfg: Config) -> dict:
    """The competition metric of a submission against the local truth, at the submission's size
    (truth resized with nearest neighbour when the format writes masks at a fixed size)."""
    sc, truth = cfg.submission, open_split(cfg.data, "truth")
    test = {r.stem: r for r in open_split(cfg.data, "test", labelled=False).records}
    check_truth_covers_test(truth, test, cfg)
    classes = class_ids(cfg)
    truth_maps = {}
    for k, r in enumerate(truth.records):
        key = image_key(test[r.stem], sc) if r.stem in test else r.stem
        truth_maps[key] = output_label(truth.mask(k), sc)
    df = read_submission(path, sc)
    parsed = validate(df, {k: t.shape for k, t in truth_maps.items()}, classes, sc, str(path), cfg.data.classes)
    meter = competition_metric(cfg)
    for key, t in truth_maps.items():
        meter.update_masks(prediction_masks(parsed, key, classes, t.shape, sc), t)
    m = meter.compute()
    return {"metric": meter.name, "score": m["score"], "miou": m["miou"],
            "per_class": {cfg.data.classes[c]: float(v) for c, v in zip(classes, m["per_class"])},
            "iou": {cfg.data.classes[c]: float(v) for c, v in zip(classes, m["iou"])},
            "pixel_acc": m["pixel_acc"], "images": len(truth_maps)}


def _bar_chart(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["per_class"])
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(names) + 1))
    ax.barh(names, [result["per_class"][n] for n in names])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel(result["metric"])
    ax.set_title(f"{path.stem.removesuffix('.iou')}: {result['metric']} {result['score']:.4f}")
    save_figure(path, fig)
    plt.close(fig)


def run(cfg: Config, args: StageArgs = StageArgs()) -> dict:
    path = Path(args.sub) if args.sub else newest_submission(cfg)
    result = score_submission(path, cfg)
    meta = read_submission_meta(path)
    board_path = Path(cfg.submissions) / "leaderboard.csv"
    read_leaderboard(board_path)  # a malformed leaderboard is refused before any work
    preds = Preds(Path(meta["preds"])) if meta.get("preds") else None
    if meta.get("postprocess") is not None and preds is not None and preds.labels.is_dir():
        result["score_without_postprocess"] = score_labels(preds, cfg)
    row = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "data": cfg.data.name, "file": str(path),
           "experiments": "+".join(meta.get("experiments", [])) or meta.get("exp", ""),
           "folds": " ".join(str(f) for f in meta.get("folds", [])), "tta": " ".join(meta.get("tta", [])),
           "metric": result["metric"], "cv_score": meta.get("cv_score", meta.get("cv_miou")),
           "cv_fold_std": meta.get("cv_fold_std"), "cv_kind": meta.get("cv_score_kind", "pooled_oof"),
           "local_score": result["score"], "local_score_raw": result.get("score_without_postprocess"),
           "cv_miou": meta.get("cv_miou"), "local_miou": result["miou"],
           "pixel_acc": result["pixel_acc"], **{f"iou_{k}": v for k, v in result["iou"].items()}}
    _bar_chart(result, path.with_suffix(".iou.png"))
    board = append_row(board_path, row)  # the record last, once everything else succeeded
    ranked = board[(board["data"] == cfg.data.name) & (board["metric"] == result["metric"])]
    ranked = ranked.sort_values("local_score", ascending=False)
    cols = ["time", "experiments", "folds", "tta", "metric", "cv_score", "local_score", "pixel_acc", "file"]
    with pd.option_context("display.width", 200, "display.max_colwidth", 60):
        table = ranked[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}")
    raw = result.get("score_without_postprocess")
    raw = "" if raw is None else f"; {raw:.4f} without the tuned post-processing"
    log.info("score: %s: local %s %.4f%s (mIoU %.4f), pixel accuracy %.4f\n  %s\n\nleaderboard (%s):\n%s", path,
             result["metric"], result["score"], raw, result["miou"], result["pixel_acc"],
             "  ".join(f"{k} {v:.3f}" for k, v in result["per_class"].items()), cfg.data.name, table)
    return result
