"""Out-of-fold predictions: each fold's models predict that fold's validation images, so every
labelled image is scored by models that never trained on it. Their dataset-level mIoU is the CV."""
from __future__ import annotations

from statistics import NormalDist

import numpy as np

from pipeline.competition.metrics import competition_metric
from pipeline.config import Config
from pipeline.data.groups import group_keys
from pipeline.data.pool import fold_indices, labelled_pool
from pipeline.engine.runtime import Runtime
from pipeline.errors import DataError
from pipeline.inference.analysis import WorstImages, write_report
from pipeline.inference.cv_estimate import blocks_of, kinds_of_test, matched_estimate
from pipeline.inference.ensemble import Ensemble, Member, save_prediction
from pipeline.inference.outdir import Preds
from pipeline.io import write_json


def predict_oof(cfg: Config, by_fold: dict[int, list[Member]], rt: Runtime, tta, preds: Preds,
                test_stems: list[str] = ()) -> dict:
    """OOF predictions (into preds.oof) and the CV: pooled, per fold, and (when folds.csv says how
    each validation image relates to its fold's training images) the test-matched estimate for
    `test_stems`; the error report into preds.analysis."""
    pool, table = labelled_pool(cfg)
    ign = cfg.data.ignore_index
    scores = OofScores(cfg)
    multilabel = cfg.competition.multilabel  # its OOF probabilities are always kept: make tune picks thresholds
    worst = WorstImages(cfg.infer.analysis_images)
    for fold, members in sorted(by_fold.items()):
        _, idx = fold_indices(table, fold, str(cfg.folds_csv))
        ensemble = Ensemble.from_config(cfg, members, rt, tta)
        predicted = ensemble.predict(pool, idx, cfg.infer.batch_size, cfg.infer.num_workers, with_mask=True)
        for i, p, truth in predicted:
            label = save_prediction(preds.oof, pool.records[i].stem, p, multilabel or cfg.infer.save_probs, multilabel,
                                    cfg.infer.probs_dtype)
            image = scores.add(int(fold), pool.records[i].stem, label, truth)
            if not multilabel:  # the error-analysis page draws one class per pixel
                worst.add(image.compute()["score"], i, pool.records[i].stem, label, truth.numpy().astype(np.uint8))
    result = scores.result(table, test_stems)
    write_json(preds.oof.score, result)
    if not multilabel:
        write_report(preds.analysis, worst.worst_first(), pool.image, list(cfg.data.classes), scores.scored, ign,
                     scores.pooled.compute()["per_class"], scores.fold_iou, scores.pooled.confusion.numpy(), scores.pooled.name)
    return result


class OofScores:
    """The CV's meters over out-of-fold label maps: pooled, per fold, and each image's state (the
    test-matched estimate reweights images)."""

    def __init__(self, cfg: Config):
        self.cfg, self.pooled, self.folds = cfg, competition_metric(cfg), {}
        self.stems, self.image_states = [], []

    def add(self, fold: int, stem: str, label, truth):
        """Counts one OOF image; returns its own meter."""
        self.pooled.update(label, truth)
        self.folds.setdefault(fold, competition_metric(self.cfg)).update(label, truth)
        image = competition_metric(self.cfg)
        image.update(label, truth)
        self.image_states.append(image.state())
        self.stems.append(stem)
        return image

    @property
    def scored(self) -> list[str]:
        return [self.cfg.data.classes[c] for c in self.pooled.classes]

    @property
    def fold_iou(self) -> dict[int, np.ndarray]:
        return {k: m.compute()["per_class"] for k, m in sorted(self.folds.items())}

    def result(self, table, test_stems) -> dict:
        """The CV: pooled, per fold, per class, the test-matched estimate for `test_stems` (when
        folds.csv says how each OOF image relates to its fold's training images) and infer.cv_offset."""
        if not self.stems:
            raise DataError("OOF: no validation images in the trained folds")
        m = self.pooled.compute()
        per_fold = {k: f.compute()["score"] for k, f in sorted(self.folds.items())}
        scores = np.array(list(per_fold.values()))

        def by_class(values):
            return {c: (None if np.isnan(v) else float(v)) for c, v in zip(self.scored, values)}

        result = {"metric": self.pooled.name, "cv_score": m["score"], "cv_miou": m["miou"], "oof_images": len(self.stems),
                  "cv_pixel_acc": m["pixel_acc"], "cv_folds": per_fold, "cv_fold_mean": float(scores.mean()),
                  "cv_fold_std": float(scores.std()), "cv_per_class": by_class(m["per_class"]), "cv_iou": by_class(m["iou"])}
        result.update(_test_matched(self.cfg, table, self.stems, self.image_states, test_stems, self.scored, m["score"]))
        return with_offset(result, self.cfg.infer.cv_offset, self.cfg.infer.cv_offset_sd)


