"""CPU training speed by batch size, side by side: the short real CamVid fold-2 run of
bench/camvid_epoch.py with camvid_lite0's batches of 8 and with batches of 4 over the same number of
images (twice the steps), interleaved round by round. `train_img_per_s` counts the training steps
alone (the run's one validation pass is in `epoch_s`). On a CPU the batch changes how activations
fit the caches, not how much is computed per image; a recipe that trains as well with smaller
batches may train faster.

    python bench/cpu_batch.py --images 160 --rounds 2     # needs ../shared/datasets/camvid

Results: bench/results/cpu_batch_cpu.json (or --out).
"""
from __future__ import annotations

import argparse

from camvid_epoch import KEEP_HEAP, best_rows, side_by_side
from common import save

SHIPPED = {"GLIBC_TUNABLES": KEEP_HEAP}
BASELINE = "batch 8 (camvid_lite0)"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=160, help="training images per run (a multiple of 8)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    variants = {BASELINE: (SHIPPED, ["train.batch_size=8"]),  # side_by_side's steps: images // 8
                "batch 4": (SHIPPED, ["train.batch_size=4", f"train.max_steps_per_epoch={a.images // 4}"])}
    runs = side_by_side(variants, a.images // 8, a.rounds)
    save("cpu_batch", {"command": f"python bench/cpu_batch.py --images {a.images} --rounds {a.rounds}",
                       "what": f"camvid_lite0 fold 2, one epoch of {a.images} training images + validation on 152 frames",
                       "results": best_rows(variants, runs, BASELINE, "variant")}, a.out)


if __name__ == "__main__":
    main()
