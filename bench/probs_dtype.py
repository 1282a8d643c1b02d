"""float16 against uint8 kept probabilities (infer.probs_dtype), on one finished prediction folder:
the folder is copied twice under a temporary outputs root, one copy's probabilities rounded to uint8
as `make infer-tta` would keep them, then `make tune` runs on each (class biases tuned on the OOF
probabilities, the cross-fitted CV) and the tuned test label maps of the two are compared.

    python bench/probs_dtype.py --data camvid --exp camvid_lite0_e24ft_seed2 \
        --outputs ../fresh27/outputs [--out FILE]
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from common import REPO, invocation, save

from pipeline import tune
from pipeline.competition.postprocess import decide
from pipeline.config import load_config
from pipeline.inference.outdir import Preds, encode_probs
from pipeline.io import write_with


def folder_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def copy_outputs(src: Path, dst: Path, exp: str) -> None:
    """folds.csv and its metadata, and the experiment's prediction folder."""
    dst.mkdir(parents=True)
    for name in ("folds.csv", "folds_meta.json", "folds_balance.csv"):
        if (src / name).exists():
            shutil.copy(src / name, dst / name)
    shutil.copytree(src / "preds" / exp, dst / "preds" / exp, ignore=shutil.ignore_patterns("postprocess.json"))


def to_uint8(preds: Preds) -> None:
    for root in (preds.root, preds.oof.root):
        for path in sorted((root / "probs").glob("*.npz")):
            with np.load(path) as z:
                kept = encode_probs(z["probs"].astype(np.float32), "uint8")
            write_with(path, lambda f: np.savez(f, probs=kept))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--exp", required=True)
    ap.add_argument("--outputs", required=True, help="the outputs root that holds <data>/preds/<exp>")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="probs-dtype-"))
    runs, labels = {}, {}
    try:
        for dtype in ("float16", "uint8"):
            root = tmp / dtype
            cfg = load_config(a.data, exp=a.exp, overrides=[f"outputs={root}", "runtime.progress=false"],
                              config_dir=REPO / "configs")
            copy_outputs(Path(a.outputs) / cfg.data.name, cfg.out_dir, a.exp)
            preds = Preds.of(cfg)
            if dtype == "uint8":
                to_uint8(preds)
            t = time.perf_counter()
            result = tune.run(cfg)
            seconds = time.perf_counter() - t
            _, rules = preds.read_rules(cfg.data.classes)
            stems = preds.read_manifest()["files"]
            labels[dtype] = {s: decide(preds.read_probs(s), rules, False) for s in stems}
            cv = result.get("cv") or {}
            probs = folder_bytes(preds.root / "probs") + folder_bytes(preds.oof.root / "probs")
            runs[dtype] = {"probs_gib": round(probs / 2**30, 3),
                           "tune_s": round(seconds, 1), "oof_before": round(result["oof_before"], 5),
                           "oof_after": round(result["oof_after"], 5), "holdout_gain_mean": result["holdout_gain_mean"],
                           "bias_alpha_all": (result.get("bias_alpha") or {}).get("all"),
                           "cv_pooled": cv.get("cv_pooled"), "cv_score": cv.get("cv_score"),
                           "cv_score_kind": cv.get("cv_score_kind")}
            print(dtype, runs[dtype], flush=True)
            shutil.rmtree(preds.oof.root)  # the disk: only the test probabilities are needed from here
        same = [float((labels["float16"][s] == labels["uint8"][s]).mean()) for s in labels["float16"]]
        save("probs_dtype", {"command": invocation(), "data": a.data, "exp": a.exp, "runs": runs,
                             "test_pixels_same_label": round(float(np.mean(same)), 5),
                             "test_images": len(same)}, a.out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
