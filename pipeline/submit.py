"""Submission CSV: run-length-encoded masks per (test image, class), validated before it is written,
written atomically and never over an existing file."""
from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import rle
from pipeline.config import Config, SubmissionConfig
from pipeline.data.coco import DataError
from pipeline.data.sources import open_split, read_label_png
from pipeline.io import write_json, write_text


class SubmissionError(ValueError):
    pass


def class_ids(cfg: Config) -> list[int]:
    return list(cfg.submission.class_ids) or list(range(cfg.data.num_classes))


def read_submission(path: Path, sc: SubmissionConfig) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise SubmissionError(f"{path}: file not found")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise SubmissionError(f"{path}: not a readable CSV ({str(e).splitlines()[0]})") from None
    expected = [sc.id_column, sc.class_column, sc.rle_column]
    if list(df.columns) != expected:
        raise SubmissionError(f"{path}: header is {list(df.columns)}, expected {expected}")
    return df


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


def new_submission_path(cfg: Config) -> Path:
    folder = Path(cfg.submissions) / cfg.data.name
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = folder / f"{stamp}_{cfg.exp}.csv"
    n = 1
    while path.exists():
        path = folder / f"{stamp}-{n}_{cfg.exp}.csv"
        n += 1
    return path


def run(cfg: Config) -> Path:
    sc = cfg.submission
    preds = cfg.preds_dir()
    test = open_split(cfg.data, "test", labelled=False)
    classes = class_ids(cfg)
    rows, sizes = [], {}
    for rec in test.records:
        path = preds / "labels" / f"{rec.stem}.png"
        if not path.exists():
            raise DataError(f"{path}: no prediction for test image {rec.stem!r}; run `make infer-tta` first")
        label = read_label_png(path)
        if label.shape != (rec.height, rec.width):
            raise DataError(f"{path}: prediction is {label.shape[1]}x{label.shape[0]}, image is {rec.width}x{rec.height}")
        sizes[rec.stem] = label.shape
        rows += encode_rows(rec.stem, label, classes, sc)
    df = pd.DataFrame(rows, columns=[sc.id_column, sc.class_column, sc.rle_column]).astype({sc.class_column: str})
    validate(df, sizes, classes, sc)
    buf = io.StringIO()
    df.to_csv(buf, index=False, quoting=csv.QUOTE_MINIMAL)
    path = new_submission_path(cfg)
    write_text(path, buf.getvalue(), overwrite=False)
    manifest = preds / "manifest.json"
    meta = {"exp": cfg.exp, "data": cfg.data.name, "rows": len(df), "preds": str(preds)}
    if manifest.exists():
        import json

        meta.update(json.loads(manifest.read_text()))
    write_json(path.with_suffix(".json"), meta, overwrite=False)
    print(f"submission: {len(df)} rows ({len(test)} images x {len(classes)} classes), validated -> {path}")
    return path
