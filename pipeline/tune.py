"""`make tune`: post-processing (per class: a log-probability bias for single-label probabilities,
alpha * log(f_c / median f) with one alpha; a threshold for multilabel ones; minimum component
area; empty-mask gate) searched on the out-of-fold predictions to maximise the competition metric;
the gain is also measured on each fold with rules tuned on the other folds only, the honest
estimate of what carries to the test set, and the CV is scored again that way (`cv`: the figure
a post-processed submission carries). Writes preds/<exp>/postprocess.json, which `make
submission` applies."""
from __future__ import annotations

import dataclasses

import numpy as np

from pipeline.competition.metrics import competition_metric
from pipeline.competition.postprocess import apply, decide, evaluate, needs_probs, tune
from pipeline.data.stats import log_prior
from pipeline.competition.submission import class_ids
from pipeline.config import Config, StageArgs
from pipeline.data.pool import labelled_pool
from pipeline.engine.runtime import get_logger
from pipeline.errors import ConfigError, DataError
from pipeline.inference.oof import OofScores, leaderboard_note
from pipeline.inference.outdir import Preds
from pipeline.io import write_json

log = get_logger(__name__)


TUNE_PIXELS = 1 << 20  # larger label maps are searched on every k-th row and column
PROB_PIXELS = 1 << 14  # single-label probabilities (C floats a pixel): the bias search's lattice


def lattice_step(rec, pixels: int = TUNE_PIXELS) -> int:
    """The rules are shares of the image's area, which subsampling keeps, so a 48-megapixel slide
    is tuned on a 1-megapixel lattice of its pixels (the grid search re-scores every image per trial)."""
    return max(1, int((rec.height * rec.width / pixels) ** 0.5))


