"""CPU training under different thread settings, side by side, on the shipped allocator setting:
the short real CamVid fold-2 run of bench/camvid_epoch.py per variant, interleaved round by round.
On 2 cores the DataLoader workers (JPEG decoding, OpenCV augmentation, each worker with its own
OpenCV thread pool) share the cores with torch's OpenMP threads, which spin while they wait.

    python bench/cpu_threads.py --steps 20 --rounds 2     # needs ../shared/datasets/camvid

Results: bench/results/cpu_threads_cpu.json (or --out).
"""
from __future__ import annotations

import argparse

from camvid_epoch import KEEP_HEAP, WHAT, best_rows, side_by_side
from common import save

SHIPPED = {"GLIBC_TUNABLES": KEEP_HEAP}
TWO_WORKERS = ["train.num_workers=2"]  # set here: camvid_lite0 ships 1
BASELINE = "2 loader workers"
VARIANTS = {  # label: (environment, extra overrides)
    BASELINE: (SHIPPED, TWO_WORKERS),
    "OpenCV one thread per worker (OPENCV_FOR_THREADS_NUM=1)": ({**SHIPPED, "OPENCV_FOR_THREADS_NUM": "1"}, TWO_WORKERS),
    "OpenMP threads sleep when idle (OMP_WAIT_POLICY=PASSIVE)": ({**SHIPPED, "OMP_WAIT_POLICY": "PASSIVE"}, TWO_WORKERS),
    "1 loader worker (camvid_lite0 as shipped)": (SHIPPED, ["train.num_workers=1"]),
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=20, help="training steps (batches of 8) per run")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    runs = side_by_side(VARIANTS, a.steps, a.rounds)
    save("cpu_threads", {"command": f"python bench/cpu_threads.py --steps {a.steps} --rounds {a.rounds}",
                         "what": WHAT, "results": best_rows(VARIANTS, runs, BASELINE, "variant")}, a.out)


if __name__ == "__main__":
    main()
