"""Losses from config, combinable with weights. Region losses run in fp32 (SMP's Dice overflows in fp16)."""
from __future__ import annotations

import segmentation_models_pytorch as smp
import torch
from torch import nn

from pipeline.config import LossTerm
from pipeline.errors import ConfigError
from pipeline.pixels import bits_to_masks


class _FP32(nn.Module):
    def __init__(self, loss: nn.Module):
        super().__init__()
        self.loss = loss

    def forward(self, logits, target):
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return self.loss(logits.float(), target)


class _Bits(nn.Module):
    """Multilabel: the target's class bits (N, H, W) as (N, C, H, W) 0/1 channels, ignored pixels
    marked with the ignore value in every channel, for SMP's multilabel-mode losses."""

    def __init__(self, loss: nn.Module, num_classes: int, ignore_index: int):
        super().__init__()
        self.loss, self.num_classes, self.ignore_index = loss, num_classes, ignore_index

    def forward(self, logits, target):
        y = bits_to_masks(target.long(), self.num_classes).to(logits.dtype)
        y = y.masked_fill((target == self.ignore_index).unsqueeze(1), float(self.ignore_index))
        return self.loss(logits, y)


class _PerChannel(nn.Module):
    """A binary loss averaged over the channels (Lovasz hinge: one ranking per class, not one over
    every class's pixels pooled)."""

    def __init__(self, loss: nn.Module):
        super().__init__()
        self.loss = loss

    def forward(self, logits, target):
        return torch.stack([self.loss(logits[:, c], target[:, c]) for c in range(logits.shape[1])]).mean()


class Combined(nn.Module):
    def __init__(self, terms: list[tuple[str, float, nn.Module]]):
        super().__init__()
        self.names = [n for n, _, _ in terms]
        self.weights = [w for _, w, _ in terms]
        self.losses = nn.ModuleList([m for _, _, m in terms])

    def forward(self, logits, target):
        # One fp32 copy in the default layout for every term: each would otherwise cast the bf16
        # channels_last logits on its own (CE through autocast, the region losses in _FP32), and SMP
        # reshapes them once more (bench/loss_step.py).
        logits = logits.to(torch.float32, memory_format=torch.contiguous_format)
        return sum(w * loss(logits, target) for w, loss in zip(self.weights, self.losses))


class _MulticlassDice(nn.Module):
    """SMP's multiclass DiceLoss (same value; same gradient up to rounding, tests/test_losses.py) from
    per-class sums of the softmax and of its value at the class's own pixels. SMP's builds an int64
    one-hot target and an L1 norm over every pixel and class: 19% of the CPU recipe's step."""

    def __init__(self, ignore_index: int, smooth: float = 0.0, eps: float = 1e-7, log_loss: bool = False):
        super().__init__()
        self.ignore_index, self.smooth, self.eps, self.log_loss = ignore_index, smooth, eps, log_loss

    def forward(self, logits, target):
        c = logits.shape[1]
        valid = (target != self.ignore_index).flatten(1)
        y = target.flatten(1).masked_fill(~valid, 0).long()
        prob = logits.flatten(2).softmax(1) * valid.unsqueeze(1)
        at_true = prob.gather(1, y.unsqueeze(1)).flatten()  # 0 at ignored pixels
        inter = prob.new_zeros(c).index_add_(0, y.flatten(), at_true)
        true_sum = torch.bincount(y.flatten(), weights=valid.flatten().to(prob.dtype), minlength=c)
        score = (inter + self.smooth) / (0.5 * (prob.sum((0, 2)) + true_sum) + self.smooth).clamp_min(self.eps)
        loss = -torch.log(score.clamp_min(self.eps)) if self.log_loss else 1.0 - score
        return (loss * (true_sum > 0)).mean()  # a class absent from the batch adds 0, as in SMP


