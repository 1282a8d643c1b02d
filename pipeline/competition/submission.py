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


def columns(sc: SubmissionConfig) -> list[str]:
    if sc.format == "prediction_string" or sc.id_template:
        return [sc.id_column, sc.rle_column]
    return [sc.id_column, sc.class_column, sc.rle_column]


def image_key(record, sc: SubmissionConfig) -> str:
    return record.stem if sc.image_id == "stem" else record.file_name


def resize_nearest(label: np.ndarray, size: tuple[int, int], convention: str = "centre") -> np.ndarray:
    """Nearest-neighbour resize of a label map. `centre`: output pixel i takes the source pixel under
    its centre, about floor((i + 0.5) * in / out) (PIL's NEAREST); `corner`: floor(i * in / out) (OpenCV's
    INTER_NEAREST, which albumentations' A.Resize uses). About 0.5% of pixels differ between the two."""
    (h, w), (H, W) = size, label.shape[:2]
    if convention == "centre":
        from PIL import Image

        return np.asarray(Image.fromarray(label).resize((w, h), Image.NEAREST))
    rows = np.minimum(np.floor(np.arange(h) * H / h).astype(np.int64), H - 1)
    cols = np.minimum(np.floor(np.arange(w) * W / w).astype(np.int64), W - 1)
    return label[rows[:, None], cols[None, :]]


def output_label(label: np.ndarray, sc: SubmissionConfig) -> np.ndarray:
    """The label map at the submission's size (nearest neighbour, the configured convention), or as it is."""
    if sc.size is None or tuple(label.shape) == tuple(sc.size):
        return label
    return resize_nearest(label, tuple(sc.size), sc.nearest)


# a PredictionString holds a class id per pixel: 65,536 of them at 256x256, past Python's default
# 131,072-character field limit once ten or more classes appear
CSV_FIELD_LIMIT = 2**31 - 1


def read_submission(path: Path, sc: SubmissionConfig) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise SubmissionError(f"{path}: file not found")
    expected = columns(sc)
    csv.field_size_limit(CSV_FIELD_LIMIT)
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


def _names(class_names, classes: list[int]) -> list[str]:
    return list(class_names) if class_names else [str(i) for i in range(max(classes) + 1)]


def _row_ids(df: pd.DataFrame, images, classes: list[int], class_names, sc: SubmissionConfig, name: str):
    """(line, where, image, class) for every row of a per-class RLE file."""
    if sc.id_template:
        by_id = {}
        for c in classes:
            for img in images:
                by_id[sc.id_template.format(image=img, class_name=class_names[c], class_id=c)] = (img, c)
        for k, rid in enumerate(df[sc.id_column]):
            where = f"{name} line {k + 2} ({sc.id_column}={rid!r})"
            if rid not in by_id:
                raise SubmissionError(f"{where}: not an id of the form {sc.id_template!r} for a test image and class")
            yield k, where, *by_id[rid]
        return
    for k, (img, cls) in enumerate(zip(df[sc.id_column], df[sc.class_column])):
        where = f"{name} line {k + 2} ({sc.id_column}={img!r}, {sc.class_column}={cls!r})"
        try:
            c = int(cls)
        except ValueError:
            raise SubmissionError(f"{where}: class id is not an integer") from None
        yield k, where, img, c


def validate(df: pd.DataFrame, sizes: dict[str, tuple[int, int]], classes: list[int], sc: SubmissionConfig,
             name: str = "submission", class_names=None) -> dict:
    """Check every row (errors name the CSV line and field). Returns, for per-class RLE, the parsed
    runs per (image, class); for prediction strings, the label map per image. `sizes` are the
    sizes the masks are written at."""
    if sc.format == "prediction_string":
        return _validate_prediction_strings(df, sizes, classes, sc, name)
    parsed = {}
    class_set = set(classes)
    for k, where, img, c in _row_ids(df, list(sizes), classes, _names(class_names, classes), sc, name):
        if img not in sizes:
            raise SubmissionError(f"{where}: unknown image id")
        if c not in class_set:
            raise SubmissionError(f"{where}: class {c} is not one of {classes}")
        if (img, c) in parsed:
            raise SubmissionError(f"{where}: duplicate row for this image and class")
        h, w = sizes[img]
        enc = df[sc.rle_column].iat[k]
        try:
            parsed[(img, c)] = rle.parse("" if enc == sc.empty else enc, h * w)
        except rle.RLEError as e:
            raise SubmissionError(f"{where}: {sc.rle_column}: {e}") from None
    missing = [(i, c) for i in sizes for c in classes if (i, c) not in parsed]
    if sc.empty_rows and missing:
        i, c = missing[0]
        raise SubmissionError(f"{name}: {len(missing)} (image, class) row(s) missing, e.g. {i!r} class {c}")
    return parsed


