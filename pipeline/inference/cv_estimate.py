"""The CV figure meant to predict the leaderboard: out-of-fold images weighted so that each kind of
image counts as much as that kind does in the test set, with a block-bootstrap interval.

A test image is `later_frames` when its group (drive, patient) has training images, `new_group`
when none of its group trains (known from the file names alone). Out-of-fold images carry the same
kinds (folds.csv `kind`, see data/groups.py). Pooled OOF weights the kinds as the folds happen to
hold them (CamVid: 163 new-drive vs 152 later frames, where the test has 171 vs 62); the
test-matched estimate gives each OOF image of kind k the weight test_share(k) / oof_images(k), sums
the metric's additive statistics with those weights, and scores the sum. The interval resamples
blocks of consecutive frames within each kind (neighbouring frames are not independent evidence)."""
from __future__ import annotations

from collections import Counter

import numpy as np

from pipeline.data.groups import LATER_FRAMES, NEW_GROUP, base_group

BLOCK_FRAMES = 10  # consecutive images of one group resampled together


def kinds_of_test(test_groups: list[str], training_groups) -> list[str]:
    trained = {base_group(g) for g in training_groups}
    return [LATER_FRAMES if base_group(g) in trained else NEW_GROUP for g in test_groups]


def blocks_of(stems: list[str], groups: list[str], size: int = BLOCK_FRAMES) -> list[str]:
    """A block id per image: runs of `size` consecutive images (by stem) within a group."""
    order = sorted(range(len(stems)), key=lambda i: (groups[i], stems[i]))
    out, seen = [""] * len(stems), Counter()
    for i in order:
        out[i] = f"{groups[i]}#{seen[groups[i]] // size}"
        seen[groups[i]] += 1
    return out


def kind_weights(oof_kinds: list[str], test_kinds_: list[str]) -> tuple[np.ndarray, dict] | tuple[None, str]:
    """(weight per OOF image, summary per kind), or (None, why not) when a kind the test set holds
    has no OOF image."""
    n_test, test_n, oof_n = len(test_kinds_), Counter(test_kinds_), Counter(oof_kinds)
    missing = [k for k in test_n if oof_n[k] == 0]
    if missing:
        return None, f"the test set holds {', '.join(missing)} images but no fold validates that kind"
    w = np.array([test_n[k] / n_test / oof_n[k] for k in oof_kinds], dtype=np.float64)
    summary = {k: {"oof_images": oof_n[k], "test_images": test_n[k], "test_share": round(test_n[k] / n_test, 4)}
               for k in sorted(set(oof_n) | set(test_n))}
    return w * len(oof_kinds), summary  # mean weight 1: counts keep the scale of the OOF set


def weighted_score(states: dict[str, np.ndarray], weights: np.ndarray, make_meter) -> dict:
    """The metric of the images' stacked states (image x ...) summed with `weights`."""
    summed = {k: np.tensordot(weights, v, axes=1) for k, v in states.items()}
    return make_meter().load_state(summed).compute()


def matched_estimate(image_states: list[dict], oof_kinds: list[str], blocks: list[str], test_kinds_: list[str],
                    make_meter, class_names: list[str], n_boot: int = 1000, seed: int = 0) -> dict:
    """{"score", "low", "high" (5th/95th percentile of the block bootstrap), "per_class", "kinds"},
    or {"score": None, "why": ...} when the folds cannot stand for the test set."""
    weights, summary = kind_weights(oof_kinds, test_kinds_)
    if weights is None:
        return {"score": None, "why": summary}
    states = {k: np.stack([s[k] for s in image_states]) for k in image_states[0]}
    point = weighted_score(states, weights, make_meter)
    rng = np.random.default_rng(seed)
    kinds, blocks = np.asarray(oof_kinds), np.asarray(blocks)
    members = {k: [np.flatnonzero((kinds == k) & (blocks == b)) for b in np.unique(blocks[kinds == k])]
               for k in np.unique(kinds)}
    boot = []
    for _ in range(n_boot):
        counts = np.zeros(len(kinds))
        for groups in members.values():
            for j in rng.integers(0, len(groups), len(groups)):
                counts[groups[j]] += 1
        boot.append(weighted_score(states, weights * counts, make_meter)["score"])
    low, high = np.nanpercentile(boot, [5, 95])
    per_class = {c: (None if np.isnan(v) else round(float(v), 4)) for c, v in zip(class_names, point["per_class"])}
    return {"score": float(point["score"]), "low": float(low), "high": float(high), "per_class": per_class,
            "kinds": summary, "bootstrap": {"resamples": n_boot, "block_frames": BLOCK_FRAMES}}
