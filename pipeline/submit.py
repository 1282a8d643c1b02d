"""Submission CSV: run-length-encoded masks per (test image, class), validated before it is written,
written atomically and never over an existing file."""
from __future__ import annotations

import csv
import io
import time
from pathlib import Path

from pipeline.competition.submission import class_ids, submission_table
from pipeline.competition.postprocess import decide, needs_probs
from pipeline.config import Config, StageArgs
from pipeline.data.sources import open_split
from pipeline.engine.runtime import get_logger
from pipeline.errors import DataError, SubmissionError
from pipeline.inference.oof import leaderboard_note, with_offset
from pipeline.inference.outdir import Preds
from pipeline.io import write_json, write_text

log = get_logger(__name__)


def write_new_submission(cfg: Config, text: str) -> Path:
    """Writes the CSV under a new timestamped name, never over an existing file: when another
    submission took the name in the same second (two `make submission` at once), the next free
    name is used."""
    folder = Path(cfg.submissions) / cfg.data.name
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        path = folder / (f"{stamp}_{cfg.exp}.csv" if n == 0 else f"{stamp}-{n}_{cfg.exp}.csv")
        if path.exists() or path.with_suffix(".json").exists():
            continue
        try:
            return write_text(path, text, overwrite=False)
        except FileExistsError:  # taken between the check and the write
            continue
    raise SubmissionError(f"{folder}: 1000 submissions named {stamp}_*: no free name")


def _complete_manifest(preds: Preds, stems: list[str]) -> dict:
    """The prediction folder's manifest, refusing a folder that is not one complete inference run."""
    path = preds.manifest
    manifest = preds.read_manifest()
    listed = set(manifest["files"])
    if listed != set(stems):
        missing = sorted(set(stems) - listed)[:3]
        raise DataError(f"{path}: the predictions are for another image set ({len(listed)} listed, {len(stems)} test "
                        f"images{', e.g. missing ' + str(missing) if missing else ''}); re-run `make infer-tta`")
    return manifest


def run(cfg: Config, args: StageArgs = StageArgs()) -> Path:
    sc = cfg.submission
    preds = Preds.of(cfg)
    test = open_split(cfg.data, "test", labelled=False)
    # the recipe's simulated gap as configured now, also where it changed after infer or tune ran
    manifest = with_offset(_complete_manifest(preds, [r.stem for r in test.records]), cfg.infer.cv_offset,
                           cfg.infer.cv_offset_sd)
    rules, multilabel = {}, cfg.competition.multilabel
    if sc.postprocess:
        tuned_doc, rules = preds.read_rules(cfg.data.classes)
        if tuned_doc is not None:
            manifest = {**manifest, "postprocess": tuned_doc["rules"], "oof_after_postprocess": tuned_doc.get("oof_after")}
            if rules and tuned_doc.get("cv"):  # the CV of what is submitted: OOF maps under rules tuned without their fold
                manifest = {**manifest, **with_offset(tuned_doc["cv"], cfg.infer.cv_offset, cfg.infer.cv_offset_sd),
                            "cv_before_postprocess": manifest.get("cv_score")}
    from_probs = needs_probs(rules, multilabel)
    if from_probs and not all(preds.probs(r.stem).exists() for r in test.records):
        raise DataError(f"{preds.postprocess}: its rules act on probabilities (thresholds, biases) but {preds.root / 'probs'} "
                        "lacks some test images; run `make infer-tta` with infer.save_probs=true")

    def label_of(rec):
        if from_probs:  # tuned thresholds or biases act on the probabilities
            return decide(preds.read_probs(rec.stem), rules, multilabel)
        return preds.read_label(rec.stem, (rec.height, rec.width))

    df = submission_table(test.records, label_of, cfg, rules)
    buf = io.StringIO()
    df.to_csv(buf, index=False, quoting=csv.QUOTE_MINIMAL)
    path = write_new_submission(cfg, buf.getvalue())
    meta = {"exp": cfg.exp, "data": cfg.data.name, "rows": len(df), "preds": str(preds.root),
            **{k: v for k, v in manifest.items() if k != "files"}}
    write_json(path.with_suffix(".json"), meta, overwrite=False)
    cv = "" if meta.get("cv_score") is None else f"; cv_score {meta['cv_score']:.4f}{leaderboard_note(meta)}"
    log.info("submission: %d rows (%d images, %d classes, %s), validated -> %s%s", len(df), len(test), len(class_ids(cfg)),
             sc.format, path, cv)
    return path
