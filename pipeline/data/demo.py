"""The built-in demo competition: synthetic trash photos in COCO form, generated from a seed.

Five object classes on a textured background, each with its own colour and texture so a small
model can learn them; some objects lie inside a bag (real multi-label pixels). The test split's
labels go to a separate folder that plays the organisers' hidden ground truth."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from pipeline.data.overlap import compose_label_map
from pipeline.io import save_png, write_json

CLASSES = ["background", "bottle", "bag", "can", "cup", "paper"]
COLOURS = {1: (40, 160, 60), 2: (200, 200, 210), 3: (200, 40, 40), 4: (50, 80, 200), 5: (230, 210, 60)}
HEIGHT, WIDTH = 120, 152  # deliberately not multiples of 32: the models pad and crop


def _polygon(rng: np.random.Generator, cls: int, cx: float, cy: float, scale: float) -> list[float]:
    if cls == 2:  # bag: irregular blob
        n = 12
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        r = scale * rng.uniform(0.7, 1.0, n)
    elif cls == 4:  # cup: circle
        n = 16
        ang = np.linspace(0, 2 * np.pi, n, endpoint=False)
        r = np.full(n, scale * 0.5)
    elif cls == 5:  # paper: triangle
        ang = rng.uniform(0, 2 * np.pi) + np.array([0, 2.1, 4.2])
        r = np.full(3, scale * 0.6)
    else:  # bottle (long) or can (short): rotated rectangle
        half_l, half_w = (scale * 0.7, scale * 0.22) if cls == 1 else (scale * 0.35, scale * 0.25)
        t = rng.uniform(0, np.pi)
        c, s = np.cos(t), np.sin(t)
        pts = [(dx * c - dy * s, dx * s + dy * c) for dx, dy in
               [(-half_l, -half_w), (half_l, -half_w), (half_l, half_w), (-half_l, half_w)]]
        return [v for x, y in pts for v in (float(np.clip(cx + x, 0, WIDTH)), float(np.clip(cy + y, 0, HEIGHT)))]
    xs = np.clip(cx + r * np.cos(ang), 0, WIDTH)
    ys = np.clip(cy + r * np.sin(ang), 0, HEIGHT)
    return [float(v) for xy in zip(xs, ys) for v in xy]


def _texture(rng: np.random.Generator, cls: int, h: int, w: int) -> np.ndarray:
    base = np.array(COLOURS.get(cls, (110, 90, 70)), dtype=np.float32)
    img = base + rng.normal(0, 18, (h, w, 3))
    yy, xx = np.mgrid[0:h, 0:w]
    if cls == 2:
        img += (((xx + yy) // 4) % 2)[..., None] * 30.0  # bag: diagonal stripes
    elif cls == 3:
        img += ((yy // 3) % 2)[..., None] * 25.0  # can: rings
    elif cls == 0:
        img += rng.normal(0, 10, (1, 1, 3))
    return img


def _image(rng: np.random.Generator):
    anns = []  # (class, polygon)
    for _ in range(rng.integers(1, 3)):
        bag = (2, rng.uniform(30, WIDTH - 30), rng.uniform(30, HEIGHT - 30), rng.uniform(22, 38))
        anns.append((bag[0], _polygon(rng, *bag)))
        if rng.random() < 0.6:  # something inside the bag: multi-label pixels
            cls = int(rng.choice([1, 3, 4, 5]))
            anns.append((cls, _polygon(rng, cls, bag[1] + rng.uniform(-8, 8), bag[2] + rng.uniform(-8, 8),
                                       rng.uniform(12, 18))))
    for _ in range(rng.integers(1, 4)):
        cls = int(rng.choice([1, 3, 4, 5]))
        anns.append((cls, _polygon(rng, cls, rng.uniform(10, WIDTH - 10), rng.uniform(10, HEIGHT - 10),
                                   rng.uniform(14, 26))))
    order = rng.permutation(len(anns))
    return [anns[i] for i in order]


def _render(rng, anns):
    masks = [mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([poly], HEIGHT, WIDTH))) for _, poly in anns]
    classes = [c for c, _ in anns]
    label = compose_label_map(masks, classes, "area_desc", (HEIGHT, WIDTH), 0, 255)
    img = _texture(rng, 0, HEIGHT, WIDTH)
    for c in np.unique(label):
        if c:
            img[label == c] = _texture(rng, int(c), HEIGHT, WIDTH)[label == c]
    return np.clip(img, 0, 255).astype(np.uint8), label, masks


def generate(root: Path, seed: int = 0, n_train: int = 100, n_test: int = 30) -> Path:
    """Write the demo competition under root; deterministic for a given seed."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    categories = [{"id": i, "name": n, "supercategory": "trash"} for i, n in enumerate(CLASSES) if i]
    ann_id = 1
    for split, n in (("train", n_train), ("test", n_test)):
        images, annotations = [], []
        for k in range(n):
            anns = _image(rng)
            img, label, masks = _render(rng, anns)
            name = f"{split}_{k:03d}"
            save_png(root / "images" / f"{name}.png", img)
            images.append({"id": k + 1, "file_name": f"images/{name}.png", "height": HEIGHT, "width": WIDTH})
            if split == "test":
                save_png(root / "test_truth" / f"{name}.png", label)
                continue
            for (cls, poly), m in zip(anns, masks):
                rle = mask_utils.encode(np.asfortranarray(m))
                if ann_id % 10 == 0:  # a few compressed-RLE annotations, as real COCO files have
                    seg = {"size": rle["size"], "counts": rle["counts"].decode()}
                else:
                    seg = [poly]
                annotations.append({"id": ann_id, "image_id": k + 1, "category_id": cls, "segmentation": seg,
                                    "area": float(mask_utils.area(rle)),
                                    "bbox": [float(v) for v in mask_utils.toBbox(rle)], "iscrowd": 0})
                ann_id += 1
        doc = {"images": images, "categories": categories}
        if split == "train":
            doc["annotations"] = annotations
        write_json(root / f"{split}.json", doc)
    return root
