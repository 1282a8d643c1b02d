"""Every name a config may choose, declared once. The config checks read them here; each module
that implements a kind keys its table by the same names (tests/test_choices.py builds every one).
A new loss, tracker, metric, overlap policy or TTA transform: its name here, its builder there."""
from __future__ import annotations

from pipeline.errors import ConfigError

LOSSES = ("ce", "bce", "dice", "focal", "lovasz")  # engine/losses.py
TRACKERS = ("tensorboard", "mlflow")  # engine/trackers.py
METRICS = ("miou", "miou_image", "dice_image_class")  # competition/metrics.py
OVERLAP = ("area_desc", "order", "priority", "ignore", "multilabel")  # data/overlap.py
TTA = ("hflip", "vflip", "d4", "none")  # inference/tta.py; also `scale:<s1>,<s2>...`
# a loss's `class_weights` by name, resolved from the fold's training pixels (train.py), and the
# power of median-frequency balancing each takes: the square root weighs rare classes less
CLASS_WEIGHTS = {"median_frequency": 1.0, "sqrt_median_frequency": 0.5}

# `section.field`: the values it accepts
CHOICES = {
    "data.format": ("coco", "maskdir"),
    "data.overlap": OVERLAP,
    "data.unlabelled": ("background", "ignore"),
    "competition.task": ("single", "multilabel"),
    "competition.metric": METRICS,
    "submission.rle_order": ("column", "row"),
    "submission.format": ("rle", "prediction_string"),
    "submission.image_id": ("stem", "file_name"),
    "submission.nearest": ("centre", "corner"),
    "train.optimizer": ("adamw", "sgd"),
    "train.scheduler": ("cosine", "poly", "plateau", "none"),
    "runtime.amp": ("auto", "bf16", "fp16", "off"),
    "runtime.device": ("auto", "cpu", "cuda"),
    "train.on_change": ("refuse", "restart"),
    "infer.refit": ("off", "with", "only"),
    "infer.checkpoint": ("best", "swa"),
    "infer.probs_dtype": ("float16", "uint8"),
}


def parse_tta(name: str) -> tuple[str, tuple[float, ...]]:
    """One `infer.tta` entry: ("hflip", ()) ... or ("scale", (0.75, 1.0, 1.25)) for `scale:0.75,1,1.25`."""
    if name in TTA:
        return name, ()
    if isinstance(name, str) and name.startswith("scale:"):
        try:
            scales = tuple(float(s) for s in name[len("scale:"):].split(","))
        except ValueError:
            raise ConfigError(f"infer.tta: {name!r}: scales must be numbers, e.g. scale:0.75,1,1.25") from None
        if any(not s > 0 for s in scales):
            raise ConfigError(f"infer.tta: {name!r}: every scale must be > 0")
        return "scale", scales
    raise ConfigError(f"infer.tta: unknown transform {name!r} ({', '.join(TTA)}, scale:<s1>,<s2>...)")
