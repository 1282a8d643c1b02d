"""CPU training under different memory allocators, side by side: a short real CamVid fold-2 run
(`camvid_lite0`: DataLoader workers, augmentation, bf16/channels_last where the CPU has it, one
validation pass over the fold's 152 frames) per variant, the variants interleaved round by round.

glibc's malloc serves the large activation tensors of a training step with mmap and gives them back
with munmap, so every step faults its pages in again (the minor page faults and the system time
below); keeping freed memory in the heap (glibc tunables), transparent huge pages for malloc
(glibc.malloc.hugetlb=1) or another allocator (jemalloc, LD_PRELOAD) avoid that. Nothing computed
changes: only the time.

    python bench/cpu_allocator.py                  # needs ../shared/datasets/camvid
    python bench/cpu_allocator.py --steps 30 --rounds 2

Results: bench/results/cpu_allocator_cpu.json (or --out).
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from common import REPO, SHARED, save

# what the Makefile exports: the benchmark measures the setting the project ships
KEEP_HEAP = next(line.split("?=", 1)[1].strip() for line in (REPO / "Makefile").read_text().splitlines()
                 if line.startswith("export GLIBC_TUNABLES"))
JEMALLOC = ("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2")
VARIANTS = {
    "glibc default": {},
    "glibc, freed memory kept (mmap_threshold 32 MiB, trim_threshold 16 GiB)": {"GLIBC_TUNABLES": KEEP_HEAP},
    "glibc, freed memory kept + huge pages (hugetlb=1)": {"GLIBC_TUNABLES": KEEP_HEAP + ":glibc.malloc.hugetlb=1"},
}


def _variants() -> dict[str, dict]:
    out = dict(VARIANTS)
    lib = next((p for p in JEMALLOC if Path(p).exists()), None)
    if lib:
        out["jemalloc (LD_PRELOAD)"] = {"LD_PRELOAD": lib}
    return out


def _run(env_extra: dict, args: list[str], out_dir: Path, name: str) -> dict:
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


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=20, help="training steps (batches of 8) per run")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    if not (SHARED / "camvid").exists():
        raise SystemExit(f"{SHARED / 'camvid'} is absent: this benchmark trains on CamVid")
    variants = _variants()
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = Path(tmp) / "outputs"
        common = ["data=camvid", "exp=camvid_lite0", f"outputs={out_dir}", "runtime.progress=false"]
        subprocess.run([sys.executable, "-m", "pipeline", "folds", *common], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
        args = [*common, "fold=2", "train.epochs=1", "train.val_every=1", f"train.max_steps_per_epoch={a.steps}"]
        runs = {v: [] for v in variants}
        for r in range(a.rounds):
            for i, (label, env) in enumerate(variants.items()):
                runs[label].append(_run(env, args, out_dir, f"alloc{r}_{i}"))
                print(label, runs[label][-1], flush=True)
    base = max(x["train_img_per_s"] for x in runs["glibc default"])
    rows = []
    for label, env in variants.items():
        best = max(runs[label], key=lambda x: x["train_img_per_s"])
        rows.append({"allocator": label, "env": env, **best,
                     "speedup_vs_default": round(best["train_img_per_s"] / base, 2), "runs": runs[label]})
    save("cpu_allocator", {"command": f"python bench/cpu_allocator.py --steps {a.steps} --rounds {a.rounds}",
                           "what": "camvid_lite0 fold 2, one epoch of --steps batches + validation on 152 frames",
                           "results": rows}, a.out)


if __name__ == "__main__":
    main()