def with_offset(result: dict, offset: float, offset_sd: float = 0.0) -> dict:
    """cv_score (and its interval) moved by infer.cv_offset; the figure before it is kept. Applied to
    a result that already carries an offset, it replaces that offset (a recipe's simulated gap can
    change after its inference ran). A result without a CV (no OOF images) is returned as it is.
    With infer.cv_offset_sd (the spread of the simulated gap from draw to draw), cv_leaderboard_interval
    is the 90% range for the leaderboard score: the bootstrap's spread and the gap's, added in quadrature."""
    if result.get("cv_score") is None:
        return result
    kind = result.get("cv_score_kind", "").removesuffix("+offset")
    raw = result.get("cv_before_offset", result["cv_score"])
    moved = result.get("cv_offset") or 0.0
    dropped = ("cv_before_offset", "cv_offset_sd", "cv_leaderboard_interval")
    out = {k: v for k, v in result.items() if k not in dropped}
    out.update({"cv_offset": offset or 0.0, "cv_score": raw + offset, "cv_score_kind": kind + ("+offset" if offset else "")})
    if result.get("cv_interval"):
        out["cv_interval"] = [v - moved + offset for v in result["cv_interval"]]
    if offset:
        out["cv_before_offset"] = raw
    if offset_sd and out.get("cv_interval"):
        out["cv_offset_sd"] = offset_sd
        out["cv_leaderboard_interval"] = leaderboard_interval(out["cv_score"], out["cv_interval"], offset_sd)
    return out


Z90 = NormalDist().inv_cdf(0.95)  # a two-sided 90% interval of a normal: +-1.645 sd


def leaderboard_interval(score: float, interval: list[float], offset_sd: float) -> list[float]:
    """score +- Z90 * sqrt(bootstrap sd^2 + offset_sd^2), the bootstrap sd read off its 90% interval."""
    boot_sd = (interval[1] - interval[0]) / (2 * Z90)
    half = Z90 * float(np.hypot(boot_sd, offset_sd))
    return [score - half, score + half]


def leaderboard_note(result: dict) -> str:
    """The log's words for cv_leaderboard_interval, or nothing where no offset sd is configured."""
    if not result.get("cv_leaderboard_interval"):
        return ""
    low, high = result["cv_leaderboard_interval"]
    return f"; leaderboard 90% {low:.4f}..{high:.4f} (the simulated gap's sd {result['cv_offset_sd']:.3f} included)"


def _test_matched(cfg: Config, table, stems, image_states, test_stems, scored, pooled_score) -> dict:
    """cv_score: the test-matched estimate when folds.csv has kinds, else the pooled OOF score."""
    fallback = {"cv_pooled": pooled_score, "cv_score_kind": "pooled_oof", "cv_interval": None}
    if "kind" not in table or not cfg.folds.group_regex or not test_stems:
        return fallback
    by_stem = {r.image_id: r for r in table.itertuples(index=False)}
    kinds = [by_stem[s].kind for s in stems]
    groups = [by_stem[s].group for s in stems]
    try:
        test_groups = group_keys(list(test_stems), cfg.folds.group_regex)
    except DataError as e:  # the test images' names do not follow the training images' pattern
        return {**fallback, "cv_test_matched": {"score": None, "why": f"test images: {e}"}}
    tkinds = kinds_of_test(test_groups, table["group"].unique())
    est = matched_estimate(image_states, kinds, blocks_of(stems, groups), tkinds, lambda: competition_metric(cfg), scored)
    if est["score"] is None:
        return {**fallback, "cv_test_matched": est}
    return {"cv_score": est["score"], "cv_pooled": pooled_score, "cv_score_kind": "test_matched",
            "cv_interval": [est["low"], est["high"]], "cv_test_matched": est}
