"""Independent numpy references for the metric tests (the pipeline counts with torch, in chunks)."""
import numpy as np


def confusion_matrix(truth: np.ndarray, pred: np.ndarray, num_classes: int, ignore_index: int) -> np.ndarray:
    """(truth, pred) counts, ignore-index pixels (and values outside the classes) excluded."""
    t, p = np.asarray(truth).ravel().astype(np.int64), np.asarray(pred).ravel().astype(np.int64)
    keep = (t != ignore_index) & (t < num_classes)
    return np.bincount(t[keep] * num_classes + p[keep], minlength=num_classes ** 2).reshape(num_classes, num_classes)


def iou_from_confusion(cm: np.ndarray) -> np.ndarray:
    cm = np.asarray(cm, dtype=np.float64)
    inter = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.maximum(union, 1), np.nan)


def multilabel_counts(pred: dict, truth: np.ndarray, class_ids, ignore_index: int):
    """Per-class intersection and union of binary predictions against a label map, ignore excluded;
    a pixel predicted for several classes counts for each."""
    valid = truth != ignore_index
    inter = np.zeros(len(class_ids), np.int64)
    union = np.zeros(len(class_ids), np.int64)
    for k, c in enumerate(class_ids):
        p = pred[c] & valid
        t = truth == c
        inter[k] = np.count_nonzero(p & t)
        union[k] = np.count_nonzero(p | t)
    return inter, union