class _Ohem(nn.Module):
    """Online hard example mining (mmseg's OHEMPixelSampler): only the pixels whose probability of
    their true class is below `thresh` count, and at least the `min_kept` hardest of the batch's
    labelled pixels; the rest are ignored. Thin structures (poles, signs) are where those pixels are."""

    def __init__(self, loss: nn.Module, thresh: float, min_kept: int, ignore_index: int):
        super().__init__()
        self.loss, self.thresh, self.min_kept, self.ignore_index = loss, thresh, min_kept, ignore_index

    def forward(self, logits, target):
        with torch.no_grad():
            labelled = target != self.ignore_index
            true = target.masked_fill(~labelled, 0).long().unsqueeze(1)
            prob = torch.softmax(logits.float(), 1).gather(1, true).squeeze(1).masked_fill(~labelled, 2.0)
            hard = prob < self.thresh
            n = int(labelled.sum())
            if n and self.min_kept > 0:
                hard |= prob <= prob.flatten().kthvalue(min(self.min_kept, n)).values
        return self.loss(logits, target.masked_fill(labelled & ~hard, self.ignore_index))


def _ce(p: dict, num_classes: int, ignore_index: int, multilabel: bool) -> nn.Module:
    weight = p.pop("class_weights", None)
    if weight is not None and len(weight) != num_classes:
        raise ConfigError(f"train.losses ce.class_weights: {len(weight)} values for {num_classes} classes")
    loss = nn.CrossEntropyLoss(weight=torch.tensor(weight, dtype=torch.float32) if weight else None,
                               ignore_index=ignore_index, label_smoothing=float(p.pop("label_smoothing", 0.0)))
    ohem_thresh, min_kept = p.pop("ohem_thresh", None), int(p.pop("ohem_min_kept", 0))
    if p:
        raise ConfigError(f"train.losses ce: unknown parameter(s) {sorted(p)}")
    if ohem_thresh is None:
        if min_kept:
            raise ConfigError("train.losses ce.ohem_min_kept needs ce.ohem_thresh")
        return loss
    if multilabel:
        raise ConfigError("train.losses ce.ohem_thresh: hard-pixel mining is for single-label tasks")
    if not 0.0 < float(ohem_thresh) <= 1.0 or min_kept < 0:
        raise ConfigError(f"train.losses ce: ohem_thresh {ohem_thresh} must be in (0, 1], ohem_min_kept {min_kept} >= 0")
    return _Ohem(loss, float(ohem_thresh), min_kept, ignore_index)


def _bce(p, num_classes, ignore_index, multilabel):
    return _FP32(smp.losses.SoftBCEWithLogitsLoss(ignore_index=ignore_index, **p))


_FAST_DICE_PARAMS = {"smooth", "eps", "log_loss"}


def _dice(p, num_classes, ignore_index, multilabel):
    if not multilabel and set(p) <= _FAST_DICE_PARAMS:
        return _FP32(_MulticlassDice(ignore_index, **p))
    return _FP32(smp.losses.DiceLoss("multilabel" if multilabel else "multiclass", ignore_index=ignore_index, **p))


def _focal(p, num_classes, ignore_index, multilabel):  # multilabel per channel: SMP's multilabel focal mis-indexes the ignore mask
    return _FP32(_PerChannel(smp.losses.FocalLoss("binary", ignore_index=ignore_index, **p)) if multilabel
                 else smp.losses.FocalLoss("multiclass", ignore_index=ignore_index, **p))


def _lovasz(p, num_classes, ignore_index, multilabel):
    return _FP32(_PerChannel(smp.losses.LovaszLoss("binary", ignore_index=ignore_index, **p)) if multilabel
                 else smp.losses.LovaszLoss("multiclass", ignore_index=ignore_index, **p))


LOSSES = {"ce": _ce, "bce": _bce, "dice": _dice, "focal": _focal, "lovasz": _lovasz}  # names: config/choices.LOSSES


def build_loss(terms: tuple[LossTerm, ...], num_classes: int, ignore_index: int, multilabel: bool = False) -> nn.Module:
    built = []
    for t in terms:
        if t.name not in LOSSES:
            raise ConfigError(f"unknown loss {t.name!r}")
        loss = LOSSES[t.name](dict(t.params), num_classes, ignore_index, multilabel)
        if multilabel:
            loss = _Bits(loss, num_classes, ignore_index)
        built.append((t.name, t.weight, loss))
    return Combined(built)
