"""Lite0's depthwise convolution layers alone on the CPU, forward and backward: fp32 vs bf16 x NCHW
vs channels_last, the case behind `runtime.depthwise_fp32` (oneDNN's bf16 depthwise backward is
several times slower than its fp32 one on the CPUs measured). Shapes are those of a UNet-Lite0
training step at 256², batch 8 (the padded inputs of timm's TF "same" convolutions).

    python bench/depthwise_cpu.py            # results: bench/results/depthwise_cpu.json (or --out)
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from common import invocation, save

# (input N, C, H, W), kernel, stride: from the profile of one camvid_lite0 step
LAYERS = [((8, 96, 129, 129), 3, 2), ((8, 144, 67, 67), 5, 2), ((8, 240, 32, 32), 5, 1),
          ((8, 672, 16, 16), 5, 1), ((8, 1152, 8, 8), 5, 1)]


def time_layer(shape, k, stride, dtype, channels_last, steps):
    """Best-of-`steps` forward and (forward + backward) - forward times, in ms."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(shape, dtype=dtype).contiguous(memory_format=fmt).requires_grad_()
    w = torch.randn(shape[1], 1, k, k, dtype=dtype).contiguous(memory_format=fmt).requires_grad_()
    g = torch.ones_like(F.conv2d(x, w, stride=stride, groups=shape[1]))
    fwd, both = float("inf"), float("inf")
    for i in range(steps + 2):  # two warm-up calls: oneDNN picks its kernels
        t = time.perf_counter()
        y = F.conv2d(x, w, stride=stride, groups=shape[1])
        t1 = time.perf_counter()
        y.backward(g)
        t2 = time.perf_counter()
        if i >= 2:
            fwd, both = min(fwd, t1 - t), min(both, t2 - t)
    return round(1000 * fwd, 2), round(1000 * (both - fwd), 2)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    rows = []
    for shape, k, stride in LAYERS:
        for dtype in (torch.float32, torch.bfloat16):
            for cl in (False, True):
                f, b = time_layer(shape, k, stride, dtype, cl, a.steps)
                rows.append({"input": "x".join(map(str, shape)), "kernel": k, "stride": stride,
                             "dtype": str(dtype).replace("torch.", ""), "channels_last": cl,
                             "forward_ms": f, "backward_ms": b})
    save("depthwise", {"command": invocation(), "results": rows}, a.out)


if __name__ == "__main__":
    main()