def run(cfg: Config, args: StageArgs = StageArgs()) -> dict:
    bg, multilabel = cfg.competition.background, cfg.competition.multilabel
    folder = Preds.of(cfg)
    oof = folder.oof
    if not oof.labels.is_dir():
        raise DataError(f"{oof.labels}: no OOF predictions; run `make infer-tta` (with infer.oof=true) first")
    pool, table = labelled_pool(cfg)
    rows = [row for _, row in table.iterrows() if oof.label(row["image_id"]).exists()]
    if not rows:
        raise DataError(f"{oof.labels}: no OOF label map matches folds.csv")
    # the probabilities: multilabel always (thresholds), single-label when infer.save_probs kept them (biases)
    from_probs = multilabel or all(oof.probs(row["image_id"]).exists() for row in rows)
    if bg is None and not from_probs:
        raise ConfigError("make tune: nothing to tune: set competition.background (the class removed pixels become) "
                          "for area rules, or infer.save_probs: true and `make infer-tta` again for class biases")
    preds, truths, folds = [], [], []
    for row in rows:
        rec = pool.records[int(row["index"])]
        step = lattice_step(rec, PROB_PIXELS if from_probs and not multilabel else TUNE_PIXELS)
        stem = row["image_id"]
        pred = oof.read_probs(stem)[:, ::step, ::step] if from_probs else oof.read_label(stem)[::step, ::step]
        preds.append(np.ascontiguousarray(pred))  # a strided view would keep the whole array alive
        truths.append(pool.mask(int(row["index"]))[::step, ::step])
        folds.append(int(row["fold"]))
    classes, folds = class_ids(cfg), np.array(folds)

    def metric():
        return competition_metric(cfg)

    biased = from_probs and not multilabel

    def prior(images):  # the class frequencies of the images the rules are tuned on, nothing else
        return log_prior(images, cfg.data.num_classes, cfg.data.ignore_index) if biased else None

    every = prior(truths)
    shrink = cfg.competition.bias_shrink
    rules, before, after = tune(preds, truths, classes, metric, bg, multilabel, from_probs, every, folds, shrink)
    holdout, fold_rules, alphas = {}, {}, {"all": _alpha(rules, every)}
    for k in sorted(set(folds.tolist())):
        inside, outside = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
        if not inside.size:
            continue
        without = prior([truths[i] for i in inside])
        fold_rules[k], _, _ = tune([preds[i] for i in inside], [truths[i] for i in inside], classes, metric, bg,
                                   multilabel, from_probs, without, folds[inside], shrink)
        alphas[k] = _alpha(fold_rules[k], without)
        held = ([preds[i] for i in outside], [truths[i] for i in outside])
        holdout[k] = {"before": evaluate(*held, {}, metric, bg, multilabel, from_probs),
                      "after": evaluate(*held, fold_rules[k], metric, bg, multilabel, from_probs)}
    del preds, truths
    gains = [h["after"] - h["before"] for h in holdout.values()]
    tuned = {cfg.data.classes[c]: dataclasses.asdict(r) for c, r in rules.items()}
    if gains and float(np.mean(gains)) <= 0 and rules:  # the gain does not carry to unseen images
        log.warning("tune: rules tuned without a fold lose %.4f on it on average: not applied (kept as 'rejected')",
                    -float(np.mean(gains)))
        rules = {}
    result = {"metric": cfg.competition.metric, "background": bg, "images": len(rows),
              "rules": {cfg.data.classes[c]: dataclasses.asdict(r) for c, r in rules.items()},
              "rejected": {} if rules else tuned,
              "oof_before": before, "oof_after": after, "holdout": holdout,
              "holdout_gain_mean": float(np.mean(gains)) if gains else None}
    if biased:  # each class's bias is alpha * log(f_c / median f): alpha tuned on all images, and without each fold
        result["bias_alpha"] = alphas  # as applied: times competition.bias_shrink
        result["bias_shrink"] = shrink
    if rules and len(fold_rules) == len(holdout) and holdout:
        result["cv"] = cross_fitted_cv(cfg, folder, pool, table, rows, fold_rules, from_probs)
    write_json(folder.postprocess, result)
    cv = result.get("cv")
    log.info("tune: %s on %d OOF images %.4f -> %.4f (tuned on them); on folds held out of the tuning %+.4f on average; "
             "%d class rule(s) -> %s%s", result["metric"], len(rows), before, after, result["holdout_gain_mean"] or 0.0,
             len(rules), folder.postprocess,
             f"; CV with each fold's rules tuned on the other folds {cv['cv_score']:.4f} ({cv['cv_score_kind']}), "
             f"the submission's cv_score{leaderboard_note(cv)}" if cv else "")
    return result


def _alpha(rules: dict, prior) -> float | None:
    """The alpha of the biases tune chose (bias = alpha * prior), read back from the rules."""
    if prior is None:
        return None
    return next((round(float(r.bias / prior[c]), 6) for c, r in rules.items() if r.bias and prior[c]), 0.0)


def cross_fitted_cv(cfg: Config, folder: Preds, pool, table, rows, fold_rules: dict, from_probs: bool) -> dict:
    """The CV of the post-processed submission, honestly: each OOF image at full size under the rules
    tuned without its fold, scored as `make infer-tta` scores the raw OOF maps (pooled, per fold,
    test-matched, infer.cv_offset)."""
    bg, multilabel = cfg.competition.background, cfg.competition.multilabel
    scores = OofScores(cfg)
    for row in rows:
        stem, rules = row["image_id"], fold_rules[int(row["fold"])]
        rec = pool.records[int(row["index"])]
        if from_probs and needs_probs(rules, multilabel):
            label = decide(folder.oof.read_probs(stem), rules, multilabel)
        else:
            label = folder.oof.read_label(stem, (rec.height, rec.width))
        scores.add(int(row["fold"]), stem, apply(label, rules, bg, multilabel), pool.mask(int(row["index"])))
    test_stems = folder.read_manifest().get("files", []) if folder.manifest.exists() else []
    return scores.result(table, test_stems)
