"""Post-processing of label maps, tuned on out-of-fold predictions: per class, connected components
smaller than a minimum area become background, and a class whose whole area in an image is below
a gate is dropped from that image; for the multilabel task also each class's probability
threshold; for the single-label task (when the probabilities are kept) a bias added to each class's
log-probability before the argmax. The biases are one parameter, alpha * log(f_c / median f) with
f_c the class's pixel share (logit adjustment: a loss weighted by median-frequency balancing, 1/f_c,
trains the model to over-predict rare classes by about log of that weight; the metric pays for each
false pixel). Eleven free biases fit the tuning folds and lost on a held-out drive on CamVid; the
one alpha gained on every held-out fold. Pure functions on label maps and probabilities; the
search is a small grid."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pipeline.errors import DataError
from pipeline.io import read_json
from pipeline.pixels import threshold_bits

AREA_GRID = (0.0, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02)  # shares of the image's pixels
THRESHOLD_GRID = (0.5, 0.3, 0.4, 0.6, 0.7)  # multilabel: probability thresholds (0.5 = untuned)
ALPHA_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.2, 1.5, -0.2, -0.5)  # single-label: bias = alpha * log prior
BIAS_LIMIT = 10.0


@dataclass(frozen=True)
class ClassRule:
    min_area: float = 0.0  # share of the image: smaller components become background
    gate: float = 0.0  # share of the image: below this total area the class is dropped
    threshold: float = 0.5  # multilabel: the class's probability threshold
    bias: float = 0.0  # single-label: added to the class's log-probability before the argmax


def bits_from_probs(probs: np.ndarray, rules: dict[int, ClassRule]) -> np.ndarray:
    """Multilabel: the map of class bits of (C, H, W) probabilities at each class's threshold."""
    return threshold_bits(probs, [rules.get(c, ClassRule()).threshold for c in range(len(probs))])


def needs_probs(rules: dict[int, ClassRule], multilabel: bool) -> bool:
    """Whether the rules act on the probabilities (thresholds, biases), not only on label maps."""
    return bool(rules) and (multilabel or any(r.bias for r in rules.values()))


def biased_argmax(probs: np.ndarray, rules: dict[int, ClassRule], rows: int = 256) -> np.ndarray:
    """Single-label: the label map (uint8) of argmax_c log p_c + bias_c for (C, H, W) probabilities,
    a band of rows at a time (a whole large image's temporaries would be C x 4 bytes per pixel)."""
    weight = np.exp([rules.get(c, ClassRule()).bias for c in range(len(probs))]).astype(np.float32)[:, None, None]
    label = np.empty(probs.shape[1:], np.uint8)
    for y in range(0, probs.shape[1], rows):
        label[y:y + rows] = (probs[:, y:y + rows] * weight).argmax(0)  # p * e^b: the same order as log p + b
    return label


def decide(probs: np.ndarray, rules: dict[int, ClassRule], multilabel: bool) -> np.ndarray:
    """The label map of (C, H, W) probabilities under the rules' thresholds (multilabel: class bits)
    or biases (single-label)."""
    return bits_from_probs(probs, rules) if multilabel else biased_argmax(probs, rules)


def apply(label: np.ndarray, rules: dict[int, ClassRule], background: int = 0, multilabel: bool = False) -> np.ndarray:
    """The label map with each class's rule applied (pixels removed become `background`; in a
    multilabel map of class bits, they lose the class's bit)."""
    out = label.copy()
    n = label.size
    for c, rule in rules.items():
        mask = ((label >> c) & 1).astype(bool) if multilabel else label == c
        if not mask.any() or (rule.min_area <= 0 and rule.gate <= 0):
            continue
        if rule.min_area > 0:
            count, comp, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
            small = np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] < rule.min_area * n) + 1
            if small.size:
                mask_small = np.isin(comp, small)
                _remove(out, mask_small, c, background, multilabel)
                mask &= ~mask_small
        if rule.gate > 0 and mask.sum() < rule.gate * n:
            _remove(out, mask, c, background, multilabel)
    return out


def _remove(out: np.ndarray, where: np.ndarray, c: int, background: int, multilabel: bool) -> None:
    if multilabel:
        out[where] &= np.uint8(~(1 << c) & 0xFF)
    else:
        out[where] = background


def load_rules(doc: dict, class_names) -> dict[int, ClassRule]:
    """The rules of a postprocess.json document (already checked by `rules_problems`), by class index."""
    return {list(class_names).index(name): ClassRule(**rule) for name, rule in doc["rules"].items()}


