"""`make pseudo`: the current ensemble pseudo-labels an unlabelled split (pipeline/inference/pseudo_labels.py)."""
from __future__ import annotations

from pipeline.config import Config, StageArgs
from pipeline.inference.pseudo_labels import pseudo_label


def run(cfg: Config, args: StageArgs = StageArgs()) -> dict:
    return pseudo_label(cfg)
