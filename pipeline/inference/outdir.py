"""A prediction folder: its layout and the checked readers of its files (`Preds`, the one place
that spells them), and its writer (`PredictionFolder`): complete or absent, written under a
temporary name and switched in by rename only when every file and the manifest are there."""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.competition.postprocess import read_rules
from pipeline.data.sources import read_label_png
from pipeline.errors import DataError
from pipeline.io import read_json, require_space, write_json

MANIFEST = "manifest.json"
PROBS_BYTES = {"float16": 2, "uint8": 1}  # per class and pixel, by infer.probs_dtype


def encode_probs(probs: np.ndarray, dtype: str) -> np.ndarray:
    """Probabilities as kept on disk: float16, or uint8 in steps of 1/255 (off by at most 1/510)."""
    if dtype == "uint8":
        return np.rint(np.clip(probs, 0, 1) * 255).astype(np.uint8)
    return probs.astype(np.float16)


def decode_probs(stored: np.ndarray) -> np.ndarray:
    """float32 probabilities from either kept form (the array's dtype says which)."""
    return stored.astype(np.float32) / 255 if stored.dtype == np.uint8 else stored.astype(np.float32)


@dataclass(frozen=True)
class Preds:
    """<root>/labels/<stem>.png (label maps at each image's size), probs/<stem>.npz (probabilities,
    when kept, float16 or uint8: infer.probs_dtype), manifest.json (what was predicted, how, and the
    CV), postprocess.json (`make tune`'s rules), and for the fold models' own validation images oof/
    in the same layout with score.json; analysis/ holds the OOF error report."""
    root: Path

    @classmethod
    def of(cls, cfg, exp: str | None = None) -> "Preds":
        return cls(cfg.preds_dir(exp))

    @property
    def labels(self) -> Path:
        return self.root / "labels"

    def label(self, stem: str) -> Path:
        return self.labels / f"{stem}.png"

    def probs(self, stem: str) -> Path:
        return self.root / "probs" / f"{stem}.npz"

    @property
    def oof(self) -> "Preds":
        return Preds(self.root / "oof")

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def postprocess(self) -> Path:
        return self.root / "postprocess.json"

    @property
    def score(self) -> Path:
        return self.root / "score.json"

    @property
    def analysis(self) -> Path:
        return self.root / "analysis"

    def read_manifest(self) -> dict:
        """manifest.json, checked: a JSON object whose `files` lists the label files' stems (a
        truncated or edited manifest is refused, naming the file and the field)."""
        if not self.manifest.exists():
            raise DataError(f"{self.manifest}: not found: no complete prediction folder (run `make infer-tta`)")
        doc = read_json(self.manifest)
        files = doc.get("files")
        if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
            raise DataError(f"{self.manifest}: field 'files': expected the list of predicted image stems, got "
                            f"{type(files).__name__}; re-run `make infer-tta`")
        return doc

    def read_rules(self, classes) -> tuple[dict | None, dict]:
        """(postprocess.json's document, its rules by class index); (None, {}) when not tuned."""
        return read_rules(self.postprocess, classes) if self.postprocess.exists() else (None, {})

    def read_label(self, stem: str, size: tuple[int, int] | None = None) -> np.ndarray:
        """labels/<stem>.png; `size` (height, width): the image's, checked."""
        path = self.label(stem)
        if not path.exists():
            raise DataError(f"{path}: no prediction for image {stem!r}; run `make infer-tta` first")
        label = read_label_png(path)
        if size is not None and label.shape != tuple(size):
            raise DataError(f"{path}: prediction is {label.shape[1]}x{label.shape[0]}, image is {size[1]}x{size[0]}")
        return label

    def read_probs(self, stem: str) -> np.ndarray:
        path = self.probs(stem)
        if not path.exists():
            raise DataError(f"{path}: no saved probabilities; run `make infer-tta` again")
        with np.load(path) as z:
            return decode_probs(z["probs"])


class PredictionFolder:
    def __init__(self, final: Path, listed: str = "labels", expected: tuple[int, str] | None = None):
        """`listed`: the subfolder whose PNG stems the manifest lists, under "files"; `expected`:
        (bytes, what) the folder will take, refused up front when the disk has no room for it (the
        folder it replaces stays until the new one is complete, so that counts as taken)."""
        self.final, self.listed, self.expected = Path(final), listed, expected
        self.partial = self.final.with_name(f".{self.final.name}.partial-{os.getpid()}")

    def __enter__(self) -> Path:
        for stale in self.final.parent.glob(f".{self.final.name}.partial-*"):  # left by killed runs
            shutil.rmtree(stale, ignore_errors=True)
        if self.expected is not None:
            require_space(self.final.parent, *self.expected)
        self.partial.mkdir(parents=True)
        return self.partial

    def commit(self, manifest: dict) -> Path:
        files = sorted(p.stem for p in (self.partial / self.listed).glob("*.png"))
        write_json(self.partial / MANIFEST, {**manifest, "files": files})
        old = None
        if self.final.exists():
            old = self.final.with_name(f".{self.final.name}.old-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
            self.final.rename(old)
        self.partial.rename(self.final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.final

    def __exit__(self, exc_type, *rest) -> None:
        if exc_type is not None:
            shutil.rmtree(self.partial, ignore_errors=True)