def read_rules(path: Path, class_names) -> tuple[dict, dict[int, ClassRule]]:
    """postprocess.json through its checks: (the document, the rules by class index)."""
    doc = read_json(path)
    problems = rules_problems(doc, class_names, str(path))
    if problems:
        raise DataError(problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    return doc, load_rules(doc, class_names)


def rules_problems(doc: dict, class_names, where: str) -> list[str]:
    """Every problem of a postprocess.json document (people edit these by hand): `rules` maps class
    names to {min_area, gate, threshold}; areas are shares of the image (0..1), not pixel counts;
    thresholds lie in (0, 1); `oof_after` is the tuned OOF score."""
    rules = doc.get("rules")
    if not isinstance(rules, dict):
        return [f"{where}: field 'rules': expected a mapping of class name -> rule, got {rules!r}"]
    problems = []
    fields = ClassRule.__dataclass_fields__
    for name, rule in rules.items():
        at = f"{where}: rules.{name}"
        if name not in class_names:
            problems.append(f"{at}: {name!r} is not a class ({', '.join(class_names)})")
        if not isinstance(rule, dict):
            problems.append(f"{at}: expected a mapping with {sorted(fields)}, got {rule!r}")
            continue
        for key, value in rule.items():
            if key not in fields:
                problems.append(f"{at}.{key}: unknown field (known: {sorted(fields)})")
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                problems.append(f"{at}.{key}: expected a number, got {value!r}")
            elif key in ("min_area", "gate") and not 0 <= value <= 1:
                hint = " (a pixel count? it is a share of the image's pixels)" if value > 1 else ""
                problems.append(f"{at}.{key}: {value!r} is outside 0..1{hint}")
            elif key == "threshold" and not 0 < value < 1:
                problems.append(f"{at}.{key}: {value!r} is outside (0, 1)")
            elif key == "bias" and not -BIAS_LIMIT <= value <= BIAS_LIMIT:
                problems.append(f"{at}.{key}: {value!r} is outside -{BIAS_LIMIT:g}..{BIAS_LIMIT:g} (a log-probability shift)")
    score = doc.get("oof_after")
    if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))):
        problems.append(f"{where}: field 'oof_after': expected a number, got {score!r}")
    return problems


def prior_rules(alpha: float, prior: np.ndarray, rules: dict[int, ClassRule] | None = None) -> dict[int, ClassRule]:
    """`rules` (or none) with each class's bias alpha * prior[c]."""
    rules = rules or {}
    return {c: dataclasses.replace(rules.get(c, ClassRule()), bias=float(alpha * prior[c])) for c in range(len(prior))}


def evaluate(preds, truths, rules: dict[int, ClassRule], metric_factory, background: int | None = 0,
             multilabel: bool = False, probs: bool | None = None) -> float:
    """The metric of `preds` under `rules`: label maps, or with `probs` (always for multilabel)
    (C, H, W) probabilities."""
    from_probs = multilabel if probs is None else probs
    m = metric_factory()
    for p, t in zip(preds, truths):
        label = decide(p, rules, multilabel) if from_probs else p
        m.update(apply(label, rules, background, multilabel), t)
    return m.compute()["score"]


def tune(preds: list[np.ndarray], truths: list[np.ndarray], classes: list[int], metric_factory,
         background: int | None = 0, multilabel: bool = False, probs: bool | None = None,
         prior: np.ndarray | None = None, groups=None, shrink: float = 1.0) -> tuple[dict[int, ClassRule], float, float]:
    """Coordinate search over the grids, keeping a value only when the metric improves: with
    single-label probabilities (`probs`) and a `prior` (data.stats.log_prior) first the biases' alpha, for
    the mean of the metric over `groups` (each image's fold; default one group); then class by
    class the threshold (multilabel), min area and gate (only with a `background` to give removed
    pixels to), for the metric of all images; the chosen alpha is multiplied by `shrink` before the
    area rules are searched. Returns (rules, before, after), scored on all images.

    Alpha moves every pixel of every image, so each fold (a drive, a domain) counts once: on a
    CamVid simulation the pooled score of two folds picked alpha 1.5 (one fold up, the other down),
    the mean of the folds 0.7, and the pseudo-test scored 0.479 with the first, 0.552 with the
    second (0.531 with none)."""
    from_probs = multilabel if probs is None else probs

    def score(rules):
        return evaluate(preds, truths, rules, metric_factory, background, multilabel, from_probs)

    rules = {c: ClassRule() for c in classes}
    before = best = score({})
    if from_probs and not multilabel and prior is not None:
        members = [np.flatnonzero(np.asarray(groups) == g) for g in np.unique(groups)] if groups is not None \
            else [np.arange(len(preds))]

        def by_group(rules):
            return float(np.mean([evaluate([preds[i] for i in m], [truths[i] for i in m], rules, metric_factory,
                                           background, multilabel, True) for m in members]))

        top, chosen = by_group({}), 0.0
        for alpha in ALPHA_GRID[1:]:
            s = by_group(prior_rules(alpha, prior, rules))
            if s > top + 1e-12:
                top, chosen = s, alpha
        if chosen:
            rules = prior_rules(chosen * shrink, prior, rules)
        best = score(rules)
    grids = ([("threshold", THRESHOLD_GRID)] if multilabel else []) + (
        [("min_area", AREA_GRID), ("gate", AREA_GRID)] if background is not None else [])
    for c in [c for c in classes if c != background]:  # removed pixels go to the background: no rule of its own
        for field, grid in grids:
            for value in grid[1:]:
                trial = {**rules, c: dataclasses.replace(rules.get(c, ClassRule()), **{field: value})}
                s = score(trial)
                if s > best + 1e-12:
                    best, rules = s, trial
    return {c: r for c, r in rules.items() if r != ClassRule()}, before, best
