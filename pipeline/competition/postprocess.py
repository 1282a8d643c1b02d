"""Post-processing of label maps, tuned on out-of-fold predictions: per class, connected components
smaller than a minimum area become background, and a class whose whole area in an image is below
a gate is dropped from that image. Pure functions on label maps; the search is a small grid."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

AREA_GRID = (0.0, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02)  # shares of the image's pixels


@dataclass(frozen=True)
class ClassRule:
    min_area: float = 0.0  # share of the image: smaller components become background
    gate: float = 0.0  # share of the image: below this total area the class is dropped


def apply(label: np.ndarray, rules: dict[int, ClassRule], background: int = 0) -> np.ndarray:
    """The label map with each class's rule applied (pixels removed become `background`)."""
    out = label.copy()
    n = label.size
    for c, rule in rules.items():
        mask = label == c
        if not mask.any() or (rule.min_area <= 0 and rule.gate <= 0):
            continue
        if rule.min_area > 0:
            count, comp, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
            small = np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] < rule.min_area * n) + 1
            if small.size:
                mask_small = np.isin(comp, small)
                out[mask_small] = background
                mask &= ~mask_small
        if rule.gate > 0 and mask.sum() < rule.gate * n:
            out[mask] = background
    return out


def load_rules(doc: dict, class_names) -> dict[int, ClassRule]:
    """The rules of a postprocess.json, keyed by class index."""
    return {list(class_names).index(name): ClassRule(**rule) for name, rule in doc["rules"].items()}


def evaluate(preds, truths, rules: dict[int, ClassRule], metric_factory, background: int = 0) -> float:
    m = metric_factory()
    for p, t in zip(preds, truths):
        m.update(apply(p, rules, background), t)
    return m.compute()["score"]


def tune(preds: list[np.ndarray], truths: list[np.ndarray], classes: list[int], metric_factory,
         background: int = 0) -> tuple[dict[int, ClassRule], float, float]:
    """Coordinate search over the grid, class by class (min area, then gate), keeping a value only
    when the metric improves. Returns (rules, score before, score after)."""
    def score(rules):
        return evaluate(preds, truths, rules, metric_factory, background)

    rules = {c: ClassRule() for c in classes if c != background}
    before = best = score({})
    for c in list(rules):
        for field in ("min_area", "gate"):
            for value in AREA_GRID[1:]:
                trial = {**rules, c: ClassRule(**{**rules[c].__dict__, field: value})}
                s = score(trial)
                if s > best + 1e-12:
                    best, rules = s, trial
    return {c: r for c, r in rules.items() if r != ClassRule()}, before, best
