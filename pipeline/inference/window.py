"""Sliding-window inference for images too large to predict whole. Windows overlap; each window's
probabilities are weighted by a 2-D Hann window (so the less reliable window borders count little
and seams vanish) and normalised by the summed weight. Windows are predicted a row of windows at a
time, batched, and the rows of the image that no later window touches are handed out at once: the
working memory is one band of window height across the image, whatever the image's height."""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch


def starts(length: int, window: int, overlap: float) -> list[int]:
    """Window starts along one axis: stride = window * (1 - overlap) (at least 1 pixel), the last
    window flush with the end, so every pixel is covered and no window leaves the image. An axis
    shorter than the window gets one window of the axis' length."""
    if length <= window:
        return [0]
    stride = max(1, int(window * (1.0 - overlap)))
    out = list(range(0, length - window, stride))
    return out + [length - window]


def hann(h: int, w: int) -> torch.Tensor:
    """sin^2 at pixel centres: largest mid-window, small but never zero at the border, so a pixel
    covered by one window only (an image corner) keeps that window's prediction exactly."""
    def axis(n: int) -> torch.Tensor:
        return torch.sin(torch.pi * (torch.arange(n, dtype=torch.float64) + 0.5) / n) ** 2
    return (axis(h)[:, None] * axis(w)[None, :]).float()


def sliding_window(image: np.ndarray, predict: Callable[[list[np.ndarray]], torch.Tensor], num_classes: int,
                   window: tuple[int, int], overlap: float, batch_size: int) -> Iterator[tuple[int, torch.Tensor]]:
    """Yields (first row, probabilities C x rows x W float32) bands, top to bottom, that together
    cover the image (H x W x ...). `predict` takes a list of equally sized window crops of `image` and
    returns their (N, C, h, w) probabilities."""
    H, W = image.shape[:2]
    th, tw = min(window[0], H), min(window[1], W)
    ys, xs = starts(H, th, overlap), starts(W, tw, overlap)
    weight = hann(th, tw)
    acc = torch.zeros(num_classes, th, W)
    wsum = torch.zeros(th, W)
    base = 0  # acc row 0 is image row `base`
    for y in ys:
        if y > base:  # rows base..y are final: no later window starts above y
            d = y - base
            yield base, acc[:, :d] / wsum[:d]
            acc = torch.cat([acc[:, d:], acc.new_zeros(num_classes, d, W)], 1)
            wsum = torch.cat([wsum[d:], wsum.new_zeros(d, W)], 0)
            base = y
        for k in range(0, len(xs), batch_size):
            chunk = xs[k:k + batch_size]
            probs = predict([image[y:y + th, x:x + tw] for x in chunk]).float().cpu()
            for x, p in zip(chunk, probs):
                acc[:, :, x:x + tw] += p * weight
                wsum[:, x:x + tw] += weight
    yield base, acc / wsum


def assemble(bands: Iterator[tuple[int, torch.Tensor]], num_classes: int, shape: tuple[int, int],
             dtype=torch.float16) -> torch.Tensor:
    """The bands of `sliding_window` as one (C, H, W) tensor, in `dtype` (float16: 2 bytes per class
    and pixel; the float32 accumulators exist for one band only)."""
    out = torch.empty(num_classes, *shape, dtype=dtype)
    for y, band in bands:
        out[:, y:y + band.shape[1]] = band.to(dtype)
    return out
