"""Training throughput (img/s) with and without AMP + channels_last, built with the pipeline's own
model, optimiser-group and loss builders. Writes a JSON result file.

    python bench/train_throughput.py --arch Unet --encoder resnet34 --size 512 --batch 16      # GPU
    python bench/train_throughput.py --cpu --encoders resnet18 resnet34 tu-tf_efficientnet_lite0 --size 256 --batch 8
    python bench/train_throughput.py --cpu --encoders tu-tf_efficientnet_lite0 --amps bf16 --decoders 256,128,64,32,16 128,64,32,16,16
    python bench/train_throughput.py --cpu --encoders tu-tf_efficientnet_lite0 resnet18 --amps bf16 --depthwise-fp32

CPU mode: fp32 vs bf16 x NCHW vs channels_last for each encoder, the measurements interleaved
round by round (each configuration once per round, best round kept), so that a slower moment of a
shared machine does not fall on one configuration only. Every bf16 configuration keeps its depthwise
convolutions in bf16 (`runtime.depthwise_fp32=false`) unless it says otherwise: --depthwise-fp32 adds
bf16 channels_last with them in fp32, as segpipe runs it by default.
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
from pipeline.engine.runtime import amp_dtype, cpu_has_native_bf16, depthwise_in_fp32  # noqa: E402
from bench.common import machine  # noqa: E402


def make_step(arch, encoder, size, batch, amp, channels_last, compile_, device, classes=12, decoder=None,
              depthwise_fp32=False, loss_fn=None):
    """`decoder`: the UNet's decoder_channels (None: the architecture's default); `loss_fn`: in place
    of segpipe's CE + 0.5 Dice."""
    torch.manual_seed(0)
    params = {"decoder_channels": list(decoder)} if decoder else {}
    model = build_model(ModelConfig("bench", arch, encoder, params=params), classes).to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    if depthwise_fp32:
        depthwise_in_fp32(model)
    tc = TrainConfig()
    opt = build_optimizer(model, tc)
    loss_fn = (loss_fn or build_loss((LossTerm("ce"), LossTerm("dice", 0.5)), classes, 255)).to(device)
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

    return step, dtype


def measure(arch, encoder, size, batch, steps, warmup, amp, channels_last, compile_, device, classes=12):
    step, dtype = make_step(arch, encoder, size, batch, amp, channels_last, compile_, device, classes)
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


def cpu_grid(a) -> dict:
    """Every (encoder, amp, memory format) on the CPU, interleaved round by round; with --compile also
    each (encoder, amp) channels_last under torch.compile (its first step, the compilation, timed apart)."""
    decoders = a.decoders or [None]
    configs = [(enc, amp, cl, False, dec, False) for enc in a.encoders for dec in decoders for amp in a.amps
               for cl in (False, True)]
    if a.depthwise_fp32:
        configs += [(enc, "bf16", True, False, dec, True) for enc in a.encoders for dec in decoders]
    if a.compile:
        configs += [(enc, amp, True, True, dec, False) for enc in a.encoders for dec in decoders for amp in a.amps]
    steps = {c: make_step(a.arch, c[0], a.size, a.batch, c[1], c[2], c[3], torch.device("cpu"), decoder=c[4],
                          depthwise_fp32=c[5]) for c in configs}
    first_step = {}
    for c in configs:  # warm-up: oneDNN picks its kernels (and torch.compile compiles) on the first calls
        t = time.perf_counter()
        steps[c][0]()
        first_step[c] = time.perf_counter() - t
        for _ in range(a.warmup - 1):
            steps[c][0]()
    best = {c: float("inf") for c in configs}
    for _ in range(a.rounds):
        for c in configs:
            t = time.perf_counter()
            for _ in range(a.steps):
                steps[c][0]()
            best[c] = min(best[c], (time.perf_counter() - t) / a.steps)
    rows = []
    for c in configs:
        enc, amp, cl, comp, dec, dw = c
        base = best[(enc, "off", False, False, dec, False)] if "off" in a.amps else None
        dt = best[c]
        rows.append({"encoder": enc, "decoder_channels": ",".join(map(str, dec)) if dec else "default",
                     "amp": "bf16" if amp == "bf16" else "fp32", "channels_last": cl, "compile": comp,
                     "depthwise_fp32": dw,
                     "img_per_s": round(a.batch / dt, 2), "step_ms": round(1000 * dt, 1),
                     "first_step_s": round(first_step[c], 1),
                     "speedup_vs_fp32_nchw": round(base / dt, 2) if base else None})
    command = (f"python bench/train_throughput.py --cpu --encoders {' '.join(a.encoders)} --size {a.size} "
               f"--batch {a.batch} --steps {a.steps} --rounds {a.rounds} --warmup {a.warmup} --amps {' '.join(a.amps)}"
               + (" --decoders " + " ".join(",".join(map(str, d)) for d in a.decoders) if a.decoders else "")
               + (" --depthwise-fp32" if a.depthwise_fp32 else "") + (" --compile" if a.compile else ""))
    return {"bench": "train_throughput_cpu", "command": command, "arch": a.arch, "size": a.size, "batch": a.batch, "steps": a.steps,
            "rounds": a.rounds, "native_bf16": cpu_has_native_bf16(), "machine": machine(),
            "when": time.strftime("%Y-%m-%d %H:%M"), "results": rows}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--arch", default="Unet")
    p.add_argument("--encoder", default="resnet34")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--compile", action="store_true", help="also measure torch.compile")
    p.add_argument("--depthwise-fp32", action="store_true",
                   help="CPU grid: also bf16 channels_last with the depthwise convolutions in fp32")
    p.add_argument("--out", default=None)
    p.add_argument("--cpu", action="store_true", help="CPU grid: fp32/bf16 x NCHW/channels_last per encoder")
    p.add_argument("--encoders", nargs="+", default=["resnet18", "resnet34", "tu-tf_efficientnet_lite0"])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--amps", nargs="+", choices=["off", "bf16"], default=["off", "bf16"],
                   help="CPU grid: the precisions (bf16 without native support is emulated, minutes per step)")
    p.add_argument("--decoders", nargs="+", default=None, type=lambda v: tuple(int(c) for c in v.split(",")),
                   help="CPU grid: UNet decoder_channels to compare, each comma-separated (e.g. 256,128,64,32,16)")
    a = p.parse_args()
    if a.cpu:
        result = cpu_grid(a)
        print(json.dumps(result, indent=2))
        out = Path(a.out or "bench/results/train_throughput_cpu.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        return
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
