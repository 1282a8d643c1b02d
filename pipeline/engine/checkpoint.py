"""Checkpoints written atomically every epoch; a truncated or corrupt one is detected on load and
the previous one used instead."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from pipeline.io import write_with

log = logging.getLogger(__name__)
REQUIRED = ("model", "optimizer", "epoch")


def save(path: Path, state: dict, keep_previous: bool = True) -> None:
    path = Path(path)
    if keep_previous and path.exists():
        os.replace(path, path.with_suffix(".prev.pt"))
    write_with(path, lambda f: torch.save(state, f))


def _try_load(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated zip, pickle errors, ...
        log.warning("%s: unreadable checkpoint (%s)", path, str(e).splitlines()[0][:200])
        return None
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED):
        log.warning("%s: incomplete checkpoint", path)
        return None
    return state


def load_latest(run_dir: Path) -> dict | None:
    """The newest readable of last.pt and last.prev.pt, or None for a fresh run."""
    run_dir = Path(run_dir)
    for name in ("last.pt", "last.prev.pt"):
        state = _try_load(run_dir / name)
        if state is not None:
            if name != "last.pt" and (run_dir / "last.pt").exists():
                log.warning("resuming from %s: last.pt was corrupt", run_dir / name)
            return state
    return None


def load_weights(path: Path) -> dict:
    state = _try_load(Path(path))
    if state is None:
        raise FileNotFoundError(f"{path}: no readable checkpoint")
    return state
