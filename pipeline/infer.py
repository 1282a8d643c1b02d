"""Inference: the fold/experiment ensemble predicts the test set with batched TTA (label PNGs at
each image's size, optional float16 probabilities), then, per fold, its own validation images:
the out-of-fold (OOF) predictions and the CV mIoU."""
from __future__ import annotations

from tqdm import tqdm

from pipeline.config import Config, StageArgs
from pipeline.data.sources import open_split
from pipeline.engine.runtime import DistInfo, Runtime, get_logger
from pipeline.inference.ensemble import Ensemble, find_members, save_prediction
from pipeline.inference.oof import leaderboard_note, predict_oof
from pipeline.inference.outdir import PredictionFolder, Preds
from pipeline.inference.reuse import reusable_part
from pipeline.inference.space import infer_expected, oof_sizes, record_sizes
from pipeline.inference.tta import build_tta

log = get_logger(__name__)


def run(cfg: Config, args: StageArgs = StageArgs()) -> dict:
    rt = Runtime.create(cfg.runtime, DistInfo())
    tta = build_tta(cfg.infer.tta)
    by_fold, members = find_members(cfg)
    test = open_split(cfg.data, "test", labelled=False)
    oof = oof_sizes(cfg, sorted(by_fold)) if cfg.infer.oof and by_fold else []
    folder = PredictionFolder(cfg.preds_dir(), expected=infer_expected(cfg, record_sizes(test.records), oof))
    with folder as partial:
        out = Preds(partial)
        multilabel = cfg.competition.multilabel  # probabilities always kept: make tune picks thresholds
        reused, to_run = reusable_part(cfg, members, rt, [r.stem for r in test.records])
        ensemble = Ensemble.from_config(cfg, to_run, rt, tta)
        preds = ensemble.predict(test, list(range(len(test))), cfg.infer.batch_size, cfg.infer.num_workers)
        for i, p in tqdm(preds, total=len(test), desc="infer", disable=None if cfg.runtime.progress else True, leave=False):
            if reused is not None:
                p = reused.combine(test.records[i].stem, p, ensemble.total_weight)
            save_prediction(out, test.records[i].stem, p, cfg.infer.save_probs or multilabel, multilabel,
                            cfg.infer.probs_dtype)
        manifest = {"experiments": list(cfg.infer.experiments or (cfg.exp,)), "folds": sorted(by_fold),
                    "models": [str(m.path.parent.relative_to(cfg.out_dir / "runs")) for m in members],
                    "checkpoint": cfg.infer.checkpoint, "refit": cfg.infer.refit, "tta": list(cfg.infer.tta),
                    "tta_views": len(tta), "weights": list(cfg.infer.weights), "test_images": len(test),
                    "probs_dtype": cfg.infer.probs_dtype if cfg.infer.save_probs or multilabel else None,
                    "metric": cfg.competition.metric, "cv_score": None, "cv_miou": None,
                    "reused_probs": None if reused is None else str(reused.root)}
        if cfg.infer.oof and by_fold:  # OOF figures always come from the fold models
            manifest.update(predict_oof(cfg, by_fold, rt, tta, out, [r.stem for r in test.records]))
        final = folder.commit(manifest)
    cv = ""
    if manifest["cv_score"] is not None:
        cv = (f", CV {manifest['metric']} {manifest['cv_pooled']:.4f} (OOF pooled; per fold "
              f"{manifest['cv_fold_mean']:.4f} ± {manifest['cv_fold_std']:.4f})")
        offset = manifest.get("cv_offset") or 0.0
        shifted = f" (with infer.cv_offset {offset:+.4f})" if offset else ""
        if manifest["cv_score_kind"].startswith("test_matched"):
            low, high = manifest["cv_interval"]
            cv += (f"; test-matched CV{shifted} {manifest['cv_score']:.4f} (90% interval {low:.4f}..{high:.4f}): "
                   f"the figure that estimates the leaderboard{leaderboard_note(manifest)}")
        elif offset:
            cv += f"; CV{shifted} {manifest['cv_score']:.4f}: the figure that estimates the leaderboard"
    log.info("infer: %d test images x %d model(s) x %d TTA view(s) -> %s%s", len(test), len(members), len(tta), final, cv)
    return manifest
