"""Test-time augmentation with ttach's transforms, batched: all views of a batch that share a shape
go through the model in one forward pass (ttach's own wrapper runs one pass per transform)."""
from __future__ import annotations

import torch
import ttach

from pipeline.errors import ConfigError


def build_tta(names) -> ttach.Compose:
    transforms = []
    for name in names:
        if name == "hflip":
            transforms.append(ttach.HorizontalFlip())
        elif name == "vflip":
            transforms.append(ttach.VerticalFlip())
        elif name == "d4":
            transforms += [ttach.HorizontalFlip(), ttach.Rotate90(angles=[0, 90, 180, 270])]
        elif name.startswith("scale:"):
            try:
                scales = [float(s) for s in name.split(":", 1)[1].split(",")]
            except ValueError:
                raise ConfigError(f"infer.tta: {name!r}: scales must be numbers, e.g. scale:0.75,1,1.25") from None
            transforms.append(ttach.Scale(scales=scales, interpolation="bilinear", align_corners=False))
        elif name in ("none", ""):
            continue
        else:
            raise ConfigError(f"infer.tta: unknown transform {name!r} (hflip, vflip, d4, scale:<s1>,<s2>...)")
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
