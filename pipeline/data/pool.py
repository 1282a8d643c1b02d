"""The labelled pool of the folds (the train split, plus a holdout split when folds use one) in
folds.csv order, and each fold's train/validation indices into it. Training and inference share it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import Config
from pipeline.config.schema import REFIT
from pipeline.data.sources import Source, open_split, read_label_png
from pipeline.errors import DataError
from pipeline.io import read_json


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


FOLDS_COLUMNS = ("image_id", "fold", "split")


def folds_problems(path: Path, splits) -> tuple[pd.DataFrame | None, list[str]]:
    """folds.csv, read as text and checked cell by cell (a file people edit by hand, in Excel too):
    (the table, or None when unusable; every problem, naming the line and the column). Folds are
    integers, -1 (trains in every fold) or 0..k-1 with no gap; every image appears once; splits are
    the labelled splits `splits`."""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        return None, [f"{path}: not a readable CSV ({str(e).splitlines()[0]})"]
    if len(df.columns) == 1 and ";" in df.columns[0]:
        return None, [f"{path}: columns separated by ';' (a spreadsheet's export): save it with ',' separators"]
    missing = [c for c in FOLDS_COLUMNS if c not in df.columns]
    if missing:
        return None, [f"{path}: missing column(s) {missing} (has {list(df.columns)}); re-run `make folds`"]
    problems = []
    folds = []
    for k, (image, fold, split) in enumerate(zip(df["image_id"], df["fold"], df["split"])):
        line = k + 2  # the header is line 1
        f = fold.strip()
        if not f.lstrip("-").isdigit() or int(f) < -1:
            problems.append(f"{path}: line {line}, column fold: {fold!r} is not a fold (an integer >= -1)")
            folds.append(None)
        else:
            folds.append(int(f))
        if not image.strip():
            problems.append(f"{path}: line {line}, column image_id: empty")
        if split not in splits:
            problems.append(f"{path}: line {line}, column split: {split!r} is not a labelled split of this data {sorted(splits)}")
    dup = df["image_id"][df["image_id"].duplicated()]
    for image in dup.unique()[:5]:
        lines = [str(k + 2) for k in (df.index[df["image_id"] == image])]
        problems.append(f"{path}: image {image!r} is listed {len(lines)} times (lines {', '.join(lines)})")
    ids = sorted({f for f in folds if f is not None and f >= 0})
    if not ids and not problems:
        problems.append(f"{path}: no image is in a validation fold (every fold is -1)")
    elif ids and ids != list(range(len(ids))):
        problems.append(f"{path}: folds {ids}: expected 0..{len(ids) - 1} with no gap (a fold without images trains "
                        "a model with nothing to validate)")
    if problems:
        return None, problems
    df["fold"] = [int(f) for f in folds]
    return df, []


def folded_splits(cfg: Config) -> set[str]:
    """The labelled splits folds.csv may name: the pooled ones and the holdout."""
    return set(cfg.folds.splits) | ({cfg.folds.holdout} if cfg.folds.holdout else set())


def read_folds(cfg: Config) -> pd.DataFrame:
    if not cfg.folds_csv.exists():
        raise DataError(f"{cfg.folds_csv}: not found; run `make folds DATA={cfg.data.name}` first")
    df, problems = folds_problems(cfg.folds_csv, folded_splits(cfg))
    if problems:
        more = f" (and {len(problems) - 1} more problem(s): `make check` lists them)" if len(problems) > 1 else ""
        raise DataError(problems[0] + more)
    return df


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
    manifest = read_json(manifest_path)
    for key, kind in (("split", str), ("images", int), ("round", int), ("threshold", float)):
        value = manifest.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else kind):
            raise DataError(f"{manifest_path}: field {key!r}: expected {kind.__name__}, got {value!r}; "
                            f"re-run `make pseudo EXP={cfg.train.pseudo}`")
    pseudo = PseudoLabelled(open_split(cfg.data, manifest["split"], labelled=False), folder / "masks")
    if len(pseudo) != manifest["images"]:
        raise DataError(f"{folder}: {len(pseudo)} pseudo-label maps for {manifest['images']} images in its manifest")
    both = ConcatSource([pool, pseudo])
    return both, train_idx + list(range(len(pool), len(pool) + len(pseudo))), manifest
