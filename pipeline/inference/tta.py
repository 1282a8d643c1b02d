"""Test-time augmentation with ttach's transforms, batched: all views of a batch that share a shape
go through the model in one forward pass (ttach's own wrapper runs one pass per transform)."""
from __future__ import annotations

import torch
import ttach

from pipeline.config.choices import parse_tta


_VIEWS = {"hflip": lambda _: [ttach.HorizontalFlip()], "vflip": lambda _: [ttach.VerticalFlip()],
          "d4": lambda _: [ttach.HorizontalFlip(), ttach.Rotate90(angles=[0, 90, 180, 270])], "none": lambda _: [],
          "scale": lambda scales: [ttach.Scale(scales=list(scales), interpolation="bilinear", align_corners=False)]}


def build_tta(names) -> ttach.Compose:
    """ttach transforms from `infer.tta` names (their grammar: config/choices.parse_tta)."""
    transforms = []
    for name in names:
        if name == "":
            continue
        kind, scales = parse_tta(name)
        transforms += _VIEWS[kind](scales)
    return ttach.Compose(transforms)


@torch.no_grad()
def predict_probs(model, x: torch.Tensor, transforms: ttach.Compose, dtype=None, multilabel: bool = False) -> torch.Tensor:
    """Softmax (multilabel: sigmoid) probabilities averaged over the TTA views, (B, C, H, W) float32."""
    views = [t.augment_image(x) for t in transforms]
    by_shape: dict[tuple, list[int]] = {}
    for k, v in enumerate(views):
        by_shape.setdefault(tuple(v.shape[-2:]), []).append(k)
    out: list[torch.Tensor | None] = [None] * len(views)
    for ks in by_shape.values():
        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(torch.cat([views[k] for k in ks]))
        probs = logits.float().sigmoid() if multilabel else logits.float().softmax(1)
        for k, chunk in zip(ks, probs.split(len(x))):
            out[k] = chunk
    total = None
    for t, p in zip(transforms, out):
        p = t.deaugment_mask(p)
        total = p if total is None else total + p
    return total / len(views)
