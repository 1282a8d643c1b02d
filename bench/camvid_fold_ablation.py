"""Recipes side by side on one CamVid fold: each experiment's model of that fold predicts the fold's
validation frames (its TTA, its input size), scored per class, untuned and with make tune's class
bias at a fixed alpha (the prior counted on the fold's training frames, so nothing is fitted to
the frames scored). One fold is a third of the CV: a screen for a recipe change, run on one CPU,
before the whole recipe is trained.

    python -m pipeline train data=camvid exp=camvid_lite0 fold=2        # and the same for each variant
    python bench/camvid_fold_ablation.py --fold 2 --exps camvid_lite0 camvid_lite0_up15

A variant written `exp_a+exp_b+...` is the ensemble of those experiments' fold models, their
probabilities averaged as `infer.experiments` averages them (e.g. more short runs against fewer
long ones at the same training time).

Results: bench/results/camvid_fold<k>_ablation.json (or --out).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pandas as pd
from common import FOLDS_ONLY, REPO, machine

ALPHAS = (0.0, 0.5, 0.7)
THIN = ("Pole", "SignSymbol", "Pedestrian", "Bicyclist")


def score_variant(spec: str, fold: int, alphas=ALPHAS) -> dict:
    from pipeline.competition.metrics import competition_metric
    from pipeline.competition.postprocess import decide, prior_rules
    from pipeline.config import DistInfo, load_config
    from pipeline.data.pool import fold_indices, labelled_pool
    from pipeline.data.stats import log_prior
    from pipeline.engine.runtime import Runtime
    from pipeline.inference.ensemble import find_members
    from pipeline.inference.oof import predict_oof
    from pipeline.inference.outdir import Preds
    from pipeline.inference.tta import build_tta

    exps = spec.split("+")
    overrides = [f"infer.folds=[{fold}]", *FOLDS_ONLY, "infer.save_probs=true",
                 "runtime.progress=false", f"infer.experiments=[{','.join(exps)}]"]  # this fold's models, probabilities kept
    cfg = load_config("camvid", "unet", exps[0], overrides, fold, REPO / "configs")
    by_fold, _ = find_members(cfg)  # infer.folds: it names each experiment that lacks the fold's model
    pool, table = labelled_pool(cfg)
    train_idx, val_idx = fold_indices(table, fold, str(cfg.folds_csv))
    prior = log_prior([pool.mask(i) for i in train_idx], cfg.data.num_classes, cfg.data.ignore_index)
    with tempfile.TemporaryDirectory() as tmp:
        preds = Preds(Path(tmp))
        t = time.perf_counter()
        predict_oof(cfg, by_fold, Runtime.create(cfg.runtime, DistInfo()), build_tta(cfg.infer.tta), preds)
        seconds = time.perf_counter() - t
        images = [(pool.mask(i), preds.oof.read_probs(pool.records[i].stem)) for i in val_idx]
        by_alpha = {}
        for alpha in alphas:
            meter = competition_metric(cfg)
            for mask, probs in images:
                meter.update(decide(probs, prior_rules(alpha, prior), False), mask)
            m = meter.compute()
            classes = [cfg.data.classes[c] for c in meter.classes]
            per_class = {c: round(float(v), 4) for c, v in zip(classes, m["per_class"])}
            by_alpha[str(alpha)] = {"miou": round(m["score"], 4), "thin": {c: per_class.get(c) for c in THIN},
                                    "per_class": per_class}
    runs = [pd.read_csv(cfg.run_dir(exp=e) / "metrics.csv") for e in exps]
    run = {"epochs": sum(len(r) for r in runs), "train_s": round(sum(float(r["seconds"].sum()) for r in runs), 1),
           "train_img_per_s": round(float(pd.concat(runs)["train_img_per_s"].mean()), 2)}
    return {"exp": spec, **({"members": exps} if len(exps) > 1 else {}), "resize": cfg.train.resize,
            "tta": list(cfg.infer.tta), "val_images": len(val_idx), "inference_s": round(seconds, 1), "run": run,
            "by_alpha": by_alpha}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--fold", type=int, required=True)
    p.add_argument("--exps", nargs="+", required=True)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    rows = [score_variant(e, a.fold) for e in a.exps]
    result = {"bench": "camvid_fold_ablation", "fold": a.fold, "alphas": list(ALPHAS),
              "command": f"python bench/camvid_fold_ablation.py --fold {a.fold} --exps {' '.join(a.exps)}"
                         + (f" --out {a.out}" if a.out else ""),
              "machine": machine(), "when": time.strftime("%Y-%m-%d %H:%M"), "variants": rows}
    out = Path(a.out) if a.out else REPO / "bench" / "results" / f"camvid_fold{a.fold}_ablation.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    for r in rows:
        print(r["exp"], {k: (v["miou"], v["thin"]) for k, v in r["by_alpha"].items()})


if __name__ == "__main__":
    main()
