"""The third built-in demo: large slides in the HuBMAP mould, generated from a seed. Pale tissue with
empty glass around it, sparse round glomeruli and a few thick dark-red vessels; training slides of
2048x3072 and a test slide of 6000x8000 pixels, far larger than the other demos, so training reads
windows (train.tile) and inference slides a window over each slide (infer.window). Dataset mIoU,
per-class RLE rows. The test labels play the hidden ground truth."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from pipeline.io import save_png, write_bytes

CLASSES = ["background", "glomerulus", "vessel"]
TRAIN_SIZE, TEST_SIZE = (2048, 3072), (6000, 8000)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: int) -> np.ndarray:
    """Low-frequency noise in [0, 1): random values on a coarse grid, upsampled."""
    h, w = shape
    coarse = rng.random((h // cell + 2, w // cell + 2)).astype(np.float32)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)


def _render(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    h, w = shape
    tissue = _smooth_noise(rng, shape, 700) > 0.35  # the rest is empty glass
    label = np.zeros(shape, np.uint8)
    n_glom = int(h * w / 4e5)
    for _ in range(n_glom):
        cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
        if tissue[cy, cx]:
            axes = (int(rng.integers(35, 90)), int(rng.integers(35, 90)))
            cv2.ellipse(label, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    for _ in range(max(2, int(h * w / 4e6))):  # vessels: thick wandering polylines
        pts = [(int(rng.integers(0, w)), int(rng.integers(0, h)))]
        for _ in range(8):
            pts.append((int(pts[-1][0] + rng.normal(0, 150)), int(pts[-1][1] + rng.normal(0, 150))))
        cv2.polylines(label, [np.array(pts, np.int32)], False, 2, thickness=int(rng.integers(10, 22)))
    label[~tissue] = 0
    shade = 0.85 + 0.15 * _smooth_noise(rng, shape, 150)
    img = np.empty((h, w, 3), np.uint8)
    for c, (glass, cell, glom, vessel) in enumerate(((242, 226, 196, 170), (240, 180, 120, 50), (245, 215, 190, 70))):
        ch = np.where(tissue, np.float32(cell), np.float32(glass)) * shade
        ch[label == 1] = glom * shade[label == 1]
        ch[label == 2] = vessel
        ch += rng.normal(0, 6, shape).astype(np.float32)
        img[..., c] = np.clip(ch, 0, 255)
    return img, label


def generate(root: Path, seed: int = 0, n_train: int = 4, n_test: int = 1,
             train_size: tuple[int, int] = TRAIN_SIZE, test_size: tuple[int, int] = TEST_SIZE) -> Path:
    """Write the slides demo under root (JPEG slides, PNG label maps); deterministic for a seed."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, n, size in (("train", n_train, train_size), ("test", n_test, test_size)):
        for k in range(n):
            img, label = _render(rng, size)
            name = f"{split}{k:02d}"
            _, jpeg = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 92])
            write_bytes(root / split / "images" / f"{name}.jpg", jpeg.tobytes())
            save_png(root / split / ("masks" if split == "train" else "truth") / f"{name}.png", label)
    return root
