"""Whole-image vs sliding-window inference on growing square images: peak resident memory and
megapixels per second of segpipe's Ensemble (a DeconvNet of width 1/16, 3 classes, no TTA), each case in its own
process (the peak is per process) with its address space capped, so a whole-image pass that
cannot fit fails cleanly instead of swapping. Run alone: timings taken beside another job are void.

    python bench/window_infer.py [--sizes 1024 4096 8192 16384 --window 512 --overlap 0.125 --cap-gib 16]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from common import REPO, save

CHILD = """
import json, resource, sys, time
sys.path.insert(0, {repo!r})
cap, size, mode, window, overlap, ckpt = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), \\
    float(sys.argv[5]), sys.argv[6]
import numpy as np, torch
from pipeline.config.schema import RuntimeConfig
from pipeline.data.coco import ImageRecord
from pipeline.engine.runtime import DistInfo, Runtime
from pipeline.inference.ensemble import Ensemble, Member, top_class
from pipeline.inference.tta import build_tta
from pathlib import Path

def hwm():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024

class OneImage:
    def __init__(self, size):
        self.records = [ImageRecord("big", "big.png", size, size, None)]
    def image(self, i):
        yy, xx = np.mgrid[0:size, 0:size // 64]
        return np.repeat(((yy % 251)[:, :, None] + np.arange(3)).astype(np.uint8), 64, axis=1)

rt = Runtime.create(RuntimeConfig(device="cpu", amp="off", channels_last=False), DistInfo())
ens = Ensemble([Member("bench", 0, Path(ckpt), 1.0)], rt, build_tta([]),
               (window, window) if mode == "window" else None, overlap)
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
out = {{"size": size, "mode": mode}}
t = time.perf_counter()
try:
    for _, probs in ens.predict(OneImage(size), [0], batch_size=4, num_workers=0):
        label, _ = top_class(probs)
    dt = time.perf_counter() - t
    out.update(ok=True, seconds=round(dt, 1), mp_per_s=round(size * size / dt / 1e6, 2))
except (RuntimeError, MemoryError) as e:
    out.update(ok=False, error=str(e).splitlines()[0][:80])
out["peak_rss_mib"] = round(hwm())
print(json.dumps(out))
"""


def _checkpoint(path: Path) -> None:
    import torch

    from pipeline.config import ModelConfig
    from pipeline.engine import checkpoint
    from pipeline.models import build_model

    mc = ModelConfig(name="bench", arch="deconvnet", params={"width": 0.0625, "fc_channels": 16})
    torch.manual_seed(0)
    model = build_model(mc, 3)
    checkpoint.save_model(path, model, mc, ["a", "b", "c"])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 8192, 16384])
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--overlap", type=float, default=0.125)
    p.add_argument("--cap-gib", type=float, default=16.0)
    a = p.parse_args()
    ckpt = REPO / "outputs" / "bench" / "window_model.pt"
    _checkpoint(ckpt)
    cap = int(a.cap_gib * 2 ** 30)
    rows = []
    for size in a.sizes:
        for mode in ("whole", "window"):
            if mode == "whole" and rows and any(r["mode"] == "whole" and not r["ok"] for r in rows):
                rows.append({"size": size, "mode": mode, "ok": False, "error": "skipped: a smaller size already failed"})
                continue
            t = time.perf_counter()
            run = subprocess.run([sys.executable, "-c", CHILD.format(repo=str(REPO)), str(cap), str(size), mode,
                                  str(a.window), str(a.overlap), str(ckpt)], capture_output=True, text=True)
            lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
            row = json.loads(lines[-1]) if lines else {"size": size, "mode": mode, "ok": False,
                                                       "error": (run.stderr.strip().splitlines() or ["killed"])[-1][:80]}
            rows.append(row)
            print(json.dumps(row), f"({time.perf_counter() - t:.0f}s)", flush=True)
    whole_ok = [r["size"] for r in rows if r["mode"] == "whole" and r["ok"]]
    faster = [r["size"] for r in rows if r["mode"] == "window" and r["ok"] and any(
        w["size"] == r["size"] and w["mode"] == "whole" and w["ok"] and w["mp_per_s"] < r["mp_per_s"] for w in rows)]
    save("window_infer", {"window": a.window, "overlap": a.overlap, "address_space_cap_gib": a.cap_gib,
                          "model": "DeconvNet width 1/16, 3 classes, no TTA",
                          "largest_whole_image_that_ran": max(whole_ok) if whole_ok else None,
                          "sizes_where_window_is_faster": faster, "results": rows})


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    main()
