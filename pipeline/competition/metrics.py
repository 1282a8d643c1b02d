"""Segmentation metrics. The competition metric is dataset-level: intersections and unions are
summed over all images per class, then IoU is averaged over the classes. `IoUMeter` is the one
object that accumulates it, for validation during training, the OOF CV score and `make score`."""
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


class IoUMeter:
    """Dataset-level IoU, accumulated batch by batch on any device and reduced across DDP ranks.

    `update(pred, truth)` takes label maps (one class per pixel, the confusion matrix is kept too);
    `update_masks(masks, truth)` takes one binary mask per reported class, which may overlap: a
    pixel predicted for several classes counts for each. Pixels whose truth is `ignore_index` (or
    any value outside the classes) are excluded. `classes` are the class indices reported
    (default all); `compute()` averages IoU over those that occur in truth or prediction."""

    def __init__(self, num_classes: int, ignore_index: int, classes=None, device="cpu"):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.classes = list(range(num_classes)) if classes is None else list(classes)
        self.device = torch.device(device)
        self.reset()

    def reset(self) -> None:
        k, dev = len(self.classes), self.device
        self.inter = torch.zeros(k, dtype=torch.int64, device=dev)
        self.union = torch.zeros(k, dtype=torch.int64, device=dev)
        self.counts = torch.zeros(2, dtype=torch.int64, device=dev)  # correct, valid pixels
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64, device=dev)

    @staticmethod
    def _tensor(x, device) -> torch.Tensor:
        if isinstance(x, torch.Tensor):
            return x.to(device)
        x = np.ascontiguousarray(x)
        return torch.from_numpy(x if x.flags.writeable else x.copy()).to(device)  # PIL arrays are read-only

    def update(self, pred, truth) -> None:
        cm = confusion_matrix_torch(self._tensor(truth, self.device), self._tensor(pred, self.device),
                                    self.num_classes, self.ignore_index)
        self.confusion += cm
        sel = torch.tensor(self.classes, device=self.device)
        diag = cm.diagonal()
        self.inter += diag[sel]
        self.union += (cm.sum(0) + cm.sum(1) - diag)[sel]
        self.counts += torch.stack([diag[sel].sum(), cm.sum()])

    def update_masks(self, masks, truth) -> None:
        """masks: (len(classes), H, W) bool, in the order of `classes`; truth: (H, W) label map."""
        t = self._tensor(truth, self.device).long()
        m = self._tensor(masks, self.device).bool()
        valid = (t != self.ignore_index) & (t < self.num_classes)
        for k, c in enumerate(self.classes):
            p, y = m[k] & valid, t == c
            self.inter[k] += (p & y).sum()
            self.union[k] += (p | y).sum()
        self.counts += torch.stack([self.inter.new_tensor(0), valid.sum()])
        self.counts[0] += sum((m[k] & (t == c)).sum() for k, c in enumerate(self.classes))

    def all_reduce(self) -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            for t in (self.inter, self.union, self.counts, self.confusion):
                dist.all_reduce(t)

    def compute(self) -> dict:
        inter, union = self.inter.cpu().numpy(), self.union.cpu().numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(union > 0, inter / np.maximum(union, 1), np.nan)
        correct, valid = (int(v) for v in self.counts.cpu())
        return {"miou": mean_iou(iou), "iou": iou, "pixel_acc": correct / valid if valid else float("nan")}
