"""Class paste (ClassMix-style copy-paste for semantic masks): the pixels of chosen classes in a
donor image, with their labels, are copied onto another training image at the same position. A
street camera sees poles, signs and people at similar places in every frame, so the composite
stays plausible and the thin classes get more pixels without more images or more compute."""
from __future__ import annotations

import numpy as np


def paste_classes(image: np.ndarray, mask: np.ndarray, donor_image: np.ndarray, donor_mask: np.ndarray,
                  classes) -> tuple[np.ndarray, np.ndarray]:
    """New (image, mask): where `donor_mask` holds one of `classes`, the donor's pixel and label.
    Images of different sizes share their top-left overlap. The inputs are never modified (a
    source may hand out cached arrays)."""
    h, w = min(mask.shape[0], donor_mask.shape[0]), min(mask.shape[1], donor_mask.shape[1])
    where = np.isin(donor_mask[:h, :w], np.asarray(list(classes), dtype=donor_mask.dtype))
    image, mask = image.copy(), mask.copy()
    image[:h, :w][where] = donor_image[:h, :w][where]
    mask[:h, :w][where] = donor_mask[:h, :w][where]
    return image, mask


def paste_donor(seed: int, epoch: int, k: int, n: int, p: float) -> int | None:
    """Which of the n dataset positions donates to position k in this epoch (never k itself), or
    None; a pure function of its arguments, so resumed runs and loader workers agree."""
    if p <= 0 or n < 2:
        return None
    rng = np.random.default_rng([seed, epoch, k, 0x9A57E])
    if rng.random() >= p:
        return None
    j = int(rng.integers(n - 1))
    return j + (j >= k)