def _validate_prediction_strings(df, sizes, classes, sc, name) -> dict[str, np.ndarray]:
    labels = {}
    top = max(classes)
    for k, (img, text) in enumerate(zip(df[sc.id_column], df[sc.rle_column])):
        where = f"{name} line {k + 2} ({sc.id_column}={img!r})"
        if img not in sizes:
            raise SubmissionError(f"{where}: unknown image id")
        if img in labels:
            raise SubmissionError(f"{where}: duplicate row for this image")
        h, w = sizes[img]
        parts = text.split()
        if len(parts) != h * w:
            raise SubmissionError(f"{where}: {sc.rle_column}: {len(parts)} values, expected {h}x{w} = {h * w}")
        if not all(p.isdigit() for p in parts):
            bad = next(p for p in parts if not p.isdigit())
            raise SubmissionError(f"{where}: {sc.rle_column}: {bad!r} is not a class index")
        values = np.array(parts, dtype=np.int64)
        if values.max(initial=0) > top:
            raise SubmissionError(f"{where}: {sc.rle_column}: class {int(values.max())} is outside 0..{top}")
        labels[img] = values.reshape(h, w).astype(np.uint8)
    missing = [i for i in sizes if i not in labels]
    if missing:
        raise SubmissionError(f"{name}: {len(missing)} image(s) without a row, e.g. {missing[0]!r}")
    return labels


def prediction_masks(parsed: dict, image: str, classes: list[int], shape: tuple[int, int], sc: SubmissionConfig):
    """(len(classes), H, W) bool masks of one image from `validate`'s result."""
    if sc.format == "prediction_string":
        return np.stack([parsed[image] == c for c in classes])
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64))
    return np.stack([rle.runs_to_mask(*parsed.get((image, c), empty), shape, sc.rle_order) for c in classes])


def encode_rows(image: str, label: np.ndarray, classes: list[int], sc: SubmissionConfig, class_names=None,
                multilabel: bool = False) -> list[tuple]:
    """The rows of one image; `label` is already at the submission's size (multilabel: class bits)."""
    if sc.format == "prediction_string":
        if multilabel:
            raise SubmissionError("submission.format prediction_string holds one class per pixel: not multilabel")
        return [(image, " ".join(map(str, label.ravel(order="C").tolist())))]
    rows = []
    for c in classes:
        mask = ((label >> c) & 1).astype(bool) if multilabel else label == c
        enc = rle.encode(mask, sc.rle_order) or sc.empty
        if enc != sc.empty or sc.empty_rows:
            if sc.id_template:
                class_name = _names(class_names, classes)[c]
                rows.append((sc.id_template.format(image=image, class_name=class_name, class_id=c), enc))
            else:
                rows.append((image, c, enc))
    return rows


def submission_table(records, label_of, cfg: Config, rules: dict | None = None) -> pd.DataFrame:
    """The submission's rows for `records` (test images), validated as the file will be read back.
    `label_of(record)` gives each image's label map at its own size (multilabel: class bits, at the
    tuned thresholds); tuned post-processing `rules` are applied, then the format's size and encoding."""
    from pipeline.competition.postprocess import apply

    sc, classes, multilabel = cfg.submission, class_ids(cfg), cfg.competition.multilabel
    rows, sizes = [], {}
    for rec in records:
        label = label_of(rec)
        if rules:
            label = apply(label, rules, cfg.competition.background, multilabel)
        label, key = output_label(label, sc), image_key(rec, sc)
        sizes[key] = label.shape
        rows += encode_rows(key, label, classes, sc, cfg.data.classes, multilabel)
    df = pd.DataFrame(rows, columns=columns(sc)).astype(str)
    validate(df, sizes, classes, sc, class_names=cfg.data.classes)
    return df
