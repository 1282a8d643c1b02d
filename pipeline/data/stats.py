"""Class statistics of a set of labelled images, and the sanity check they allow."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.data.sources import Source
from pipeline.errors import DataError
from pipeline.pixels import class_counts

IGNORE_SHARE_ALARM = 0.3  # above this share of ignored pixels, a class with no pixel is a red flag


@dataclass(frozen=True)
class LabelStats:
    pixels: np.ndarray  # per class
    image_pixels: np.ndarray  # per class: pixels of the images that contain the class
    ignored: int
    total: int


def label_stats(pool: Source, indices, num_classes: int, ignore_index: int) -> LabelStats:
    pixels = np.zeros(num_classes, np.int64)
    image_pixels = np.zeros(num_classes, np.int64)
    ignored = total = 0
    for i in indices:
        m = pool.mask(i)
        counts = pool.class_pixels(m)
        pixels += counts
        image_pixels += (counts > 0) * m.size
        ignored += int(np.count_nonzero(m == ignore_index))
        total += int(m.size)
    return LabelStats(pixels, image_pixels, ignored, total)


def check_label_share(stats: LabelStats, classes, ignore_index: int, where: str) -> None:
    """Stop when a declared class never appears while the ignore index covers a large share of
    the masks, or while it is the only other value: the marks of 0/255 binary masks read with
    ignore_index 255."""
    absent = [c for c, n in zip(classes, stats.pixels) if n == 0]
    share = stats.ignored / max(stats.total, 1)
    only_one_class = int((stats.pixels > 0).sum()) == 1 and stats.ignored > 0
    if absent and (share > IGNORE_SHARE_ALARM or only_one_class):
        raise DataError(f"{where}: class(es) {absent} have no pixel while the ignore index {ignore_index} covers "
                        f"{share:.0%} of mask pixels; are the masks 0/{ignore_index}? Map their values with "
                        f"data.mask_values (e.g. {{0: 0, {ignore_index}: 1}}) or set data.ignore_index")


def rarest_classes(stats: LabelStats, share: float = 1 / 3) -> list[int]:
    """The classes with the fewest pixels (at least one), those never seen excluded."""
    seen = [c for c in np.argsort(stats.pixels, kind="stable") if stats.pixels[c] > 0]
    return sorted(int(c) for c in seen[: max(1, round(len(stats.pixels) * share))])


def median_frequency_weights(stats: LabelStats, power: float = 1.0) -> list[float]:
    """SegNet's median frequency balancing: w_c = (median(f) / f_c) ** power, where f_c is class c's
    pixel share in the images that contain it. Classes never seen get the largest weight."""
    seen = stats.pixels > 0
    freq = np.where(seen, stats.pixels / np.maximum(stats.image_pixels, 1), np.nan)
    w = (np.nanmedian(freq) / freq) ** power
    return [float(x) for x in np.where(seen, w, np.nanmax(w))]


def log_prior(truths, num_classes: int, ignore_index: int) -> np.ndarray:
    """log(f_c / median f) per class: minus the log of median-frequency balancing's weight, f_c
    counted on the labelled pixels of `truths` (label maps); 0 for a class never seen."""
    pixels, labelled = np.zeros(num_classes, np.int64), np.zeros(num_classes, np.int64)
    for t in truths:
        counts = class_counts(t[t != ignore_index], num_classes)
        pixels += counts
        labelled[counts > 0] += counts.sum()
    if not pixels.any():
        return np.zeros(num_classes)
    weights = np.asarray(median_frequency_weights(LabelStats(pixels, labelled, 0, 0)))
    return np.where(pixels > 0, -np.log(weights), 0.0)
