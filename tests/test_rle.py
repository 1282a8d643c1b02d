import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pycocotools import mask as mask_utils

from pipeline.competition import rle

masks = st.tuples(st.integers(1, 23), st.integers(1, 23)).flatmap(
    lambda hw: arrays(np.bool_, hw, elements=st.booleans()))


@settings(max_examples=200, deadline=None)
@given(masks, st.sampled_from(["column", "row"]))
def test_roundtrip(mask, order):
    assert np.array_equal(rle.decode(rle.encode(mask, order), mask.shape, order), mask)


@pytest.mark.parametrize("order", ["column", "row"])
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (360, 480)])
def test_empty_and_full(shape, order):
    assert rle.encode(np.zeros(shape, bool), order) == ""
    n = shape[0] * shape[1]
    assert rle.encode(np.ones(shape, bool), order) == f"1 {n}"
    assert rle.decode("", shape, order).sum() == 0


def test_column_major_numbering():
    m = np.zeros((3, 2), bool)
    m[1, 0] = m[2, 0] = m[0, 1] = True  # pixels 2, 3 (column 1) and 4 (column 2)
    assert rle.encode(m, "column") == "2 3"
    assert rle.encode(m, "row") == "2 2 5 1"  # row-major: (0,1)=2, (1,0)=3, (2,0)=5


@settings(max_examples=100, deadline=None)
@given(masks)
def test_column_major_matches_pycocotools(mask):
    """pycocotools' uncompressed counts alternate 0-runs and 1-runs in column-major order."""
    coco = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    decoded = mask_utils.decode(coco).astype(bool)
    assert np.array_equal(decoded, mask)
    text = rle.encode(mask, "column")
    values = [int(v) for v in text.split()] if text else []
    ours = np.zeros(mask.size, bool)
    for s, n in zip(values[0::2], values[1::2]):
        ours[s - 1:s - 1 + n] = True
    assert np.array_equal(ours, np.asarray(decoded).ravel(order="F"))
    assert mask_utils.area(coco) == sum(values[1::2])


@pytest.mark.parametrize("text,reason", [
    ("1 2 3", "odd number"), ("1 x", "non-integer"), ("0 3", "start 0"), ("3 0", "length 0"),
    ("5 2 3 1", "not increasing"), ("1 5 3 2", "overlaps"), ("10 5", "passes the last pixel"),
    ("-1 2", "< 1"),
])
def test_parse_rejects(text, reason):
    with pytest.raises(rle.RLEError, match=reason.split()[0] if reason != "< 1" else "< 1"):
        rle.parse(text, 12)


def test_adjacent_runs_allowed():
    starts, lengths = rle.parse("1 2 3 2", 12)
    assert starts.tolist() == [1, 3] and lengths.tolist() == [2, 2]
