"""Test probabilities computed once. Before a pseudo-labelled refit, the fold ensemble predicts the
test images to label them; `infer` then needs that same fold ensemble on the same images, plus the
refit. The pseudo-labelling pass keeps its averaged probabilities (in infer.probs_dtype) under a key
that names what made them: each checkpoint by path, size and modification time, the weights, TTA,
windows, precision, the kept form and the images. `infer` reuses them only when its own fold members
and settings give the same key; it then runs the remaining members alone and averages the two parts
by weight. The result equals a full pass up to the rounding of the reused part (float16: about 3
significant digits; uint8: 1/510 at most)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.config import Config
from pipeline.engine.runtime import Runtime, get_logger
from pipeline.errors import DataError
from pipeline.inference.outdir import decode_probs, encode_probs
from pipeline.io import read_json

log = get_logger(__name__)

# Raised when segpipe's inference arithmetic changes, so that probabilities kept by an older version
# are not averaged with new ones. 2: depthwise convolutions in the autocast dtype at inference.
NUMERICS = 2


def ensemble_key(cfg: Config, members, rt: Runtime, stems: list[str]) -> dict:
    """What the ensemble's probabilities depend on; equal keys, equal probabilities."""
    models = []
    for m in members:
        st = m.path.stat()
        models.append({"path": str(m.path), "weight": m.weight, "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return {"models": models, "tta": list(cfg.infer.tta), "window": cfg.infer.window, "overlap": cfg.infer.overlap,
            "dtype": str(rt.dtype), "numerics": NUMERICS, **_kept(cfg), "images": list(stems)}


def _kept(cfg: Config) -> dict:
    """The kept form, named only when not float16: keys written before uint8 existed stay valid."""
    return {} if cfg.infer.probs_dtype == "float16" else {"kept": cfg.infer.probs_dtype}


def probs_path(root: Path, stem: str) -> Path:
    return root / "probs" / f"{stem}.npy"


def save_probs(root: Path, stem: str, probs: torch.Tensor, dtype: str = "float16") -> None:
    """Uncompressed: zlib takes ~0.14 s per CamVid frame and saves 15% of the bytes."""
    path = probs_path(root, stem)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, encode_probs(probs.numpy(), dtype))


@dataclass(frozen=True)
class ReusedPart:
    root: Path
    weight: float  # the reused members' summed weight

    def combine(self, stem: str, rest: torch.Tensor, rest_weight: float) -> torch.Tensor:
        """The whole ensemble's mean from the reused part's and the rest's (each already a weighted mean)."""
        path = probs_path(self.root, stem)
        if not path.exists():
            raise DataError(f"{path}: missing, though {self.root / 'manifest.json'} lists image {stem!r}")
        reused = torch.from_numpy(decode_probs(np.load(path)))
        if reused.shape != rest.shape:
            raise DataError(f"{path}: probabilities of shape {tuple(reused.shape)}, the other members gave {tuple(rest.shape)}")
        return (reused * self.weight + rest * rest_weight) / (self.weight + rest_weight)


def reusable_part(cfg: Config, members, rt: Runtime, stems: list[str]) -> tuple[ReusedPart | None, list]:
    """(the pseudo-labelling pass's probabilities when they were made by some of `members` with
    these settings on these images, else None; the members still to run)."""
    manifest = cfg.pseudo_dir() / "manifest.json"
    if not manifest.exists():
        return None, members
    key = read_json(manifest).get("probs_key")
    if not isinstance(key, dict) or not isinstance(key.get("models"), list):
        return None, members
    paths = {m.get("path") for m in key["models"] if isinstance(m, dict)}
    part = [m for m in members if str(m.path) in paths]
    rest = [m for m in members if str(m.path) not in paths]
    if not part or not rest or ensemble_key(cfg, part, rt, stems) != key:
        return None, members
    log.info("infer: the test probabilities of %d model(s) come from the pseudo-labelling pass (%s)",
             len(part), cfg.pseudo_dir())
    return ReusedPart(cfg.pseudo_dir(), sum(m.weight for m in part)), rest
