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
