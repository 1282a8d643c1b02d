"""The labelled pool of the folds (the train split, plus a holdout split when folds use one) in
folds.csv order, and each fold's train/validation indices into it. Training and inference share it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import Config
from pipeline.config.schema import REFIT
from pipeline.data.sources import Source, open_split, read_label_png
from pipeline.errors import DataError


class ConcatSource(Source):
    def __init__(self, sources: list[Source]):
        self.parts = [(s, i) for s in sources for i in range(len(s))]
        self.records = [s.records[i] for s, i in self.parts]
        self.num_classes, self.ignore_index = sources[0].num_classes, sources[0].ignore_index
        self.multilabel = sources[0].multilabel
        self.labelled, self.skipped = True, []

    def image(self, i):
        s, j = self.parts[i]
        return s.image(j)

    def mask(self, i):
        s, j = self.parts[i]
        return s.mask(j)

    def files(self, i):
        s, j = self.parts[i]
        return s.files(j)


def read_folds(cfg: Config) -> pd.DataFrame:
    if not cfg.folds_csv.exists():
        raise DataError(f"{cfg.folds_csv}: not found; run `make folds DATA={cfg.data.name}` first")
    return pd.read_csv(cfg.folds_csv, dtype={"image_id": str})


def labelled_pool(cfg: Config) -> tuple[Source, pd.DataFrame]:
    """The images named in folds.csv, in its order, and the table with an `index` column into the pool."""
    folds = read_folds(cfg)
    cache = cfg.out_dir / "cache"
    sources, rows = [], []
    for split in folds["split"].unique():
        src = open_split(cfg.data, split, cache_dir=cache)
        pos = {r.stem: k for k, r in enumerate(src.records)}
        part = folds[folds["split"] == split]
        missing = [s for s in part["image_id"] if s not in pos]
        if missing:
            raise DataError(f"{cfg.folds_csv}: image {missing[0]!r} (split {split}) is not in the data; "
                            "the folds are stale: re-run `make folds`")
        unfolded = sorted(set(pos) - set(part["image_id"]))
        if unfolded:
            raise DataError(f"{cfg.folds_csv}: {len(unfolded)} image(s) of split {split} are not in the folds "
                            f"(e.g. {unfolded[:3]}): the data changed after `make folds`; re-run it")
        sources.append(src)
        rows.append(part.assign(_src=len(sources) - 1, _pos=part["image_id"].map(pos)))
    pool = ConcatSource(sources)
    offsets = np.cumsum([0] + [len(s) for s in sources])
    table = pd.concat(rows, ignore_index=True)
    table["index"] = offsets[table["_src"].to_numpy()] + table["_pos"].to_numpy()
    return pool, table.drop(columns=["_src", "_pos"])


def fold_indices(table: pd.DataFrame, fold: int, where: str = "folds.csv") -> tuple[list[int], list[int]]:
    """(train, validation) pool indices of one fold; the refit (REFIT) trains on all, validates on none."""
    if fold == REFIT:
        return table["index"].tolist(), []
    known = sorted(int(k) for k in set(table["fold"]) if k >= 0)  # -1: trains in every fold
    if fold not in known:
        raise DataError(f"fold {fold} is not in {where} (folds: {known})")
    return (table.loc[table["fold"] != fold, "index"].tolist(), table.loc[table["fold"] == fold, "index"].tolist())


class PseudoLabelled(Source):
    """Unlabelled images (e.g. the test split) with the label maps `make pseudo` wrote for them."""

    def __init__(self, images: Source, masks_dir: Path):
        self.images, self.masks_dir = images, Path(masks_dir)
        self.records = [r for r in images.records if (self.masks_dir / f"{r.stem}.png").exists()]
        self._index = {r.stem: i for i, r in enumerate(images.records)}
        self.num_classes, self.ignore_index = images.num_classes, images.ignore_index
        self.labelled, self.skipped = True, []

    def image(self, i):
        return self.images.image(self._index[self.records[i].stem])

    def mask(self, i):
        return read_label_png(self.masks_dir / f"{self.records[i].stem}.png")

    def files(self, i):
        return [self.records[i].path, self.masks_dir / f"{self.records[i].stem}.png"]


def add_pseudo_labels(cfg: Config, pool: Source, train_idx: list[int]) -> tuple[Source, list[int], dict]:
    """The pool extended by the pseudo-labelled images of train.pseudo, which join the training
    indices only; and the pseudo-labels' manifest (round, ensemble, threshold)."""
    folder = cfg.pseudo_dir(cfg.train.pseudo)
    manifest_path = folder / "manifest.json"
    if not manifest_path.exists():
        raise DataError(f"{manifest_path}: not found: no pseudo-labels named {cfg.train.pseudo!r}; "
                        f"run `make pseudo EXP={cfg.train.pseudo}` first")
    manifest = json.loads(manifest_path.read_text())
    pseudo = PseudoLabelled(open_split(cfg.data, manifest["split"], labelled=False), folder / "masks")
    if len(pseudo) != manifest["images"]:
        raise DataError(f"{folder}: {len(pseudo)} pseudo-label maps for {manifest['images']} images in its manifest")
    both = ConcatSource([pool, pseudo])
    return both, train_idx + list(range(len(pool), len(pool) + len(pseudo))), manifest
