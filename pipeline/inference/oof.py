"""Out-of-fold predictions: each fold's models predict that fold's validation images, so every
labelled image is scored by models that never trained on it. Their dataset-level mIoU is the CV."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.competition.metrics import competition_metric
from pipeline.config import Config
from pipeline.data.pool import fold_indices, labelled_pool
from pipeline.engine.runtime import Runtime
from pipeline.errors import DataError
from pipeline.inference.analysis import WorstImages, write_report
from pipeline.inference.ensemble import Ensemble, Member, save_prediction
from pipeline.io import write_json


def predict_oof(cfg: Config, by_fold: dict[int, list[Member]], rt: Runtime, tta, out: Path) -> dict:
    pool, table = labelled_pool(cfg)
    C, ign = cfg.data.num_classes, cfg.data.ignore_index
    pooled, per_fold, fold_iou, n = competition_metric(cfg), {}, {}, 0
    multilabel = cfg.competition.multilabel  # its OOF probabilities are always kept: make tune picks thresholds
    worst = WorstImages(cfg.infer.analysis_images)
    for fold, members in sorted(by_fold.items()):
        _, idx = fold_indices(table, fold, str(cfg.folds_csv))
        meter = competition_metric(cfg)
        ensemble = Ensemble(members, rt, tta, cfg.infer.window, cfg.infer.overlap, multilabel)
        preds = ensemble.predict(pool, idx, cfg.infer.batch_size, cfg.infer.num_workers, with_mask=True)
        for i, p, truth in preds:
            label = save_prediction(out, pool.records[i].stem, p, multilabel or cfg.infer.save_probs, multilabel)
            pooled.update(label, truth)
            meter.update(label, truth)
            if not multilabel:  # the error-analysis page draws one class per pixel
                image = competition_metric(cfg)
                image.update(label, truth)
                worst.add(image.compute()["score"], i, pool.records[i].stem, label, truth.numpy().astype(np.uint8))
            n += 1
        m = meter.compute()
        per_fold[int(fold)], fold_iou[int(fold)] = m["score"], m["per_class"]
    if n == 0:
        raise DataError("OOF: no validation images in the trained folds")
    m = pooled.compute()
    scores = np.array(list(per_fold.values()))
    scored = [cfg.data.classes[c] for c in pooled.classes]

    def by_class(values):
        return {c: (None if np.isnan(v) else float(v)) for c, v in zip(scored, values)}

    result = {"metric": pooled.name, "cv_score": m["score"], "cv_miou": m["miou"], "oof_images": n,
              "cv_pixel_acc": m["pixel_acc"], "cv_folds": per_fold, "cv_fold_mean": float(scores.mean()),
              "cv_fold_std": float(scores.std()), "cv_per_class": by_class(m["per_class"]), "cv_iou": by_class(m["iou"])}
    write_json(out / "score.json", result)
    if not multilabel:
        write_report(out.parent / "analysis", worst.worst_first(), pool.image, list(cfg.data.classes), scored, ign,
                     m["per_class"], fold_iou, pooled.confusion.numpy(), pooled.name)
    return result
