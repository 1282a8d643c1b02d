"""Class statistics of a set of labelled images."""
from __future__ import annotations

import numpy as np

from pipeline.data.sources import Source


def median_frequency_weights(pool: Source, indices, num_classes: int, ignore_index: int) -> list[float]:
    """SegNet's median frequency balancing: w_c = median(f) / f_c, where f_c is class c's pixel share
    in the images that contain it. Classes never seen get the largest weight."""
    pixels = np.zeros(num_classes, np.float64)
    image_pixels = np.zeros(num_classes, np.float64)
    for i in indices:
        m = pool.mask(i)
        counts = np.bincount(m[m != ignore_index].ravel(), minlength=num_classes)[:num_classes]
        pixels += counts
        image_pixels += (counts > 0) * m.size
    seen = pixels > 0
    freq = np.where(seen, pixels / np.maximum(image_pixels, 1), np.nan)
    w = np.nanmedian(freq) / freq
    return [float(x) for x in np.where(seen, w, np.nanmax(w))]
