"""Run-length encoding of binary masks, Kaggle style: 1-indexed `start length` pairs over the
pixels in column-major (top-to-bottom, then left-to-right) or row-major order. Vectorised."""
from __future__ import annotations

import re
import warnings

import numpy as np

from pipeline.errors import RLEError

ORDERS = {"column": "F", "row": "C"}


_INTEGER = re.compile(r"-?[0-9]+")
_INTEGERS = re.compile(r"\s*-?[0-9]+(\s+-?[0-9]+)*\s*")


def encode(mask: np.ndarray, order: str = "column") -> str:
    flat = np.asarray(mask, dtype=bool).ravel(order=ORDERS[order])
    padded = np.zeros(flat.size + 2, dtype=np.int8)
    padded[1:-1] = flat
    edges = np.flatnonzero(padded[1:] != padded[:-1]) + 1  # 1-indexed run starts and ends+1
    if edges.size == 0:
        return ""
    edges[1::2] -= edges[0::2]  # ends -> lengths
    return " ".join(map(str, edges.tolist()))


def parse(text: str, n_pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """Starts and lengths of an RLE string, checked: pairs, positive, sorted, non-overlapping, inside."""
    if text is None or (isinstance(text, float) and np.isnan(text)):
        text = ""
    text = str(text).strip()
    if not text:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    parts = text.split()
    bad = None if _INTEGERS.fullmatch(text) else next((p for p in parts if not _INTEGER.fullmatch(p)), text)
    if bad is not None:
        raise RLEError(f"non-integer value {bad!r}")
    with warnings.catch_warnings():  # text mode of fromstring: the fast C parser for checked text
        warnings.simplefilter("ignore")
        values = np.fromstring(text, dtype=np.int64, sep=" ")
    if values.size != len(parts):
        values = np.array([int(p) for p in parts], dtype=np.int64)
    if values.size % 2:
        raise RLEError(f"odd number of values ({values.size}): expected start/length pairs")
    starts, lengths = values[0::2], values[1::2]
    if (starts > n_pixels).any() or (lengths > n_pixels).any():  # before any sum can overflow int64
        big = int(starts[starts > n_pixels][0]) if (starts > n_pixels).any() else int(lengths[lengths > n_pixels][0])
        raise RLEError(f"value {big} is larger than the image ({n_pixels} pixels)")
    if (starts < 1).any():
        raise RLEError(f"start {int(starts[starts < 1][0])} < 1 (pixels are numbered from 1)")
    if (lengths < 1).any():
        raise RLEError(f"run length {int(lengths[lengths < 1][0])} < 1")
    if (np.diff(starts) <= 0).any():
        i = int(np.flatnonzero(np.diff(starts) <= 0)[0])
        raise RLEError(f"starts not increasing ({int(starts[i])} then {int(starts[i + 1])})")
    ends = starts + lengths  # exclusive
    if (ends[:-1] > starts[1:]).any():
        i = int(np.flatnonzero(ends[:-1] > starts[1:])[0])
        raise RLEError(f"run {int(starts[i])}+{int(lengths[i])} overlaps the run starting at {int(starts[i + 1])}")
    if ends[-1] - 1 > n_pixels:
        raise RLEError(f"run {int(starts[-1])}+{int(lengths[-1])} passes the last pixel ({n_pixels})")
    return starts, lengths


def runs_to_mask(starts: np.ndarray, lengths: np.ndarray, shape: tuple[int, int], order: str = "column") -> np.ndarray:
    """Mask from parsed (checked) runs: +1 at each start, -1 after each end, cumulative sum."""
    h, w = shape
    delta = np.zeros(h * w + 1, dtype=np.int8)
    delta[starts - 1] += 1  # starts are unique, so are ends: plain fancy indexing is safe
    delta[starts - 1 + lengths] -= 1
    return (np.cumsum(delta[:-1], dtype=np.int8) > 0).reshape((h, w), order=ORDERS[order])


def decode(text: str, shape: tuple[int, int], order: str = "column") -> np.ndarray:
    return runs_to_mask(*parse(text, shape[0] * shape[1]), shape, order)
