"""CPU training under different thread settings, side by side, on the shipped allocator setting:
the same short real CamVid fold-2 run as bench/cpu_allocator.py per variant, interleaved round by
round. On 2 cores the DataLoader workers (JPEG decoding, OpenCV augmentation, each worker with its
own OpenCV thread pool) share the cores with torch's OpenMP threads, which spin while they wait.

    python bench/cpu_threads.py --steps 20 --rounds 2     # needs ../shared/datasets/camvid

Results: bench/results/cpu_threads_cpu.json (or --out).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from common import REPO, SHARED, save
from cpu_allocator import KEEP_HEAP, _run

SHIPPED = {"GLIBC_TUNABLES": KEEP_HEAP}
VARIANTS = {  # label: (environment, extra overrides)
    "shipped (2 loader workers)": (SHIPPED, []),
    "OpenCV one thread per worker (OPENCV_FOR_THREADS_NUM=1)": ({**SHIPPED, "OPENCV_FOR_THREADS_NUM": "1"}, []),
    "OpenMP threads sleep when idle (OMP_WAIT_POLICY=PASSIVE)": ({**SHIPPED, "OMP_WAIT_POLICY": "PASSIVE"}, []),
    "1 loader worker": (SHIPPED, ["train.num_workers=1"]),
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=20, help="training steps (batches of 8) per run")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    if not (SHARED / "camvid").exists():
        raise SystemExit(f"{SHARED / 'camvid'} is absent: this benchmark trains on CamVid")
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = Path(tmp) / "outputs"
        common = ["data=camvid", "exp=camvid_lite0", f"outputs={out_dir}", "runtime.progress=false"]
        subprocess.run([sys.executable, "-m", "pipeline", "folds", *common], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
        args = [*common, "fold=2", "train.epochs=1", "train.val_every=1", f"train.max_steps_per_epoch={a.steps}"]
        runs = {v: [] for v in VARIANTS}
        for r in range(a.rounds):
            for i, (label, (env, extra)) in enumerate(VARIANTS.items()):
                runs[label].append(_run(env, [*args, *extra], out_dir, f"threads{r}_{i}"))
                print(label, runs[label][-1], flush=True)
    base = max(x["train_img_per_s"] for x in runs["shipped (2 loader workers)"])
    rows = []
    for label, (env, extra) in VARIANTS.items():
        best = max(runs[label], key=lambda x: x["train_img_per_s"])
        rows.append({"variant": label, "env": env, "overrides": extra, **best,
                     "speedup_vs_shipped": round(best["train_img_per_s"] / base, 2), "runs": runs[label]})
    save("cpu_threads", {"command": f"python bench/cpu_threads.py --steps {a.steps} --rounds {a.rounds}",
                         "what": "camvid_lite0 fold 2, one epoch of --steps batches + validation on 152 frames",
                         "results": rows}, a.out)


if __name__ == "__main__":
    main()
