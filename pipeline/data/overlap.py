"""Overlap policies: how pixels claimed by annotations of several categories become one label."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from pipeline.config.choices import OVERLAP


def paint_order(classes: Sequence[int], areas: Sequence[float], policy: str,
                priority: Sequence[int] = ()) -> list[int]:
    """Indices of the annotations in the order they are painted (later ones win)."""
    n = len(classes)
    idx = list(range(n))
    if policy in ("order", "ignore"):
        return idx
    if policy == "area_desc":  # stable: equal areas keep annotation order
        return sorted(idx, key=lambda i: -areas[i])
    if policy == "priority":
        rank = {c: r for r, c in enumerate(priority)}  # 0 = highest priority, painted last
        low = len(priority)
        return sorted(idx, key=lambda i: (-rank.get(classes[i], low), -areas[i]))
    raise ValueError(f"unknown overlap policy {policy!r}; expected one of {OVERLAP}")


def compose_label_map(masks: Sequence[np.ndarray], classes: Sequence[int], policy: str,
                      shape: tuple[int, int], fill: int, ignore_index: int,
                      priority: Sequence[int] = (), dtype=np.uint8,
                      areas: Sequence[float] | None = None) -> np.ndarray:
    """Label map from binary masks, one per annotation, under an overlap policy (multilabel: a map
    of class bits, bit c set where class c is).
    `areas` (default: the masks' own) decides the order of area_desc, e.g. when masks are crops."""
    if policy == "multilabel":  # nothing painted over: one bit per class, 1 << fill where no class
        out = np.zeros(shape, dtype=np.uint8)
        for m, c in zip(masks, classes):
            out[m.astype(bool)] |= np.uint8(1 << c)
        out[out == 0] = ignore_index if fill == ignore_index else (1 << fill)
        return out
    out = np.full(shape, fill, dtype=dtype)
    if areas is None:
        areas = [float(m.sum()) for m in masks]
    for i in paint_order(classes, areas, policy, priority):
        out[masks[i].astype(bool)] = classes[i]
    if policy == "ignore" and len(masks) > 1:
        first = np.full(shape, -1, dtype=np.int16)
        multi = np.zeros(shape, dtype=bool)
        for m, c in zip(masks, classes):
            m = m.astype(bool)
            multi |= m & (first >= 0) & (first != c)
            first[m & (first < 0)] = c
        out[multi] = ignore_index
    return out
