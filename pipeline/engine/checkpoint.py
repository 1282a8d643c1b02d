"""Checkpoints written atomically every epoch; a truncated or corrupt one is detected on load and
the previous one used instead."""
from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import torch

from pipeline.errors import TrainingError
from pipeline.io import write_with

log = logging.getLogger(__name__)
REQUIRED = ("model", "optimizer", "epoch")  # a training checkpoint (last.pt): what resuming needs
MODEL_KEYS = ("model", "model_cfg", "classes")  # a model checkpoint (best.pt, swa.pt, a bundle's models)


def model_meta(model_cfg, classes, resize=None, **source) -> dict:
    """What a model checkpoint carries besides its weights: enough for inference to rebuild the
    network without the run's config (`source`: where it came from, e.g. exp and fold)."""
    cfg = dataclasses.asdict(model_cfg) if dataclasses.is_dataclass(model_cfg) else dict(model_cfg)
    return {"model_cfg": cfg, "classes": list(classes), "resize": resize, **source}


def save_model(path: Path, model: torch.nn.Module, model_cfg, classes, resize=None) -> None:
    """A model checkpoint (what best.pt holds for inference) of `model` as it is now."""
    save(path, {"model": model.state_dict(), **model_meta(model_cfg, classes, resize)}, keep_previous=False)


def save(path: Path, state: dict, keep_previous: bool = True) -> None:
    """Written in full under a staging name first; only then is the old file kept as .prev.pt and the
    new one renamed in. A full disk leaves the previous checkpoint where it was, and says so."""
    path = Path(path)
    staging = path.with_name(f".{path.name}.staging-{os.getpid()}")
    try:
        write_with(staging, lambda f: torch.save(state, f))
    except (OSError, RuntimeError) as e:  # torch reports a failed write as RuntimeError
        staging.unlink(missing_ok=True)
        kept = f"the previous checkpoint {path} is intact" if path.exists() else "no earlier checkpoint was touched"
        raise TrainingError(f"{path}: could not be written ({str(e).splitlines()[0][:160]}); {kept}. "
                            "Free disk space and re-run the same command to resume") from None
    if keep_previous and path.exists():
        os.replace(path, path.with_suffix(".prev.pt"))
    os.replace(staging, path)


def _try_load(path: Path, required=REQUIRED) -> dict | None:
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated zip, pickle errors, ...
        log.warning("%s: unreadable checkpoint (%s)", path, str(e).splitlines()[0][:200])
        return None
    if not isinstance(state, dict) or any(k not in state for k in required):
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
    """A model checkpoint: the weights and what rebuilding the network needs (MODEL_KEYS)."""
    state = _try_load(Path(path), MODEL_KEYS)
    if state is None:
        raise FileNotFoundError(f"{path}: no readable model checkpoint (weights, model config and classes)")
    return state


def model_only(state: dict, half: bool = False) -> dict:
    """The part of a model checkpoint inference needs (no optimiser, no history); `half` stores the
    floating-point weights as float16 (loaded back as float32)."""
    weights = {k: (v.half() if half and v.is_floating_point() else v) for k, v in state["model"].items()}
    return {"model": weights, **{k: state[k] for k in ("model_cfg", "classes")}, "resize": state.get("resize"),
            "source": {k: state.get(k) for k in ("exp", "fold", "epoch", "val_score")}}
