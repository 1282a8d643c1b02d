"""Groups of related images (frames of one video sequence, slides of one patient), found in the
file names, and the fold layouts built from them. Pure functions: folds.py and the CV estimate use them."""
from __future__ import annotations

import re

import numpy as np

from pipeline.errors import DataError

TRAIN_ONLY = -1  # folds.csv fold of images that train in every fold and are never validated
TAIL = "@tail"
# how an image relates to the images its models trained on (folds.csv `kind`; test images too)
NEW_GROUP, LATER_FRAMES, TRAIN_ONLY_KIND = "new_group", "later_frames", "train_only"


def group_keys(stems: list[str], pattern: str) -> list[str]:
    """Group of each image: the first capture group of `pattern` (or the whole match) in its stem."""
    rx = re.compile(pattern)
    out = []
    for s in stems:
        m = rx.search(s)
        if m is None:
            raise DataError(f"folds.group_regex {pattern!r} does not match image {s!r}")
        out.append(m.group(1) if rx.groups else m.group(0))
    return out


def split_tails(stems: list[str], groups: list[str], order_regex: str, tail: dict) -> list[str]:
    """Groups with the latest `tail[g]` share of group g's frames (ordered by the integer that
    `order_regex` captures) renamed "<g>@tail": a validation block of later frames of a drive whose
    earlier frames train, as a test set that continues the training drives is."""
    rx, out = re.compile(order_regex), list(groups)
    known = set(groups)
    for g, share in tail.items():
        if g not in known:
            raise DataError(f"folds.tail: group {g!r} is not a group of the folded images ({', '.join(sorted(known)[:10])})")
        members = [i for i, x in enumerate(groups) if x == g]
        frames = []
        for i in members:
            m = rx.search(stems[i])
            if m is None or not (m.group(1) if rx.groups else m.group(0)).isdigit():
                raise DataError(f"folds.order_regex {order_regex!r} finds no frame number in image {stems[i]!r}")
            frames.append((int(m.group(1) if rx.groups else m.group(0)), stems[i], i))
        frames.sort()
        n_tail = max(1, round(share * len(frames)))
        for _, _, i in frames[len(frames) - n_tail:]:
            out[i] = g + TAIL
    return out


def explicit_folds(groups: list[str], assign: dict) -> np.ndarray:
    """folds.assign: the fold of each listed group; every other group trains in all folds."""
    unknown = sorted(set(assign) - set(groups))
    if unknown:
        raise DataError(f"folds.assign: group(s) {unknown} are not groups of the folded images "
                        f"({', '.join(sorted(set(groups))[:10])})")
    return np.array([assign.get(g, TRAIN_ONLY) for g in groups], dtype=int)


def validation_kind(group: str, fold: int, groups_by_fold: dict) -> str:
    """How a validation image relates to its fold's training images: `later_frames` when frames of its
    own drive train (a tail block), `new_group` when no frame of its group trains."""
    if fold == TRAIN_ONLY:
        return TRAIN_ONLY_KIND
    trains = any(base_group(group) == base_group(g) for f, gs in groups_by_fold.items() if f != fold for g in gs)
    return LATER_FRAMES if trains else NEW_GROUP


def base_group(group: str) -> str:
    """The drive a group belongs to (\"0016E5@tail\" -> \"0016E5\")."""
    return group.removesuffix(TAIL)
