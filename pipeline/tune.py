"""`make tune`: post-processing (per class: minimum component area, empty-mask gate) searched on
the out-of-fold predictions to maximise the competition metric; the gain is also measured on each
fold with rules tuned on the other folds only, the honest estimate of what carries to the test set.
Writes preds/<exp>/postprocess.json, which `make submission` applies."""
from __future__ import annotations

import dataclasses

import numpy as np

from pipeline.competition.metrics import competition_metric
from pipeline.competition.postprocess import evaluate, tune
from pipeline.competition.submission import class_ids
from pipeline.config import Config, StageArgs
from pipeline.data.pool import labelled_pool
from pipeline.engine.runtime import get_logger
from pipeline.errors import ConfigError, DataError
from pipeline.inference.outdir import Preds
from pipeline.io import write_json

log = get_logger(__name__)


TUNE_PIXELS = 1 << 20  # larger label maps are searched on every k-th row and column


def _step(rec) -> int:
    """The rules are shares of the image's area, which subsampling keeps, so a 48-megapixel slide
    is tuned on a 1-megapixel lattice of its pixels (the grid search re-scores every image per trial)."""
    return max(1, int((rec.height * rec.width / TUNE_PIXELS) ** 0.5))


def run(cfg: Config, args: StageArgs = StageArgs()) -> dict:
    bg = cfg.competition.background
    if bg is None:
        raise ConfigError("make tune: set competition.background (the class removed pixels become)")
    folder = Preds.of(cfg)
    oof = folder.oof
    if not oof.labels.is_dir():
        raise DataError(f"{oof.labels}: no OOF predictions; run `make infer-tta` (with infer.oof=true) first")
    pool, table = labelled_pool(cfg)
    preds, truths, folds = [], [], []
    multilabel = cfg.competition.multilabel
    for _, row in table.iterrows():
        if oof.label(row["image_id"]).exists():
            step = _step(pool.records[int(row["index"])])
            if multilabel:  # the float16 probabilities, so thresholds can be searched
                preds.append(oof.read_probs(row["image_id"])[:, ::step, ::step])
            else:
                preds.append(oof.read_label(row["image_id"])[::step, ::step])
            truths.append(pool.mask(int(row["index"]))[::step, ::step])
            folds.append(int(row["fold"]))
    if not preds:
        raise DataError(f"{oof.labels}: no OOF label map matches folds.csv")
    classes, folds = class_ids(cfg), np.array(folds)

    def metric():
        return competition_metric(cfg)

    rules, before, after = tune(preds, truths, classes, metric, bg, multilabel)
    holdout = {}
    for k in sorted(set(folds.tolist())):
        inside, outside = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
        if not inside.size:
            continue
        fold_rules, _, _ = tune([preds[i] for i in inside], [truths[i] for i in inside], classes, metric, bg, multilabel)
        held = ([preds[i] for i in outside], [truths[i] for i in outside])
        holdout[k] = {"before": evaluate(*held, {}, metric, bg, multilabel),
                      "after": evaluate(*held, fold_rules, metric, bg, multilabel)}
    gains = [h["after"] - h["before"] for h in holdout.values()]
    tuned = {cfg.data.classes[c]: dataclasses.asdict(r) for c, r in rules.items()}
    if gains and float(np.mean(gains)) <= 0 and rules:  # the gain does not carry to unseen images
        log.warning("tune: rules tuned without a fold lose %.4f on it on average: not applied (kept as 'rejected')",
                    -float(np.mean(gains)))
        rules = {}
    result = {"metric": cfg.competition.metric, "background": bg, "images": len(preds),
              "rules": {cfg.data.classes[c]: dataclasses.asdict(r) for c, r in rules.items()},
              "rejected": {} if rules else tuned,
              "oof_before": before, "oof_after": after, "holdout": holdout,
              "holdout_gain_mean": float(np.mean(gains)) if gains else None}
    write_json(folder.postprocess, result)
    log.info("tune: %s on %d OOF images %.4f -> %.4f (tuned on them); on folds held out of the tuning %+.4f on average; "
             "%d class rule(s) -> %s", result["metric"], len(preds), before, after, result["holdout_gain_mean"] or 0.0,
             len(rules), folder.postprocess)
    return result
