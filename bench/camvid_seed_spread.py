"""How far a one-fold CamVid screen moves by chance: the same recipe trained with several seeds
(each scored by bench/camvid_fold_ablation.py), their spread at each alpha, and each screened
variant's difference from the seeds' mean, flagged when it falls outside the 90% prediction interval
of one more seed of the recipe (Student's t on the seeds: with three seeds +-3.4 sd; a bare min-max
range of three would leave out a fourth draw of the same recipe half the time).

    python bench/camvid_seed_spread.py --fold 2 --seeds camvid_lite0 camvid_lite0_seed1 camvid_lite0_seed2 \
        --variants camvid_lite0_lovasz camvid_lite0_b4 camvid_lite0_thincrops camvid_lite0_ema

Reads bench/results/camvid_fold<k>_ablation*.json (no training, no inference); writes
bench/results/camvid_fold<k>_seed_spread.json (or --out).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from common import REPO

METRICS = ("miou", "Pole", "SignSymbol", "Pedestrian", "Bicyclist")


def scored_variants(fold: int, cpu: str | None = None) -> dict[str, tuple[dict, dict]]:
    """exp -> (its by_alpha scores, the machine that scored it), from every stored ablation of the
    fold (the newest where one repeats); `cpu`: only those scored on that CPU family/model ("6/207")."""
    found = {}
    for path in sorted((REPO / "bench" / "results").glob(f"camvid_fold{fold}_ablation*.json")):
        result = json.loads(path.read_text())
        if cpu and result.get("machine", {}).get("cpu_family_model") != cpu:
            continue
        when = result.get("when", "")
        for v in result["variants"]:
            if v["exp"] not in found or when >= found[v["exp"]][0]:
                scores = {a: {"miou": s["miou"], **s["thin"]} for a, s in v["by_alpha"].items()}
                found[v["exp"]] = (when, scores, result.get("machine", {}))
    return {exp: (scores, machine) for exp, (_, scores, machine) in found.items()}


def spread(values: list[float], level: float = 0.90) -> dict:
    """Mean, sd, min, max and the `level` prediction interval of one more draw (needs two values)."""
    from scipy.stats import t

    n, mean, sd = len(values), statistics.fmean(values), statistics.stdev(values)
    half = float(t.ppf((1 + level) / 2, n - 1)) * sd * (1 + 1 / n) ** 0.5
    return {"mean": round(mean, 4), "sd": round(sd, 4), "min": min(values), "max": max(values),
            "low": round(mean - half, 4), "high": round(mean + half, 4)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--fold", type=int, required=True)
    p.add_argument("--seeds", nargs="+", required=True, help="the same recipe under different seeds")
    p.add_argument("--variants", nargs="*", default=[], help="screened recipes to set against the seeds")
    p.add_argument("--cpu", default=None, help='only ablations scored on this CPU family/model, e.g. "6/207" '
                   "(the same experiment names were screened on several machines)")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    if len(a.seeds) < 2:
        raise SystemExit("--seeds needs two runs of the recipe at least: one run has no spread")
    found = scored_variants(a.fold, a.cpu)
    missing = [e for e in [*a.seeds, *a.variants] if e not in found]
    if missing:
        raise SystemExit(f"no fold-{a.fold} ablation result for {', '.join(missing)}: run bench/camvid_fold_ablation.py first")
    scores = {exp: sc for exp, (sc, _) in found.items()}
    alphas = sorted(scores[a.seeds[0]])
    seeds = {al: {m: spread([scores[e][al][m] for e in a.seeds]) for m in METRICS} for al in alphas}
    rows = [{"exp": "seeds: mean (sd), min-max, 90% for one more seed", "alpha": al,
             **{m: f"{s['mean']:.3f} ({s['sd']:.3f}), {s['min']:.3f}-{s['max']:.3f}, {s['low']:.3f}..{s['high']:.3f}"
                for m, s in seeds[al].items()}}
            for al in alphas]
    for exp in [*a.seeds, *a.variants]:
        for al in alphas:
            row = {"exp": exp, "alpha": al}
            for m in METRICS:
                s, x = seeds[al][m], scores[exp][al][m]
                outside = exp in a.variants and not s["low"] <= x <= s["high"]
                row[m] = f"{x:.3f} ({x - s['mean']:+.3f}){' *' if outside else ''}"
            rows.append(row)
    result = {"bench": "camvid_seed_spread", "fold": a.fold, "seeds": a.seeds,
              "command": f"python bench/camvid_seed_spread.py --fold {a.fold} --seeds {' '.join(a.seeds)}"
                         + (f" --variants {' '.join(a.variants)}" if a.variants else "") + (f" --cpu {a.cpu}" if a.cpu else "")
                         + (f" --out {a.out}" if a.out else ""),
              "legend": "score (difference from the seeds' mean); * outside the 90% interval of one more seed",
              "machine": found[a.seeds[0]][1], "when": time.strftime("%Y-%m-%d %H:%M"), "results": rows}
    out = Path(a.out) if a.out else REPO / "bench" / "results" / f"camvid_fold{a.fold}_seed_spread.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    for al in alphas:
        print(f"alpha {al}:", {m: (s["mean"], s["low"], s["high"]) for m, s in seeds[al].items()})


if __name__ == "__main__":
    main()
