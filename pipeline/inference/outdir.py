"""A prediction folder is complete or absent: it is written under a temporary name and switched in
by rename only when every file and the manifest are there; the manifest lists its label files."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from pipeline.errors import DataError
from pipeline.io import read_json, write_json

MANIFEST = "manifest.json"


def read_manifest(folder: Path) -> dict:
    """A prediction folder's manifest.json, checked: a JSON object whose `files` lists the label
    files' stems (a truncated or edited manifest is refused, naming the file and the field)."""
    path = Path(folder) / MANIFEST
    if not path.exists():
        raise DataError(f"{path}: not found: no complete prediction folder (run `make infer-tta`)")
    doc = read_json(path)
    files = doc.get("files")
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise DataError(f"{path}: field 'files': expected the list of predicted image stems, got "
                        f"{type(files).__name__}; re-run `make infer-tta`")
    return doc


class PredictionFolder:
    def __init__(self, final: Path, listed: str = "labels"):
        """`listed`: the subfolder whose PNG stems the manifest lists, under "files"."""
        self.final, self.listed = Path(final), listed
        self.partial = self.final.with_name(f".{self.final.name}.partial-{os.getpid()}")

    def __enter__(self) -> Path:
        for stale in self.final.parent.glob(f".{self.final.name}.partial-*"):  # left by killed runs
            shutil.rmtree(stale, ignore_errors=True)
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
