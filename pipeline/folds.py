"""k-fold splits: multi-label stratified on class presence, grouped so that related frames never
straddle folds, reproducible from a seed."""
from __future__ import annotations

import hashlib
import logging

import numpy as np
import pandas as pd
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

from pipeline.config import Config, StageArgs
from pipeline.data.groups import TRAIN_ONLY, explicit_folds, group_keys, split_tails, validation_kind
from pipeline.data.sources import open_split
from pipeline.errors import DataError
from pipeline.io import write_json, write_text

log = logging.getLogger(__name__)


def assign_folds(presence: np.ndarray, k: int, seed: int, groups: list[str] | None = None) -> np.ndarray:
    """Fold index per image. Stratified on the presence matrix (images x classes); with groups,
    whole groups are stratified on their pooled presence, so a group lands in exactly one fold."""
    presence = np.asarray(presence, dtype=int)
    n = len(presence)
    if groups is None:
        if n < k:
            raise DataError(f"folds.k={k} but only {n} images")
        units, unit_of = presence, np.arange(n)
    else:
        names, unit_of = np.unique(np.asarray(groups), return_inverse=True)
        if len(names) < k:
            raise DataError(f"folds.k={k} but only {len(names)} groups ({', '.join(names[:10])}); "
                            "lower k, use a finer group_regex, or use the competition's holdout")
        units = np.zeros((len(names), presence.shape[1]), dtype=int)
        np.add.at(units, unit_of, presence)
        units = (units > 0).astype(int)
    fold_of_unit = np.empty(len(units), dtype=int)
    splitter = MultilabelStratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for f, (_, val) in enumerate(splitter.split(np.zeros(len(units)), units)):
        fold_of_unit[val] = f
    return fold_of_unit[unit_of]


def balance(presence: np.ndarray, folds: np.ndarray) -> pd.DataFrame:
    """Per fold: share of images containing each class, and its largest relative deviation from
    the overall share."""
    presence = np.asarray(presence, dtype=float)
    overall = presence.mean(0)
    rows = []
    for f in np.unique(folds):
        share = presence[folds == f].mean(0)
        present = overall > 0
        dev = np.abs(share[present] - overall[present]) / overall[present]
        rows.append({"fold": int(f), "images": int((folds == f).sum()),
                     "max_rel_deviation": float(dev.max()) if dev.size else 0.0,
                     **{f"share_{c}": float(v) for c, v in enumerate(share)}})
    return pd.DataFrame(rows)


def run(cfg: Config, args: StageArgs = StageArgs()) -> pd.DataFrame:
    """Folds over the pooled labelled splits (folds.splits), grouped and stratified; optionally one
    more fold made of a competition-given holdout split (folds.holdout)."""
    stems, splits, parts = [], [], []
    for split in cfg.folds.splits:
        src = open_split(cfg.data, split)
        stems += [r.stem for r in src.records]
        splits += [split] * len(src)
        parts.append(src.presence())
    presence = np.concatenate(parts)
    fc = cfg.folds
    groups = group_keys(stems, fc.group_regex) if fc.group_regex else None
    if groups is not None and fc.tail:
        groups = split_tails(stems, groups, fc.order_regex, fc.tail)
    if fc.assign:
        folds = explicit_folds(groups, fc.assign)
    else:
        folds = assign_folds(presence, fc.k, fc.seed, groups)
    df = pd.DataFrame({"image_id": stems, "fold": folds, "split": splits})
    if groups is not None:
        df["group"] = groups
        by_fold = df.groupby("fold")["group"].unique().to_dict()
        df["kind"] = [validation_kind(g, f, by_fold) for g, f in zip(groups, folds)]
    if cfg.folds.holdout:
        hold = open_split(cfg.data, cfg.folds.holdout)
        extra = pd.DataFrame({"image_id": [r.stem for r in hold.records], "fold": cfg.folds.k,
                              "split": cfg.folds.holdout})
        if groups is not None:
            extra["group"] = group_keys(extra["image_id"].tolist(), cfg.folds.group_regex)
            shared = sorted(set(extra["group"]) & set(groups))
            if shared:
                log.warning("folds: the %s split shares group(s) %s with the folded split(s): validating on it measures "
                            "near-duplicates of training images, not the leaderboard. Pool the splits "
                            "(folds.splits: [train, %s]) and let the groups make the folds instead.",
                            cfg.folds.holdout, shared, cfg.folds.holdout)
        df = pd.concat([df, extra], ignore_index=True)
        presence = np.concatenate([presence, hold.presence()])
    if df["image_id"].duplicated().any():
        dup = df.loc[df["image_id"].duplicated(), "image_id"].iloc[0]
        raise DataError(f"image id {dup!r} appears twice across the folded splits")
    scored = (df["fold"] != TRAIN_ONLY).to_numpy()
    bal = balance(presence[scored], df["fold"].to_numpy()[scored])
    out = cfg.out_dir
    write_text(cfg.folds_csv, df.to_csv(index=False))
    write_text(out / "folds_balance.csv", bal.to_csv(index=False))
    listing = "\n".join(f"{s}/{i}" for s, i in zip(df["split"], df["image_id"])).encode()
    write_json(out / "folds_meta.json", {"k": fc.k, "seed": fc.seed, "group_regex": fc.group_regex,
                                         "holdout": fc.holdout, "order_regex": fc.order_regex, "tail": dict(fc.tail),
                                         "assign": dict(fc.assign), "images": len(df),
                                         "images_sha1": hashlib.sha1(listing).hexdigest()})
    if "kind" in df:
        log.info("folds: validation images by kind:\n%s", df.groupby(["fold", "kind", "group"]).size().to_string())
    log.info("folds: %d images in %d folds -> %s\n%s", len(df), int((df["fold"].unique() >= 0).sum()), cfg.folds_csv,
             bal[["fold", "images", "max_rel_deviation"]].to_string(index=False))
    return df
