"""Torch datasets over a Source. Train and validation pipelines are built by separate functions:
validation never gets an augmentation. Augmentation is a pure function of (seed, epoch, index),
so a resumed run and any number of loader workers see the same samples. The epoch travels inside
the sampled index (EpochSampler): persistent loader workers hold their own copy of the dataset,
so setting an attribute on it in the main process would never reach them."""
from __future__ import annotations

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from pipeline.config import TrainConfig
from pipeline.errors import ConfigError
from pipeline.data.paste import paste_classes, paste_donor
from pipeline.data.sources import Source

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # (mean, std); an encoder may need its own


def _augmentation(spec: dict) -> A.BasicTransform:
    spec = dict(spec)
    name = spec.pop("name", None)
    if not name or not hasattr(A, name):
        raise ConfigError(f"train.augment: unknown albumentations transform {name!r}")
    try:
        return getattr(A, name)(**spec)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"train.augment: {name}: {str(e).splitlines()[0]}") from None


def train_transform(tc: TrainConfig, ignore_index: int, rare: list[int] = (), num_classes: int = 0,
                    norm: tuple = IMAGENET) -> A.Compose:
    """Resize, augmentations, then the crop: with probability train.rare_crop a crop that contains
    pixels of the `rare` classes (when the image has any), else a uniform random crop. `norm`: the
    encoder's input (mean, std)."""
    steps = []
    if tc.resize:
        steps.append(A.Resize(*tc.resize))
    steps += [_augmentation(s) for s in tc.augment]
    if tc.crop:
        steps.append(A.PadIfNeeded(*tc.crop, fill=0, fill_mask=ignore_index))
        if rare and tc.rare_crop > 0:
            others = [c for c in range(num_classes) if c not in rare] + [ignore_index]
            near_rare = A.CropNonEmptyMaskIfExists(*tc.crop, ignore_values=others, p=tc.rare_crop)
            steps.append(A.OneOf([near_rare, A.RandomCrop(*tc.crop, p=1 - tc.rare_crop)], p=1.0)
                         if tc.rare_crop < 1 else near_rare)
        else:
            steps.append(A.RandomCrop(*tc.crop))
    steps.append(A.Normalize(*norm))
    return A.Compose(steps)


def eval_transform(tc: TrainConfig, norm: tuple = IMAGENET) -> A.Compose:
    return A.Compose(([A.Resize(*tc.resize)] if tc.resize else []) + [A.Normalize(*norm)])


def to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()


class SegDataset(Dataset):
    """`paste`: the share of items onto which another item's pixels of `paste_classes` are copied
    before the augmentations (train.class_paste; training only)."""

    def __init__(self, source: Source, indices, transform: A.Compose, seed: int = 0, with_mask: bool = True,
                 paste: float = 0.0, paste_classes: tuple[int, ...] = ()):
        self.source, self.indices, self.transform = source, list(indices), transform
        self.seed, self.with_mask = seed, with_mask
        self.paste, self.paste_classes = (paste, tuple(paste_classes)) if paste_classes else (0.0, ())

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int):
        epoch, k = divmod(k, len(self.indices))  # see EpochSampler
        i = self.indices[k]
        image = self.source.image(i)
        self.transform.set_random_seed(self.seed * 1_000_003 + epoch * 10_007 + k)
        if self.with_mask:
            mask = self.source.mask(i)
            j = paste_donor(self.seed, epoch, k, len(self.indices), self.paste)
            if j is not None:
                donor = self.indices[j]
                image, mask = paste_classes(image, mask, self.source.image(donor), self.source.mask(donor),
                                            self.paste_classes)
            out = self.transform(image=image, mask=mask)
            return to_tensor(out["image"]), torch.from_numpy(out["mask"].astype(np.int64))
        return to_tensor(self.transform(image=image)["image"]), i


class EpochSampler(Sampler):
    """Wraps a sampler with set_epoch (e.g. DistributedSampler): yields epoch * n + index."""

    def __init__(self, sampler, n: int):
        self.sampler, self.n, self.epoch = sampler, n, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        return (self.epoch * self.n + i for i in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


class PadCollate:
    """Batches (image, mask) pairs of different sizes: each is padded at the bottom/right to the
    batch's largest size, images with zeros and masks with the ignore index, so the padding
    counts in no loss and no metric."""

    def __init__(self, ignore_index: int):
        self.ignore_index = ignore_index

    def __call__(self, batch):
        xs, ys = zip(*batch)
        if len({tuple(x.shape) for x in xs}) == 1:
            return torch.stack(xs), torch.stack(ys)
        h, w = max(x.shape[-2] for x in xs), max(x.shape[-1] for x in xs)
        images = xs[0].new_zeros((len(xs), xs[0].shape[0], h, w))
        masks = ys[0].new_full((len(ys), h, w), self.ignore_index)
        for k, (x, y) in enumerate(zip(xs, ys)):
            images[k, :, : x.shape[-2], : x.shape[-1]] = x
            masks[k, : y.shape[-2], : y.shape[-1]] = y
        return images, masks
