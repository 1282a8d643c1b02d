"""A short real CamVid run for the CPU settings benchmarks (bench/cpu_allocator.py, cpu_threads.py, cpu_batch.py):
`camvid_lite0` fold 2, one epoch of a few batches (DataLoader workers, augmentation, bf16/channels_last
where the CPU has it) and one validation pass over the fold's 152 frames, in a fresh process per run,
each variant with its own environment and overrides, the variants interleaved round by round so that
a slow spell of the machine hits them alike."""
from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from common import REPO, SHARED

# what the Makefile exports: the benchmarks measure the setting the project ships
KEEP_HEAP = next(line.split("?=", 1)[1].strip() for line in (REPO / "Makefile").read_text().splitlines()
                 if line.startswith("export GLIBC_TUNABLES"))
WHAT = "camvid_lite0 fold 2, one epoch of --steps batches + validation on 152 frames"


def run_once(env_extra: dict, args: list[str], out_dir: Path, name: str) -> dict:
    """One training process; the allocator settings of this shell are dropped, `env_extra` set."""
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "LD_PRELOAD")}
    env.update(env_extra)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipeline", "train", *args, f"name={name}"], cwd=REPO, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    m = pd.read_csv(out_dir / "camvid" / "runs" / name / "fold2" / "metrics.csv").iloc[-1]
    return {"wall_s": round(wall, 1), "train_img_per_s": float(m["train_img_per_s"]), "epoch_s": float(m["seconds"]),
            "val_miou": round(float(m["val_miou"]), 4),
            "minor_faults": after.ru_minflt - before.ru_minflt,
            "user_s": round(after.ru_utime - before.ru_utime, 1), "sys_s": round(after.ru_stime - before.ru_stime, 1)}


def side_by_side(variants: dict[str, tuple[dict, list[str]]], steps: int, rounds: int) -> dict[str, list[dict]]:
    """label -> (environment, overrides): each variant's runs, `rounds` of them."""
    if not (SHARED / "camvid").exists():
        raise SystemExit(f"{SHARED / 'camvid'} is absent: this benchmark trains on CamVid")
    runs = {label: [] for label in variants}
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = Path(tmp) / "outputs"
        common = ["data=camvid", "exp=camvid_lite0", f"outputs={out_dir}", "runtime.progress=false"]
        subprocess.run([sys.executable, "-m", "pipeline", "folds", *common], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
        args = [*common, "fold=2", "train.epochs=1", "train.val_every=1", f"train.max_steps_per_epoch={steps}"]
        for r in range(rounds):
            for i, (label, (env, extra)) in enumerate(variants.items()):
                runs[label].append(run_once(env, [*args, *extra], out_dir, f"run{r}_{i}"))
                print(label, runs[label][-1], flush=True)
    return runs


def best_rows(variants: dict[str, tuple[dict, list[str]]], runs: dict[str, list[dict]], baseline: str,
              label_key: str) -> list[dict]:
    """Each variant's fastest run, with its speed-up over the baseline's fastest."""
    base = max(x["train_img_per_s"] for x in runs[baseline])
    rows = []
    for label, (env, extra) in variants.items():
        best = max(runs[label], key=lambda x: x["train_img_per_s"])
        rows.append({label_key: label, "env": env, "overrides": extra, **best,
                     "speedup": round(best["train_img_per_s"] / base, 2), "runs": runs[label]})
    return rows
