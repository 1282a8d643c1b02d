"""The pseudo-test score of a CamVid simulation draw's submitted ensemble at several class-bias
alphas (make tune's bias: alpha * log(f_c / median f), f_c counted on the draw's OOF images), from
the test probabilities its last run kept (`--reuse` or a whole run with tune). Which alpha the ensemble wants, against the
one tune chose on the fold models' OOF maps.

    python bench/camvid_alpha_curve.py --name camvid_simulation_0001TP_e5 [--variant refit_with]

`--variant` reads the draw's run of that name (`<name>_<variant>.json`, e.g. refit_with: the
ensemble with the full-data refit). Results: bench/results/<name>[_<variant>]_alpha_curve.json.
Not beside a running simulation: it writes the shared outputs/camvid_sim/folds.csv.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from camvid_simulation import draw_config
from common import REPO, invocation, machine

ALPHAS = (0.0, 0.3, 0.5, 0.7, 1.0, 1.5)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--name", required=True, help="a draw run with camvid_simulation.py (since it tunes)")
    p.add_argument("--variant", default=None, help="a later run of the draw: reused, refit_with, refit_with_pseudo, ...")
    a = p.parse_args()
    sys.path.insert(0, str(REPO))
    from pipeline.competition.metrics import competition_metric
    from pipeline.competition.postprocess import decide, prior_rules
    from pipeline.data.pool import labelled_pool
    from pipeline.data.sources import open_split
    from pipeline.data.stats import log_prior
    from pipeline.inference.outdir import Preds
    from pipeline.tune import PROB_PIXELS, lattice_step

    results = REPO / "bench" / "results"
    if a.variant:
        tag = f"{a.name}_{a.variant}"
    else:  # the draw's latest run with tune
        tag = f"{a.name}_reused" if (results / f"{a.name}_reused.json").exists() else a.name
    draw = json.loads((results / f"{tag}.json").read_text())
    # the draw's own folds (folds.csv is shared by the draws)
    subprocess.run([sys.executable, "-m", "pipeline", "folds", "data=camvid_sim", f"exp={draw['exp']}", *draw["args"]],
                   cwd=REPO, check=True, capture_output=True)
    cfg = draw_config(draw["exp"], draw["args"])
    preds, (pool, table) = Preds.of(cfg), labelled_pool(cfg)
    kept = json.loads((preds.root / "manifest.json").read_text())
    if kept.get("refit") != cfg.infer.refit:  # the run's predictions were overwritten by a later run of the draw
        sys.exit(f"{preds.root}: holds infer.refit={kept.get('refit')} predictions, not those of {tag} "
                 f"(infer.refit={cfg.infer.refit}): run the draw's {tag} again first")
    oof = []
    for _, r in table.iterrows():  # the OOF masks on make tune's lattice, as it counts the class frequencies
        if preds.oof.label(r["image_id"]).exists():
            step = lattice_step(pool.records[int(r["index"])], PROB_PIXELS)
            oof.append(pool.mask(int(r["index"]))[::step, ::step])
    prior = log_prior(oof, cfg.data.num_classes, cfg.data.ignore_index)
    truth = open_split(cfg.data, "truth")
    images = [(truth.mask(k), preds.read_probs(r.stem)) for k, r in enumerate(truth.records)]
    scores = {}
    for alpha in ALPHAS:
        meter = competition_metric(cfg)
        for mask, probs in images:
            meter.update(decide(probs, prior_rules(alpha, prior), False), mask)
        scores[str(alpha)] = round(meter.compute()["score"], 4)
    tuned = json.loads(preds.postprocess.read_text())
    result = {"command": invocation(), "draw": tag, "pseudo_test_score_by_alpha": scores, "tune_alpha": tuned.get("bias_alpha"),
              "tune_bias_shrink": tuned.get("bias_shrink", 1.0),  # tune_alpha is as applied: times this
              "tune_applied": bool(tuned["rules"]), "machine": machine(),
              "when": time.strftime("%Y-%m-%d %H:%M")}
    (results / f"{a.name}{'_' + a.variant if a.variant else ''}_alpha_curve.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
