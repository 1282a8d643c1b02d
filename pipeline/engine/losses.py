"""Losses from config, combinable with weights. Region losses run in fp32 (SMP's Dice overflows in fp16)."""
from __future__ import annotations

import segmentation_models_pytorch as smp
import torch
from torch import nn

from pipeline.config import LossTerm
from pipeline.errors import ConfigError


class _FP32(nn.Module):
    def __init__(self, loss: nn.Module):
        super().__init__()
        self.loss = loss

    def forward(self, logits, target):
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return self.loss(logits.float(), target)


class Combined(nn.Module):
    def __init__(self, terms: list[tuple[str, float, nn.Module]]):
        super().__init__()
        self.names = [n for n, _, _ in terms]
        self.weights = [w for _, w, _ in terms]
        self.losses = nn.ModuleList([m for _, _, m in terms])

    def forward(self, logits, target):
        return sum(w * loss(logits, target) for w, loss in zip(self.weights, self.losses))


def build_loss(terms: tuple[LossTerm, ...], num_classes: int, ignore_index: int) -> nn.Module:
    built = []
    for t in terms:
        p = dict(t.params)
        if t.name == "ce":
            weight = p.pop("class_weights", None)
            if weight is not None and len(weight) != num_classes:
                raise ConfigError(f"train.losses ce.class_weights: {len(weight)} values for {num_classes} classes")
            loss = nn.CrossEntropyLoss(weight=torch.tensor(weight, dtype=torch.float32) if weight else None,
                                       ignore_index=ignore_index, label_smoothing=float(p.pop("label_smoothing", 0.0)))
        elif t.name == "dice":
            loss = _FP32(smp.losses.DiceLoss("multiclass", ignore_index=ignore_index, **p))
        elif t.name == "focal":
            loss = _FP32(smp.losses.FocalLoss("multiclass", ignore_index=ignore_index, **p))
        elif t.name == "lovasz":
            loss = _FP32(smp.losses.LovaszLoss("multiclass", ignore_index=ignore_index, **p))
        else:
            raise ConfigError(f"unknown loss {t.name!r}")
        if t.name == "ce" and p:
            raise ConfigError(f"train.losses ce: unknown parameter(s) {sorted(p)}")
        built.append((t.name, t.weight, loss))
    return Combined(built)
