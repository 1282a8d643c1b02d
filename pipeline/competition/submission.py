"""The submission file of a per-class RLE competition: one row per (test image, class) with the
mask run-length encoded; read, validated row by row (errors name the CSV line) and encoded."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.competition import rle
from pipeline.config import Config, SubmissionConfig
from pipeline.errors import SubmissionError


def class_ids(cfg: Config) -> list[int]:
    return list(cfg.submission.class_ids) or list(range(cfg.data.num_classes))


def read_submission(path: Path, sc: SubmissionConfig) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise SubmissionError(f"{path}: file not found")
    expected = [sc.id_column, sc.class_column, sc.rle_column]
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (UnicodeDecodeError, csv.Error) as e:
        raise SubmissionError(f"{path}: not a readable CSV ({str(e).splitlines()[0]})") from None
    if not rows:
        raise SubmissionError(f"{path}: not a readable CSV (empty file; expected the header {expected})")
    if rows[0] != expected:
        raise SubmissionError(f"{path}: header is {rows[0]}, expected {expected}")
    for k, row in enumerate(rows[1:], start=2):
        if len(row) != len(expected):
            hint = " (a trailing comma?)" if len(row) == len(expected) + 1 and row[-1] == "" else ""
            raise SubmissionError(f"{path} line {k}: {len(row)} fields, expected {len(expected)} "
                                  f"({', '.join(expected)}){hint}")
    return pd.DataFrame(rows[1:], columns=expected, dtype=str)


def validate(df: pd.DataFrame, sizes: dict[str, tuple[int, int]], classes: list[int], sc: SubmissionConfig,
             name: str = "submission") -> dict[tuple[str, int], tuple[np.ndarray, np.ndarray]]:
    """Check every row; return the parsed runs per (image, class). Errors name the CSV line."""
    parsed = {}
    class_set = set(classes)
    for k, (img, cls, enc) in enumerate(zip(df[sc.id_column], df[sc.class_column], df[sc.rle_column])):
        where = f"{name} line {k + 2} ({sc.id_column}={img!r}, {sc.class_column}={cls!r})"
        if img not in sizes:
            raise SubmissionError(f"{where}: unknown image id")
        try:
            c = int(cls)
        except ValueError:
            raise SubmissionError(f"{where}: class id is not an integer") from None
        if c not in class_set:
            raise SubmissionError(f"{where}: class {c} is not one of {classes}")
        if (img, c) in parsed:
            raise SubmissionError(f"{where}: duplicate row for this image and class")
        h, w = sizes[img]
        try:
            parsed[(img, c)] = rle.parse(enc, h * w)
        except rle.RLEError as e:
            raise SubmissionError(f"{where}: {sc.rle_column}: {e}") from None
    missing = [(i, c) for i in sizes for c in classes if (i, c) not in parsed]
    if sc.empty_rows and missing:
        i, c = missing[0]
        raise SubmissionError(f"{name}: {len(missing)} (image, class) row(s) missing, e.g. {i!r} class {c}")
    return parsed


def encode_rows(stem: str, label: np.ndarray, classes: list[int], sc: SubmissionConfig) -> list[tuple]:
    rows = []
    for c in classes:
        enc = rle.encode(label == c, sc.rle_order)
        if enc or sc.empty_rows:
            rows.append((stem, c, enc))
    return rows
