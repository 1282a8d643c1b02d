"""Training throughput (img/s) of one model with and without AMP + channels_last, built with the
pipeline's own model, optimiser-group and loss builders. Writes a JSON result file.

    python bench/train_throughput.py --arch Unet --encoder resnet34 --size 512 --batch 16
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.config import LossTerm, ModelConfig, TrainConfig  # noqa: E402
from pipeline.engine.losses import build_loss  # noqa: E402
from pipeline.models import build_model  # noqa: E402
from pipeline.engine.optim import build_optimizer  # noqa: E402
from pipeline.engine.runtime import amp_dtype  # noqa: E402


def measure(arch, encoder, size, batch, steps, warmup, amp, channels_last, compile_, device, classes=12):
    torch.manual_seed(0)
    model = build_model(ModelConfig("bench", arch, encoder), classes).to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    tc = TrainConfig()
    opt = build_optimizer(model, tc)
    loss_fn = build_loss((LossTerm("ce"), LossTerm("dice", 0.5)), classes, 255).to(device)
    dtype = amp_dtype(amp, device)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    fwd = torch.compile(model) if compile_ else model
    x = torch.randn(batch, 3, size, size, device=device).to(memory_format=fmt)
    y = torch.randint(0, classes, (batch, size, size), device=device)

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = loss_fn(fwd(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t
    return {"amp": str(dtype).replace("torch.", "") if dtype else "fp32", "channels_last": channels_last,
            "compile": compile_, "img_per_s": round(batch * steps / dt, 1), "step_ms": round(1000 * dt / steps, 2),
            "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--arch", default="Unet")
    p.add_argument("--encoder", default="resnet34")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--compile", action="store_true", help="also measure torch.compile")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    modes = [("off", False, False), ("auto", True, False)]
    if device.type == "cuda":
        modes.insert(1, ("auto", False, False))
        if a.compile:
            modes.append(("auto", True, True))
    rows = [measure(a.arch, a.encoder, a.size, a.batch, a.steps, a.warmup, amp, cl, comp, device)
            for amp, cl, comp in modes]
    result = {"bench": "train_throughput", "arch": a.arch, "encoder": a.encoder, "size": a.size, "batch": a.batch,
              "steps": a.steps, "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
              "torch": torch.__version__, "results": rows}
    print(json.dumps(result, indent=2))
    out = Path(a.out or f"bench/results/train_throughput_{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
