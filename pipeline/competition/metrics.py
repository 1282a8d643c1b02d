"""Segmentation metrics. The competition metric is dataset-level: intersections and unions are
summed over all images per class, then IoU is averaged over the classes. `IoUMeter` is the one
object that accumulates it, for validation during training, the OOF CV score and `make score`."""
from __future__ import annotations

import numpy as np
import torch

from pipeline.pixels import CHUNK, bits_to_masks


def confusion_matrix_torch(truth: torch.Tensor, pred: torch.Tensor, num_classes: int, ignore_index: int,
                           chunk: int = CHUNK) -> torch.Tensor:
    """The same on the tensors' device, so validation never syncs per batch. Counted a chunk of
    pixels at a time: the int64 pair index of a whole large image would take 8 bytes per pixel."""
    t, p = truth.reshape(-1), pred.reshape(-1)
    out = torch.zeros(num_classes ** 2, dtype=torch.int64, device=t.device)
    for s in range(0, t.numel(), chunk):
        tc, pc = t[s:s + chunk].long(), p[s:s + chunk].long()
        keep = (tc != ignore_index) & (tc < num_classes)
        out += torch.bincount(tc[keep] * num_classes + pc[keep], minlength=num_classes ** 2)
    return out.reshape(num_classes, num_classes)


def mean_iou(iou: np.ndarray) -> float:
    """Mean over classes that occur in truth or prediction (a class absent from both is no evidence)."""
    iou = np.asarray(iou, dtype=np.float64)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


