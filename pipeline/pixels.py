"""Pixel counting on label maps of any size. np.bincount converts its input to int64, 8 bytes per
pixel: on a 20k x 20k slide that temporary alone is 3 GiB. These count a chunk of pixels at a time."""
from __future__ import annotations

import numpy as np

CHUNK = 1 << 22  # pixels per bincount: 32 MiB of int64 at most


def class_counts(label: np.ndarray, num_classes: int) -> np.ndarray:
    """Pixels of each class 0..num_classes-1 (int64); other values (the ignore index) are not counted."""
    flat = np.asarray(label).reshape(-1)
    out = np.zeros(num_classes, np.int64)
    for s in range(0, flat.size, CHUNK):
        out += np.bincount(flat[s:s + CHUNK], minlength=num_classes)[:num_classes]
    return out


def bit_counts(label: np.ndarray, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """Multi-label maps, one bit per class (bit c set: the pixel is of class c; `ignore_index` =
    ignored): pixels of each class, a chunk at a time."""
    flat = np.asarray(label).reshape(-1)
    out = np.zeros(num_classes, np.int64)
    for s in range(0, flat.size, CHUNK):
        chunk = flat[s:s + CHUNK]
        chunk = chunk[chunk != ignore_index]
        for c in range(num_classes):
            out[c] += np.count_nonzero(chunk & (1 << c))
    return out


def bits_to_masks(label, num_classes: int):
    """(..., H, W) bit label maps -> (..., C, H, W) bool masks (numpy or torch)."""
    if isinstance(label, np.ndarray):
        shifts = np.arange(num_classes, dtype=label.dtype).reshape(-1, 1, 1)
        return ((label[..., None, :, :] >> shifts) & 1).astype(bool)
    import torch

    shifts = torch.arange(num_classes, device=label.device, dtype=label.dtype).view(-1, 1, 1)
    return ((label.unsqueeze(-3) >> shifts) & 1).bool()


def masks_to_bits(masks):
    """(..., C, H, W) bool masks -> (..., H, W) uint8 bit label maps (C <= 7), numpy or torch."""
    if isinstance(masks, np.ndarray):
        weights = (1 << np.arange(masks.shape[-3], dtype=np.uint8)).reshape(-1, 1, 1)
        return (masks.astype(np.uint8) * weights).sum(-3, dtype=np.uint8)
    import torch

    weights = (1 << torch.arange(masks.shape[-3], device=masks.device)).view(-1, 1, 1).to(torch.uint8)
    return (masks.to(torch.uint8) * weights).sum(-3, dtype=torch.uint8)


def threshold_bits(probs: np.ndarray, thresholds, rows: int = 256) -> np.ndarray:
    """(C, H, W) probabilities -> the (H, W) uint8 map of the class bits above each class's
    threshold, a band of rows at a time (no full-image float32 or bool copy of a slide)."""
    probs = np.asarray(probs)
    thr = np.asarray(thresholds, np.float32).reshape(-1, 1, 1)
    out = np.empty(probs.shape[1:], np.uint8)
    for y in range(0, probs.shape[1], rows):
        out[y:y + rows] = masks_to_bits(probs[:, y:y + rows].astype(np.float32) > thr)
    return out
