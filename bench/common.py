"""Shared by the benchmark scripts: machine details and the result file."""
from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
SHARED = REPO.parent / "shared" / "datasets"
# overrides that leave a recipe with its fold models only: no full-data refit, so none of its settings
# (a recipe whose refit starts from a fold model or trains on pseudo-labels is refused without them)
FOLDS_ONLY = ["infer.refit=off", "train.refit_pseudo=false", "train.refit_init=null"]


def machine() -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine()}
    info.update(_cpuinfo())
    info["cpu_isa"] = torch.backends.cpu.get_cpu_capability()  # the kernels torch dispatches to: AVX2, AVX512, ...
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _cpuinfo() -> dict:
    """The first core's model name, family/model (one "AMD EPYC" name covers Zen 3 and Zen 5) and
    the native bf16 flags: the figures of one CPU do not carry to another."""
    fields, flags = {}, set()
    try:
        for line in open("/proc/cpuinfo"):
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "cpu family", "model") and key not in fields:
                fields[key] = value.strip()
            elif key == "flags":
                flags = set(value.split())
                break
    except OSError:
        return {}
    info = {"cpu": fields["model name"]} if "model name" in fields else {}
    if "cpu family" in fields:
        info["cpu_family_model"] = f"{fields['cpu family']}/{fields.get('model', '?')}"
    info["cpu_bf16_flags"] = sorted(flags & {"amx_bf16", "avx512_bf16"})
    return info


def invocation() -> str:
    """The command line this bench was started with, as a result file records it."""
    return shlex.join(["python", f"bench/{Path(sys.argv[0]).name}", *sys.argv[1:]])


def timed(fn, repeat: int = 3) -> float:
    """Best wall time of `repeat` calls, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def save(name: str, result: dict, out: str | None = None) -> Path:
    import torch

    result = {"bench": name, "when": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), **result}
    suffix = "cuda" if torch.cuda.is_available() else "cpu"
    path = Path(out) if out else REPO / "bench" / "results" / f"{name}_{suffix}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return path
