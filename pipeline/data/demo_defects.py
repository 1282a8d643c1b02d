"""The second built-in demo: a steel-defect competition in the Severstal / Clouds mould, generated
from a seed. Grey textured strips with four defect kinds (scratch, pit cluster, patch, crack), most
images with none or one; mask folders; scored by mean Dice over (image, class) with empty = 1 and
submitted as `Image_Label` rows at a reduced size. The test labels play the hidden ground truth."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from pipeline.io import save_png

CLASSES = ["background", "scratch", "pits", "patch", "crack"]
HEIGHT, WIDTH = 96, 160


def _defect(rng: np.random.Generator, cls: int, label: np.ndarray) -> None:
    h, w = label.shape
    if cls == 1:  # scratch: a long thin line
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        angle = rng.uniform(0, np.pi)
        length = rng.uniform(40, 90)
        x1, y1 = int(x0 + length * np.cos(angle)), int(y0 + length * np.sin(angle))
        cv2.line(label, (x0, y0), (x1, y1), cls, thickness=2)
    elif cls == 2:  # pits: a cluster of small dots
        cx, cy = rng.uniform(15, w - 15), rng.uniform(15, h - 15)
        for _ in range(int(rng.integers(5, 12))):
            cv2.circle(label, (int(cx + rng.normal(0, 7)), int(cy + rng.normal(0, 7))), int(rng.integers(1, 3)), cls, -1)
    elif cls == 3:  # patch: a large soft blob
        cx, cy = int(rng.uniform(20, w - 20)), int(rng.uniform(20, h - 20))
        cv2.ellipse(label, (cx, cy), (int(rng.integers(10, 25)), int(rng.integers(8, 18))), float(rng.uniform(0, 180)),
                    0, 360, cls, -1)
    else:  # crack: a jagged polyline
        pts = [(int(rng.uniform(10, w - 10)), int(rng.uniform(10, h - 10)))]
        for _ in range(6):
            pts.append((int(np.clip(pts[-1][0] + rng.normal(0, 10), 0, w - 1)),
                        int(np.clip(pts[-1][1] + rng.normal(0, 10), 0, h - 1))))
        cv2.polylines(label, [np.array(pts, np.int32)], False, cls, thickness=1)


def _render(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    label = np.zeros((HEIGHT, WIDTH), np.uint8)
    for cls in rng.choice([1, 2, 3, 4], size=rng.choice([0, 1, 1, 2], p=[0.4, 0.25, 0.2, 0.15]), replace=False):
        _defect(rng, int(cls), label)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    grey = 120 + 15 * np.sin(xx / rng.uniform(6, 12)) + rng.normal(0, 8, label.shape)  # rolled-steel stripes
    shade = {1: -70, 2: -55, 3: 45, 4: -80}
    for c, d in shade.items():
        grey[label == c] += d + rng.normal(0, 6, int((label == c).sum()))
    img = np.clip(grey, 0, 255).astype(np.uint8)
    return np.repeat(img[..., None], 3, axis=2), label


def _render_overlapping(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The multilabel variant: each defect drawn into its own mask, so they may overlap (a scratch
    across a patch, pits inside one); the shades add up where they do."""
    n = rng.choice([0, 1, 2, 3], p=[0.3, 0.25, 0.3, 0.15])
    masks = np.zeros((5, HEIGHT, WIDTH), np.uint8)
    chosen = [int(c) for c in rng.choice([1, 2, 3, 4], size=n, replace=False)]
    for cls in chosen:
        _defect(rng, cls, masks[cls])
    if 3 in chosen and len(chosen) > 1:  # make the overlap likely: move one other defect onto the patch
        ys, xs = np.nonzero(masks[3])
        other = next(c for c in chosen if c != 3)
        oy, ox = np.nonzero(masks[other])
        if ys.size and oy.size:
            dy, dx = int(ys.mean() - oy.mean()), int(xs.mean() - ox.mean())
            masks[other] = np.roll(masks[other], (dy, dx), axis=(0, 1))
    masks = (masks > 0).astype(np.uint8)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    grey = 120 + 15 * np.sin(xx / rng.uniform(6, 12)) + rng.normal(0, 8, (HEIGHT, WIDTH))
    for c, d in {1: -70, 2: -55, 3: 45, 4: -80}.items():
        grey += masks[c] * (d + rng.normal(0, 6, (HEIGHT, WIDTH)))
    img = np.clip(grey, 0, 255).astype(np.uint8)
    return np.repeat(img[..., None], 3, axis=2), masks


def generate(root: Path, seed: int = 0, n_train: int = 120, n_test: int = 40, overlapping: bool = False) -> Path:
    """Write the defects demo under root (mask folders; `overlapping`: one folder of 0/255 masks
    per class, defects free to overlap); deterministic for a given seed."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for k in range(n):
            name, labels = f"{split}{k:04d}", root / split / ("masks" if split == "train" else "truth")
            if overlapping:
                img, masks = _render_overlapping(rng)
                for c, cls in enumerate(CLASSES[1:], start=1):
                    save_png(labels / cls / f"{name}.png", masks[c] * 255)
            else:
                img, label = _render(rng)
                save_png(labels / f"{name}.png", label)
            save_png(root / split / "images" / f"{name}.png", img)
    return root