class IoUMeter:
    """Dataset-level IoU, accumulated batch by batch on any device and reduced across DDP ranks.
    The base of every competition metric (`build_metric`): all of them also keep this one, the
    confusion matrix and the pixel accuracy.

    `update(pred, truth)` takes label maps, (H, W) or a batch (B, H, W); `update_masks(masks, truth)`
    one image's binary mask per reported class, which may overlap: a pixel predicted for several
    classes counts for each. Pixels whose truth is `ignore_index` (or any value outside the classes)
    are excluded. `classes` are the class indices scored (default all)."""
    name = "miou"
    per_image = False

    def __init__(self, num_classes: int, ignore_index: int, classes=None, device="cpu", multilabel: bool = False):
        self.num_classes, self.ignore_index, self.multilabel = num_classes, ignore_index, multilabel
        self.classes = list(range(num_classes)) if classes is None else list(classes)
        self.device = torch.device(device)
        self.sel = torch.tensor(self.classes, device=self.device, dtype=torch.long)
        self.reset()

    def reset(self) -> None:
        k, dev = len(self.classes), self.device
        self.inter = torch.zeros(k, dtype=torch.int64, device=dev)
        self.union = torch.zeros(k, dtype=torch.int64, device=dev)
        self.counts = torch.zeros(2, dtype=torch.int64, device=dev)  # correct, valid pixels
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64, device=dev)
        self.image_sums = torch.zeros(2, dtype=torch.float64, device=dev)  # per-image metrics: sum, count
        self.class_sums = torch.zeros(k, 2, dtype=torch.float64, device=dev)  # per class: sum, count

    @staticmethod
    def _tensor(x, device) -> torch.Tensor:
        if isinstance(x, torch.Tensor):
            return x.to(device)
        x = np.ascontiguousarray(x)
        return torch.from_numpy(x if x.flags.writeable else x.copy()).to(device)  # PIL arrays are read-only

    def update(self, pred, truth) -> None:
        """Label maps; with `multilabel`, maps of class bits (the confusion matrix stays empty and
        pixel accuracy counts pixels whose whole set of classes is right)."""
        p, t = self._tensor(pred, self.device), self._tensor(truth, self.device)
        pairs = zip(p.reshape(-1, *p.shape[-2:]), t.reshape(-1, *t.shape[-2:])) if self.per_image else [(p, t)]
        for pi, ti in pairs:
            if self.multilabel:
                ti = ti.long()
                valid = ti != self.ignore_index
                p_c, y_c = (bits_to_masks(x.long(), self.num_classes)[..., self.sel, :, :] & valid.unsqueeze(-3)
                            for x in (pi, ti))
                k = len(self.classes)  # (B, K, H, W) or (K, H, W) -> (K, pixels)
                p_c, y_c = (x.flatten(-2).transpose(0, -2).reshape(k, -1) for x in (p_c, y_c))
                self._add_masks(p_c, y_c, valid, int(((pi.long() == ti) & valid).sum()))
                continue
            cm = confusion_matrix_torch(ti, pi, self.num_classes, self.ignore_index)
            self.confusion += cm
            diag = cm.diagonal()
            true_px = cm.sum(1)[self.sel]
            self._add(diag[self.sel], cm.sum(0)[self.sel], true_px, diag[self.sel].sum(), true_px.sum())

    def update_masks(self, masks, truth) -> None:
        """masks: (len(classes), H, W) bool, in the order of `classes`; truth: (H, W) label map (of
        class bits with `multilabel`)."""
        t = self._tensor(truth, self.device).long()
        m = self._tensor(masks, self.device).bool()
        if self.multilabel:
            valid = t != self.ignore_index
            y = bits_to_masks(t, self.num_classes)[self.sel] & valid
            self._add_masks((m & valid).flatten(1), y.flatten(1), valid, None)
            return
        valid = (t != self.ignore_index) & (t < self.num_classes)
        y = torch.stack([t == c for c in self.classes])
        p = m & valid
        inter = (p & y).flatten(1).sum(1)
        true_px = y.flatten(1).sum(1)
        self._add(inter, p.flatten(1).sum(1), true_px, inter.sum(), true_px.sum())

    def _add_masks(self, p, y, valid, correct: int | None) -> None:
        """Multilabel: p and y (len(classes), pixels) bool, prediction and truth, ignored pixels off."""
        inter = (p & y).sum(1)
        n_valid = valid.sum()
        if correct is None:  # per-class masks only: a pixel is right when every scored class is
            correct = int(((p == y).all(0)).sum() - (~valid).sum())
        self._add(inter, p.sum(1), y.sum(1), inter.new_tensor(correct), n_valid)

    def _add(self, inter, pred_px, true_px, correct, valid) -> None:
        """One image's (or, for dataset-level metrics, one batch's) per-class pixel counts; pixel
        accuracy counts the pixels whose truth is a scored class."""
        self.inter += inter
        self.union += pred_px + true_px - inter
        self.counts += torch.stack([correct, valid])
        if self.per_image:
            per_class, scored = self._image_scores(inter.double(), pred_px.double(), true_px.double())
            if scored.any():
                self.image_sums += torch.stack([per_class[scored].mean(), per_class.new_tensor(1.0)])
                self.class_sums[scored] += torch.stack([per_class[scored], torch.ones_like(per_class[scored])], 1)

    def _image_scores(self, inter, pred_px, true_px):
        """(score per class, which classes count) for one image."""
        raise NotImplementedError

    def all_reduce(self) -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            for t in (self.inter, self.union, self.counts, self.confusion, self.image_sums, self.class_sums):
                dist.all_reduce(t)

    STATE = ("inter", "union", "counts", "confusion", "image_sums", "class_sums")

    def state(self) -> dict[str, np.ndarray]:
        """The additive statistics behind `compute()`, as float64 arrays: the sum of two meters' states
        is the state of one meter that saw both; a weighted sum weights images (test-matched CV)."""
        return {k: getattr(self, k).detach().cpu().numpy().astype(np.float64) for k in self.STATE}

    def load_state(self, state: dict) -> "IoUMeter":
        for k in self.STATE:
            setattr(self, k, torch.as_tensor(np.asarray(state[k], dtype=np.float64)))
        return self

    def compute(self) -> dict:
        """miou, iou (per class), pixel_acc, and the metric's own `score` and `per_class`."""
        inter, union = self.inter.cpu().numpy(), self.union.cpu().numpy()
        iou = np.divide(inter, union, out=np.full(len(inter), np.nan), where=union > 0)
        correct, valid = (float(v) for v in self.counts.cpu())
        out = {"miou": mean_iou(iou), "iou": iou, "pixel_acc": correct / valid if valid else float("nan"),
               "score": mean_iou(iou), "per_class": iou}
        if self.per_image:
            total, images = (float(v) for v in self.image_sums.cpu())
            sums = self.class_sums.cpu().numpy()
            out["per_class"] = np.divide(sums[:, 0], sums[:, 1], out=np.full(len(sums), np.nan), where=sums[:, 1] > 0)
            out["score"] = total / images if images else float("nan")
        return out


class ImageMeanIoU(IoUMeter):
    """mIoU of each image (over the classes in its truth or prediction), averaged over images."""
    name = "miou_image"
    per_image = True

    def _image_scores(self, inter, pred_px, true_px):
        union = pred_px + true_px - inter
        return inter / union.clamp(min=1), union > 0


class ImageClassDice(IoUMeter):
    """Mean Dice over (image, class) pairs; a class empty in both truth and prediction scores 1."""
    name = "dice_image_class"
    per_image = True

    def _image_scores(self, inter, pred_px, true_px):
        denom = pred_px + true_px
        return torch.where(denom > 0, 2 * inter / denom.clamp(min=1), torch.ones_like(denom)), torch.ones_like(denom, dtype=torch.bool)


METRICS = {m.name: m for m in (IoUMeter, ImageMeanIoU, ImageClassDice)}


def build_metric(name: str, num_classes: int, ignore_index: int, classes=None, device="cpu",
                 multilabel: bool = False) -> IoUMeter:
    return METRICS[name](num_classes, ignore_index, classes, device, multilabel)


def competition_metric(cfg, device="cpu") -> IoUMeter:
    """The competition's metric over the classes it scores: what validation, OOF and `make score` use."""
    from pipeline.competition.submission import class_ids

    return build_metric(cfg.competition.metric, cfg.data.num_classes, cfg.data.ignore_index, class_ids(cfg), device,
                        cfg.competition.multilabel)
