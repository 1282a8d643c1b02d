"""The loss's share of a CPU training step: the recipe's step (UNet-Lite0, 256² crops, batch 8, bf16
channels_last, depthwise convolutions in fp32) with segpipe's CE + 0.5 Dice, with the same terms as
before 2026-12-07 (SMP's DiceLoss, each term casting the bf16 logits on its own), and with CE alone
(the floor a cheaper Dice could reach), interleaved round by round, the best round kept.

    python bench/loss_step.py --out bench/results/loss_step_xeon167.json
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import segmentation_models_pytorch as smp
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import invocation, save  # noqa: E402
from bench.train_throughput import make_step  # noqa: E402
from pipeline.config import LossTerm  # noqa: E402
from pipeline.engine.losses import _FP32, build_loss  # noqa: E402


class _PerTermCasts(nn.Module):
    """segpipe's Combined before 2026-12-07: every term gets the logits as the model returned them."""

    def __init__(self, terms):
        super().__init__()
        self.weights = [w for w, _ in terms]
        self.terms = nn.ModuleList([t for _, t in terms])

    def forward(self, logits, target):
        return sum(w * t(logits, target) for w, t in zip(self.weights, self.terms))


def variants(classes: int) -> dict:
    ce = nn.CrossEntropyLoss(ignore_index=255)
    return {"segpipe CE + 0.5 Dice": build_loss((LossTerm("ce"), LossTerm("dice", 0.5)), classes, 255),
            "before: SMP Dice, casts per term": _PerTermCasts([(1.0, ce), (0.5, _FP32(smp.losses.DiceLoss(
                "multiclass", ignore_index=255)))]),
            "CE alone": build_loss((LossTerm("ce"),), classes, 255)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--encoder", default="tu-tf_efficientnet_lite0")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    steps = {name: make_step("Unet", a.encoder, a.size, a.batch, "bf16", True, False, torch.device("cpu"),
                             depthwise_fp32=True, loss_fn=loss)[0] for name, loss in variants(12).items()}
    for step in steps.values():
        for _ in range(2):  # oneDNN picks its kernels on the first calls
            step()
    best = dict.fromkeys(steps, float("inf"))
    for _ in range(a.rounds):
        for name, step in steps.items():
            t = time.perf_counter()
            for _ in range(a.steps):
                step()
            best[name] = min(best[name], (time.perf_counter() - t) / a.steps)
    base = best["before: SMP Dice, casts per term"]
    rows = [{"loss": name, "step_ms": round(1000 * dt, 1), "img_per_s": round(a.batch / dt, 2),
             "time_vs_before": round(dt / base, 3)} for name, dt in best.items()]
    save("loss_step", {"command": invocation(), "encoder": a.encoder, "size": a.size, "batch": a.batch,
                       "amp": "bf16", "channels_last": True, "depthwise_fp32": True, "rounds": a.rounds,
                       "steps_per_round": a.steps, "results": rows}, a.out)


if __name__ == "__main__":
    main()
