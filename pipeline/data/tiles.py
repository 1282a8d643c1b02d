"""Training on windows of large images. Each image and label map is decoded once into an .npy file
that later reads memory-map, so a window costs its own pixels, not a decode of the whole slide.
A share of the training windows is centred on labelled foreground pixels (any class but the
background and the ignore index), so mostly-empty slides still teach the model; validation cuts
every image into a grid of windows, the partial ones padded with the ignore index."""
from __future__ import annotations

import hashlib
from pathlib import Path

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.data.dataset import to_tensor
from pipeline.data.sources import Source
from pipeline.io import write_with

FG_SAMPLES = 4096  # foreground pixel positions kept per image to centre windows on
ROWS = 512  # rows of a label map scanned at a time


def foreground_sample(mask: np.ndarray, background: int, ignore_index: int, k: int, seed: int) -> np.ndarray:
    """Up to k (y, x) positions drawn uniformly from the foreground pixels, scanning a band of rows
    at a time (the positions of every foreground pixel of a slide would not fit in memory)."""
    rng = np.random.default_rng(seed)
    picks, weights = [], []
    W = mask.shape[1]
    for y in range(0, mask.shape[0], ROWS):
        band = np.asarray(mask[y:y + ROWS])
        flat = np.flatnonzero((band != background) & (band != ignore_index))
        if flat.size:
            kept = rng.choice(flat, size=min(k, flat.size), replace=False)
            picks.append(kept + y * W)
            weights.append(np.full(kept.size, flat.size / kept.size))  # each kept pixel stands for this many
    if not picks:
        return np.zeros((0, 2), np.int32)
    pool, w = np.concatenate(picks), np.concatenate(weights)
    chosen = rng.choice(pool, size=min(k, pool.size), replace=False, p=w / w.sum())
    return np.stack(np.divmod(np.sort(chosen), W), 1).astype(np.int32)


class DecodedCache:
    """Decoded images, label maps and foreground samples of a source as .npy files under `root`,
    named by a hash of the source file's path, size and modification time (an edited file gets a
    new entry). Written atomically; read memory-mapped."""

    def __init__(self, source: Source, root: Path, background: int, ignore_index: int):
        self.source, self.root, self.background, self.ignore_index = source, Path(root), background, ignore_index
        self._opened: dict = {}  # per process: names and maps (a training window reads 3 arrays)

    def __getstate__(self):  # loader workers open their own maps (pickling one would copy the slide)
        return {**self.__dict__, "_opened": {}}

    def _key(self, i: int) -> str:
        if ("key", i) in self._opened:
            return self._opened[("key", i)]
        rec = self.source.records[i]
        h = hashlib.sha1(rec.stem.encode())
        for p in self.source.files(i):
            if Path(p).exists():
                st = Path(p).stat()
                h.update(f"{Path(p).resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
        h.update(f"{self.background}:{self.ignore_index}".encode())
        self._opened[("key", i)] = f"{rec.stem}.{h.hexdigest()[:12]}"  # files are stat-ed once per process
        return self._opened[("key", i)]

    def _load(self, name: str, make) -> np.ndarray:
        if name in self._opened:
            return self._opened[name]
        path = self.root / f"{name}.npy"
        if not path.exists():
            array = make()
            write_with(path, lambda f: np.save(f, array))
        self._opened[name] = np.load(path, mmap_mode="r")
        return self._opened[name]

    def image(self, i: int) -> np.ndarray:
        return self._load(f"{self._key(i)}.image", lambda: self.source.image(i))

    def mask(self, i: int) -> np.ndarray:
        return self._load(f"{self._key(i)}.mask", lambda: self.source.mask(i))

    def foreground(self, i: int) -> np.ndarray:
        return self._load(f"{self._key(i)}.fg", lambda: foreground_sample(
            self.mask(i), self.background, self.ignore_index, FG_SAMPLES, seed=i))


def _cut(array: np.ndarray, y: int, x: int, h: int, w: int, fill: int) -> np.ndarray:
    """array[y:y+h, x:x+w] copied out of the memory map, padded with `fill` past the image."""
    part = np.asarray(array[y:y + h, x:x + w])
    if part.shape[:2] == (h, w):
        return np.ascontiguousarray(part)
    out = np.full((h, w, *array.shape[2:]), fill, dtype=array.dtype)
    out[: part.shape[0], : part.shape[1]] = part
    return out


class TileDataset(Dataset):
    """`per_image` random windows of each image per epoch; with probability `fg_share` the window
    is centred on a foreground pixel (when the image has any). The window position and the
    augmentation are pure functions of (seed, epoch, index), like SegDataset's."""

    def __init__(self, cache: DecodedCache, indices, tile: tuple[int, int], per_image: int, fg_share: float,
                 transform: A.Compose, seed: int = 0):
        self.cache, self.indices, self.tile, self.per_image = cache, list(indices), tuple(tile), per_image
        self.fg_share, self.transform, self.seed = fg_share, transform, seed

    def __len__(self) -> int:
        return len(self.indices) * self.per_image

    def window(self, k: int) -> tuple[int, int, int, bool]:
        """(source index, top, left, centred on foreground) of sample k (epoch * len + position)."""
        epoch, k = divmod(k, len(self))
        i = self.indices[k // self.per_image]
        rng = np.random.default_rng([self.seed, epoch, k])
        H, W = self.cache.mask(i).shape
        th, tw = self.tile
        fg = self.cache.foreground(i)
        on_fg = len(fg) > 0 and rng.random() < self.fg_share
        if on_fg:
            cy, cx = fg[rng.integers(len(fg))]
            y, x = int(cy) - th // 2 + int(rng.integers(-th // 4, th // 4 + 1)), \
                int(cx) - tw // 2 + int(rng.integers(-tw // 4, tw // 4 + 1))
        else:
            y, x = int(rng.integers(0, max(H - th, 0) + 1)), int(rng.integers(0, max(W - tw, 0) + 1))
        return i, min(max(y, 0), max(H - th, 0)), min(max(x, 0), max(W - tw, 0)), on_fg

    def __getitem__(self, k: int):
        i, y, x, _ = self.window(k)
        th, tw = self.tile
        image = _cut(self.cache.image(i), y, x, th, tw, 0)
        mask = _cut(self.cache.mask(i), y, x, th, tw, self.cache.ignore_index)
        self.transform.set_random_seed(self.seed * 1_000_003 + k)
        out = self.transform(image=image, mask=mask)
        return to_tensor(out["image"]), torch.from_numpy(out["mask"].astype(np.int64))


class GridTiles(Dataset):
    """Every image cut into a grid of windows (validation): each labelled pixel is scored once."""

    def __init__(self, cache: DecodedCache, indices, tile: tuple[int, int], transform: A.Compose):
        self.cache, self.tile, self.transform = cache, tuple(tile), transform
        th, tw = self.tile
        self.windows = []
        for i in indices:
            H, W = (cache.source.records[i].height, cache.source.records[i].width)
            if not H:
                H, W = cache.mask(i).shape
            self.windows += [(i, y, x) for y in range(0, H, th) for x in range(0, W, tw)]

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, k: int):
        i, y, x = self.windows[k]
        th, tw = self.tile
        image = _cut(self.cache.image(i), y, x, th, tw, 0)
        mask = _cut(self.cache.mask(i), y, x, th, tw, self.cache.ignore_index)
        return to_tensor(self.transform(image=image)["image"]), torch.from_numpy(mask.astype(np.int64))
