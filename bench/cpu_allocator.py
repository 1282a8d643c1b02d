"""CPU training under different memory allocators, side by side: the short real CamVid fold-2 run
of bench/camvid_epoch.py per variant, the variants interleaved round by round.

glibc's malloc serves the large activation tensors of a training step with mmap and gives them back
with munmap, so every step faults its pages in again (the minor page faults and the system time
below); keeping freed memory in the heap (glibc tunables), transparent huge pages for malloc
(glibc.malloc.hugetlb=1) or another allocator (jemalloc, LD_PRELOAD) avoid that. Nothing computed
changes: only the time.

    python bench/cpu_allocator.py                  # needs ../shared/datasets/camvid
    python bench/cpu_allocator.py --steps 30 --rounds 2

Results: bench/results/cpu_allocator_cpu.json (or --out).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from camvid_epoch import KEEP_HEAP, WHAT, best_rows, side_by_side
from common import save

JEMALLOC = ("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2")
DEFAULT = "glibc default"
VARIANTS = {
    DEFAULT: ({}, []),
    "glibc, freed memory kept (mmap_threshold 32 MiB, trim_threshold 16 GiB)": ({"GLIBC_TUNABLES": KEEP_HEAP}, []),
    "glibc, freed memory kept + huge pages (hugetlb=1)": ({"GLIBC_TUNABLES": KEEP_HEAP + ":glibc.malloc.hugetlb=1"}, []),
}


def _variants() -> dict[str, tuple[dict, list[str]]]:
    out = dict(VARIANTS)
    lib = next((p for p in JEMALLOC if Path(p).exists()), None)
    if lib:
        out["jemalloc (LD_PRELOAD)"] = ({"LD_PRELOAD": lib}, [])
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=20, help="training steps (batches of 8) per run")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    variants = _variants()
    runs = side_by_side(variants, a.steps, a.rounds)
    save("cpu_allocator", {"command": f"python bench/cpu_allocator.py --steps {a.steps} --rounds {a.rounds}",
                           "what": WHAT, "results": best_rows(variants, runs, DEFAULT, "allocator")}, a.out)


if __name__ == "__main__":
    main()
