"""Disk the test suite takes: the README's test command run under pytest's keep-everything policy
(`tmp_path_retention_policy=all`, pytest's default) and then under the project's own (`failed`),
each with the filesystem's used bytes sampled every 0.5 s. Peak = the most used above the start;
left = what the session leaves behind once pytest exits. Each run gets its own empty base folder,
so the `all` run's three-session retention does not count: multiply its `left` by 3 for that.

    python bench/test_suite_disk.py [--policies all failed] [--out FILE]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import REPO, invocation, save

GIB = 2 ** 30


def used(path: Path) -> int:
    return shutil.disk_usage(path).used


def run_suite(policy: str | None, root: Path) -> dict:
    """One pytest session with its base folder under `root` (left where pytest leaves it)."""
    start, peak, done = used(root), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], used(root) - start)
            time.sleep(0.5)

    # pytest's own numbered folders under a root of ours, as a run without --basetemp makes them
    # (--basetemp would switch the end-of-session clean-up off)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    if policy:
        cmd += ["-o", f"tmp_path_retention_policy={policy}"]
    env = {**os.environ, "PYTEST_DEBUG_TEMPROOT": str(root)}
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    done.set()
    thread.join()
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    left = sum(f.stat().st_size for f in root.rglob("*") if f.is_file() and not f.is_symlink())
    return {"policy": policy or "project's (pyproject)", "rc": proc.returncode, "summary": tail,
            "wall_s": round(wall, 1), "peak_gib": round(peak[0] / GIB, 2), "left_gib": round(left / GIB, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policies", nargs="+", default=["all", "project"],
                    help="'all' (pytest's default), 'failed', or 'project' (pyproject's setting)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    runs = []
    for policy in a.policies:
        root = Path(tempfile.mkdtemp(prefix="suite-disk-"))
        try:
            runs.append(run_suite(None if policy == "project" else policy, root))
        finally:
            shutil.rmtree(root, ignore_errors=True)
        print(runs[-1], flush=True)
    save("test_suite_disk", {"command": invocation(), "runs": runs}, a.out)


if __name__ == "__main__":
    main()
