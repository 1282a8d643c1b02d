import numpy as np
import pandas as pd
import pytest

from pipeline.data.coco import DataError
from pipeline.data.groups import group_keys
from pipeline.folds import assign_folds, balance


def presence(n=120, c=6, seed=0):
    rng = np.random.default_rng(seed)
    p = rng.random((n, c)) < np.linspace(0.05, 0.8, c)
    p[:, 0] = True
    return p


def test_reproducible_and_complete():
    p = presence()
    a, b = assign_folds(p, 5, 7), assign_folds(p, 5, 7)
    assert np.array_equal(a, b)
    assert sorted(set(a)) == [0, 1, 2, 3, 4]
    assert not np.array_equal(a, assign_folds(p, 5, 8))


def test_stratified_beats_random_balance():
    p = presence(200)
    strat = balance(p, assign_folds(p, 5, 0))["max_rel_deviation"].max()
    rng = np.random.default_rng(0)
    random = np.mean([balance(p, rng.integers(0, 5, len(p)))["max_rel_deviation"].max() for _ in range(20)])
    assert strat < random / 2


def test_groups_never_straddle_folds():
    stems = [f"seq{s}_{f:04d}" for s in range(12) for f in range(10)]
    groups = group_keys(stems, r"^(seq\d+)_")
    folds = assign_folds(presence(len(stems)), 4, 0, groups)
    df = pd.DataFrame({"g": groups, "f": folds})
    assert (df.groupby("g")["f"].nunique() == 1).all()
    assert df["f"].nunique() == 4


def test_too_few_groups_is_a_clear_error():
    stems = [f"{s}_{i}" for s in ("0001TP", "0006R0", "0016E5", "Seq05VD") for i in range(5)]
    with pytest.raises(DataError, match="folds.k=5 but only 4 groups"):
        assign_folds(presence(20), 5, 0, group_keys(stems, r"^([^_]+)_"))


def test_group_regex_must_match():
    with pytest.raises(DataError, match="does not match image 'oops'"):
        group_keys(["a_1", "oops"], r"^(\w)_")
