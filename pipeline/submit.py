"""Submission CSV: run-length-encoded masks per (test image, class), validated before it is written,
written atomically and never over an existing file."""
from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.competition.submission import (class_ids, columns, encode_rows, image_key, output_label,
                                             validate)
from pipeline.competition.postprocess import apply, bits_from_probs, load_rules
from pipeline.config import Config
from pipeline.data.sources import open_split, read_label_png
from pipeline.engine.runtime import get_logger
from pipeline.errors import DataError
from pipeline.io import write_json, write_text

log = get_logger(__name__)


def new_submission_path(cfg: Config) -> Path:
    folder = Path(cfg.submissions) / cfg.data.name
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = folder / f"{stamp}_{cfg.exp}.csv"
    n = 1
    while path.exists():
        path = folder / f"{stamp}-{n}_{cfg.exp}.csv"
        n += 1
    return path


def _complete_manifest(preds: Path, stems: list[str]) -> dict:
    """The prediction folder's manifest, refusing a folder that is not one complete inference run."""
    path = preds / "manifest.json"
    if not path.exists():
        raise DataError(f"{path}: not found: no complete prediction folder (run `make infer-tta`)")
    manifest = json.loads(path.read_text())
    listed = set(manifest.get("files", []))
    if listed != set(stems):
        missing = sorted(set(stems) - listed)[:3]
        raise DataError(f"{path}: the predictions are for another image set ({len(listed)} listed, {len(stems)} test "
                        f"images{', e.g. missing ' + str(missing) if missing else ''}); re-run `make infer-tta`")
    return manifest


def run(cfg: Config) -> Path:
    sc = cfg.submission
    preds = cfg.preds_dir()
    test = open_split(cfg.data, "test", labelled=False)
    classes = class_ids(cfg)
    manifest = _complete_manifest(preds, [r.stem for r in test.records])
    rules, tuned = {}, preds / "postprocess.json"
    multilabel = cfg.competition.multilabel
    if sc.postprocess and tuned.exists():
        tuned_doc = json.loads(tuned.read_text())
        rules = load_rules(tuned_doc, cfg.data.classes)
        manifest = {**manifest, "postprocess": tuned_doc["rules"], "oof_after_postprocess": tuned_doc["oof_after"]}
    rows, sizes = [], {}
    for rec in test.records:
        path = preds / "labels" / f"{rec.stem}.png"
        if not path.exists():
            raise DataError(f"{path}: no prediction for test image {rec.stem!r}; run `make infer-tta` first")
        label = read_label_png(path)
        if label.shape != (rec.height, rec.width):
            raise DataError(f"{path}: prediction is {label.shape[1]}x{label.shape[0]}, image is {rec.width}x{rec.height}")
        if rules and multilabel:  # tuned thresholds act on the probabilities
            with np.load(preds / "probs" / f"{rec.stem}.npz") as z:
                label = bits_from_probs(z["probs"].astype(np.float32), rules)
        if rules:
            label = apply(label, rules, cfg.competition.background, multilabel)
        label, key = output_label(label, sc), image_key(rec, sc)
        sizes[key] = label.shape
        rows += encode_rows(key, label, classes, sc, cfg.data.classes, multilabel)
    df = pd.DataFrame(rows, columns=columns(sc)).astype(str)
    validate(df, sizes, classes, sc, class_names=cfg.data.classes)  # the file as it will be read back
    buf = io.StringIO()
    df.to_csv(buf, index=False, quoting=csv.QUOTE_MINIMAL)
    path = new_submission_path(cfg)
    write_text(path, buf.getvalue(), overwrite=False)
    meta = {"exp": cfg.exp, "data": cfg.data.name, "rows": len(df), "preds": str(preds),
            **{k: v for k, v in manifest.items() if k != "files"}}
    write_json(path.with_suffix(".json"), meta, overwrite=False)
    log.info("submission: %d rows (%d images, %d classes, %s), validated -> %s", len(df), len(test), len(classes),
             sc.format, path)
    return path
