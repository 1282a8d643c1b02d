"""Where a CPU training step's time goes: the recipe's step (UNet, 256² crops, batch 8, channels_last,
bf16 autocast with the depthwise convolutions in fp32, as `runtime.amp=auto` runs it on a CPU with
native bf16) under torch.profiler, the operators ranked by their own CPU time. Writes a JSON file
(bench/results/cpu_step_profile_cpu.json without --out).

    python bench/cpu_step_profile.py --encoder tu-tf_efficientnet_lite0 --out bench/results/cpu_step_profile_xeon.json
    python bench/cpu_step_profile.py --by-shape aten::copy_ --out ...   # also that operator's calls by input shapes
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import invocation, save  # noqa: E402
from bench.train_throughput import make_step  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--arch", default="Unet")
    p.add_argument("--encoder", default="tu-tf_efficientnet_lite0")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--amp", choices=["off", "bf16"], default="bf16")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--by-shape", default=None, help="an operator (e.g. aten::copy_) whose calls to rank by input shapes")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    step, dtype = make_step(a.arch, a.encoder, a.size, a.batch, a.amp, channels_last=True, compile_=False,
                            device=torch.device("cpu"), depthwise_fp32=a.amp == "bf16")
    for _ in range(a.warmup):
        step()
    t = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=bool(a.by_shape)) as prof:
        for _ in range(a.steps):
            step()
    wall = time.perf_counter() - t
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in rows)
    top = [{"op": e.key, "calls_per_step": e.count / a.steps, "self_ms_per_step": round(e.self_cpu_time_total / 1e3 / a.steps, 2),
            "share": round(e.self_cpu_time_total / total, 4)} for e in rows[: a.top]]
    result = {"command": invocation(), "arch": a.arch, "encoder": a.encoder, "size": a.size, "batch": a.batch,
              "amp": str(dtype).replace("torch.", "") if dtype else "fp32", "channels_last": True,
              "steps": a.steps, "step_ms_profiled": round(1000 * wall / a.steps, 1),
              "img_per_s_profiled": round(a.batch * a.steps / wall, 2), "results": top}
    if a.by_shape:
        calls = sorted((e for e in prof.key_averages(group_by_input_shape=True) if e.key == a.by_shape),
                       key=lambda e: e.self_cpu_time_total, reverse=True)
        result["by_shape"] = [{"op": a.by_shape, "input_shapes": str(e.input_shapes), "calls_per_step": e.count / a.steps,
                               "self_ms_per_step": round(e.self_cpu_time_total / 1e3 / a.steps, 2)} for e in calls[: a.top]]
    save("cpu_step_profile", result, a.out)


if __name__ == "__main__":
    main()
