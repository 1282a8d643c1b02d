"""Segmentation metrics. The competition metric is dataset-level: intersections and unions are
summed over all images per class, then IoU is averaged over the classes."""
from __future__ import annotations

import numpy as np
import torch


def confusion_matrix(truth: np.ndarray, pred: np.ndarray, num_classes: int, ignore_index: int) -> np.ndarray:
    """(truth, pred) counts, ignore-index pixels excluded."""
    t = np.asarray(truth).ravel().astype(np.int64)
    p = np.asarray(pred).ravel().astype(np.int64)
    keep = (t != ignore_index) & (t < num_classes)
    return np.bincount(t[keep] * num_classes + p[keep], minlength=num_classes ** 2).reshape(num_classes, num_classes)


def confusion_matrix_torch(truth: torch.Tensor, pred: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """The same on the tensors' device, so validation never syncs per batch."""
    t, p = truth.reshape(-1).long(), pred.reshape(-1).long()
    keep = (t != ignore_index) & (t < num_classes)
    idx = t[keep] * num_classes + p[keep]
    return torch.bincount(idx, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def iou_from_confusion(cm: np.ndarray) -> np.ndarray:
    cm = np.asarray(cm, dtype=np.float64)
    inter = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.maximum(union, 1), np.nan)


def mean_iou(iou: np.ndarray) -> float:
    """Mean over classes that occur in truth or prediction (a class absent from both is no evidence)."""
    iou = np.asarray(iou, dtype=np.float64)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


def multilabel_counts(pred: dict[int, np.ndarray], truth: np.ndarray, class_ids, ignore_index: int):
    """Per-class intersection and union of binary predictions against a label map, ignore excluded.
    Predictions may overlap: a pixel predicted for several classes counts for each of them."""
    valid = truth != ignore_index
    inter = np.zeros(len(class_ids), np.int64)
    union = np.zeros(len(class_ids), np.int64)
    for k, c in enumerate(class_ids):
        p = pred[c] & valid
        t = truth == c
        inter[k] = np.count_nonzero(p & t)
        union[k] = np.count_nonzero(p | t)
    return inter, union
