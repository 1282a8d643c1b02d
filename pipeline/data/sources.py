"""One interface over both dataset formats: a split is a list of image records with an image
reader and (when labelled) a label-map reader. COCO label maps are cached on disk."""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as mask_utils

from pipeline.config import DataConfig
from pipeline.errors import DataError
from pipeline.data.coco import CocoSet, ImageRecord, ann_to_rle, class_map, load_coco
from pipeline.data.overlap import compose_label_map
from pipeline.io import save_png
from pipeline.pixels import bit_counts, class_counts

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def _to_rgb8(im: Image.Image) -> np.ndarray:
    """8-bit RGB. 16-bit grayscale is scaled by its range (PIL's convert("RGB") clips it to 255, which
    turns a 16-bit photo into a constant image); float images by their maximum."""
    if im.mode not in ("I;16", "I;16B", "I;16L", "I", "F"):
        return np.asarray(im.convert("RGB"))
    a = np.asarray(im).astype(np.float64)
    top = 65535.0 if (im.mode != "F" and a.max(initial=0) <= 65535) else max(a.max(initial=0), 1.0)
    g = np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=2)


def read_image(path: Path, record: str = "") -> np.ndarray:
    try:
        with Image.open(path) as im:
            return _to_rgb8(im)
    except FileNotFoundError:
        raise DataError(f"{path}: image file of {record or 'record'} not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: unreadable image of {record or 'record'} ({e})") from None


def image_size(path: Path, record: str = "") -> tuple[int, int]:
    """(width, height) from the header only."""
    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        raise DataError(f"{path}: image file of {record or 'record'} not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: unreadable image of {record or 'record'} ({e})") from None


LOSSLESS = ("PNG", "TIFF", "BMP", "PPM")  # label maps must decode to exactly the values saved


def read_label_png(path: Path, values: dict | None = None) -> np.ndarray:
    """A single-channel label PNG as uint8, read faithfully at any bit depth; `values` maps raw
    values to labels (e.g. {0: 0, 255: 1} for 0/255 binary masks). A value that does not fit 8 bits
    after mapping is refused rather than wrapped."""
    try:
        with Image.open(path) as im:
            if im.format not in LOSSLESS:
                raise DataError(f"{path}: a {im.format} file (by its content, whatever its name): a lossy format "
                                "changes label values at every edge; save label maps as PNG")
            if im.mode not in ("1", "L", "P", "I", "I;16", "I;16B", "I;16L"):
                raise DataError(f"{path}: label map must be a single-channel PNG, got mode {im.mode}")
            raw = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataError(f"{path}: unreadable label map ({e})") from None
    raw = raw.astype(np.uint8) if raw.dtype == bool else raw
    if values:
        lut_size = 65536 if raw.dtype.itemsize > 1 or max(values) > 255 else 256
        if raw.max(initial=0) >= lut_size or raw.min(initial=0) < 0:
            raise DataError(f"{path}: label value {int(raw.max())} is outside 0..{lut_size - 1}")
        lut = np.arange(lut_size, dtype=np.int64)
        for k, v in values.items():
            lut[k] = v
        raw = lut[raw]
    if raw.dtype != np.uint8:
        if raw.max(initial=0) > 255 or raw.min(initial=0) < 0:
            big = sorted(np.unique(raw[(raw > 255) | (raw < 0)]).tolist())[:5]
            raise DataError(f"{path}: label values {big} do not fit 8 bits; map them with data.mask_values")
        raw = raw.astype(np.uint8)
    return raw


class Source:
    records: list[ImageRecord]
    labelled: bool
    num_classes: int
    ignore_index: int
    skipped: list[str]

    def __len__(self) -> int:
        return len(self.records)

    def image(self, i: int) -> np.ndarray:
        rec = self.records[i]
        img = read_image(rec.path, f"image {rec.id!r}")
        if img.shape[:2] != (rec.height, rec.width):
            raise DataError(f"{rec.path}: image {rec.id!r} is {img.shape[1]}x{img.shape[0]}, "
                            f"its record says {rec.width}x{rec.height}")
        return img

    def mask(self, i: int) -> np.ndarray:
        raise NotImplementedError

    def files(self, i: int) -> list[Path]:
        """The files whose contents make image i and its label map."""
        return [p for p in (self.records[i].path,) if p is not None]

    multilabel: bool = False  # label maps hold one bit per class (data.overlap: multilabel)

    def class_pixels(self, mask: np.ndarray) -> np.ndarray:
        """Pixels of each class in one of this source's label maps."""
        if self.multilabel:
            return bit_counts(mask, self.num_classes, self.ignore_index)
        return class_counts(mask, self.num_classes)

    def presence(self) -> np.ndarray:
        """(images, classes) bool: which classes each image contains."""
        out = np.zeros((len(self), self.num_classes), dtype=bool)
        for i in range(len(self)):
            out[i] = self.class_pixels(self.mask(i)) > 0
        return out


class CocoSource(Source):
    def __init__(self, coco: CocoSet, data: DataConfig, cache_dir: Path | None = None):
        self.coco, self.records, self.labelled = coco, coco.images, True
        self.num_classes, self.ignore_index, self.skipped = data.num_classes, data.ignore_index, coco.skipped
        self.cmap = class_map(coco.categories, data.classes, data.category_map, str(coco.path), data.ignore_index)
        self.fill = 0 if data.unlabelled == "background" else data.ignore_index
        self.policy = data.overlap
        self.multilabel = data.overlap == "multilabel"
        self.priority = [data.classes.index(n) for n in data.priority]
        self.cache = None
        if cache_dir is not None:
            key = hashlib.sha1(Path(coco.path).read_bytes())
            key.update(json.dumps([sorted(self.cmap.items()), self.fill, self.policy, self.priority,
                                   data.ignore_index]).encode())
            self.cache = Path(cache_dir) / key.hexdigest()[:16]

    def rasterise(self, i: int, policy: str | None = None) -> np.ndarray:
        rec = self.records[i]
        anns = self.coco.anns.get(rec.id, [])
        masks = [mask_utils.decode(ann_to_rle(a, rec.height, rec.width)) for a in anns]
        classes = [self.cmap[a["category_id"]] for a in anns]
        return compose_label_map(masks, classes, policy or self.policy, (rec.height, rec.width),
                                 self.fill, self.ignore_index, self.priority)

    def mask(self, i: int) -> np.ndarray:
        rec = self.records[i]
        if self.cache is None:
            return self.rasterise(i)
        path = self.cache / f"{rec.stem}.png"
        if path.exists():
            try:
                m = read_label_png(path)
                if m.shape == (rec.height, rec.width):
                    return m
                log.warning("%s: cached mask has the wrong size; rebuilding", path)
            except (OSError, UnidentifiedImageError, DataError, ValueError) as e:
                log.warning("%s: corrupt cached mask (%s); rebuilding", path, e)
        m = self.rasterise(i)
        save_png(path, m)
        return m

    def files(self, i: int) -> list[Path]:
        return super().files(i) + [Path(self.coco.path)]

    def presence(self) -> np.ndarray:
        out = np.zeros((len(self), self.num_classes), dtype=bool)
        for i, rec in enumerate(self.records):
            for a in self.coco.anns.get(rec.id, []):
                out[i, self.cmap[a["category_id"]]] = True
            if self.fill == 0:
                out[i, 0] = True  # background is everywhere not covered
        return out


class MaskDirSource(Source):
    def __init__(self, images_dir: Path | None, masks_dir: Path | None, data: DataConfig,
                 stems: list[str] | None = None):
        self.num_classes, self.ignore_index, self.skipped = data.num_classes, data.ignore_index, []
        self.masks_dir = Path(masks_dir) if masks_dir else None
        self.labelled = self.masks_dir is not None
        base = Path(images_dir) if images_dir else self.masks_dir
        if base is None or not base.is_dir():
            raise DataError(f"{base}: image folder not found")
        files = sorted(p for p in base.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if stems is not None:
            wanted = set(stems)
            files = [p for p in files if p.stem in wanted]
        self.records, self.values = [], dict(data.mask_values)
        self.multilabel, self.class_names = data.overlap == "multilabel", list(data.classes)
        if self.multilabel and self.masks_dir is not None:  # one folder of binary PNGs per class but class 0
            missing = [str(self.masks_dir / n) for n in self.class_names[1:] if not (self.masks_dir / n).is_dir()]
            if missing:
                raise DataError(f"{self.masks_dir}: data.overlap multilabel reads one folder of binary masks per "
                                f"class; missing {missing}")
        for p in files:
            w = h = 0  # masks only: sizes come from the masks themselves
            try:
                if self.masks_dir is not None and not self.multilabel and not (self.masks_dir / f"{p.stem}.png").exists():
                    raise DataError(f"{self.masks_dir / (p.stem + '.png')}: no label map for image {p.name}")
                if images_dir:
                    w, h = image_size(p, f"image {p.name}")
            except DataError as e:
                if data.strict:
                    raise
                self.skipped.append(str(e))
                continue
            self.records.append(ImageRecord(p.stem, p.name, h, w, p if images_dir else None))

    def _class_paths(self, i: int) -> list[Path]:
        return [self.masks_dir / n / f"{self.records[i].stem}.png" for n in self.class_names[1:]]

    def files(self, i: int) -> list[Path]:
        if not self.masks_dir:
            return super().files(i)
        if self.multilabel:
            return super().files(i) + self._class_paths(i)
        return super().files(i) + [self.masks_dir / f"{self.records[i].stem}.png"]

    def _bits(self, i: int) -> np.ndarray:
        """Class bits from the per-class binary PNGs (non-zero: the class; a missing file: none);
        bit 0 (background) where no class is."""
        rec = self.records[i]
        out = None
        for c, path in enumerate(self._class_paths(i), start=1):
            if not path.exists():
                continue
            m = read_label_png(path)
            if rec.height and m.shape != (rec.height, rec.width):
                raise DataError(f"{path}: mask is {m.shape[1]}x{m.shape[0]}, image {rec.file_name} is {rec.width}x{rec.height}")
            if out is None:
                out = np.zeros(m.shape, np.uint8)
            elif m.shape != out.shape:
                raise DataError(f"{path}: mask is {m.shape[1]}x{m.shape[0]}, the image's other masks "
                                f"{out.shape[1]}x{out.shape[0]}")
            out[m > 0] |= np.uint8(1 << c)
        if out is None:
            if not rec.height:
                raise DataError(f"{self.masks_dir}: no mask of any class for {rec.file_name}, and no image to size it")
            out = np.zeros((rec.height, rec.width), np.uint8)
        out[out == 0] = 1
        return out

    def mask(self, i: int) -> np.ndarray:
        if self.multilabel:
            return self._bits(i)
        rec = self.records[i]
        path = self.masks_dir / f"{rec.stem}.png"
        m = read_label_png(path, self.values)
        if rec.height and m.shape != (rec.height, rec.width):
            raise DataError(f"{path}: label map is {m.shape[1]}x{m.shape[0]}, image {rec.file_name} "
                            f"is {rec.width}x{rec.height}")
        bad = (m >= self.num_classes) & (m != self.ignore_index)
        if bad.any():
            raise DataError(f"{path}: label values {sorted(np.unique(m[bad]).tolist())[:5]} outside classes "
                            f"0..{self.num_classes - 1} and ignore index {self.ignore_index}")
        return m


def open_split(data: DataConfig, split: str, cache_dir: Path | None = None, labelled: bool = True) -> Source:
    """The named split ('train', 'val', 'test', 'truth') of a data config: COCO when the split names
    an annotation file, else a mask folder (images and, when labelled, PNG label maps)."""
    sc = getattr(data, split, None)
    if sc is None:
        raise DataError(f"data.{split}: this data config ({data.name}) has no '{split}' split")
    root = Path(data.root)
    if sc.annotations:
        coco = load_coco(root / sc.annotations, root / (sc.images or "."), data.strict,
                         require_annotations=labelled)
        if coco.skipped:
            log.warning("%s: %d bad record(s) skipped (strict: false):\n  %s", root / sc.annotations,
                        len(coco.skipped), "\n  ".join(coco.skipped))
        src = CocoSource(coco, data, cache_dir)
        src.labelled = labelled and coco.has_annotations
        return src
    src = MaskDirSource(root / sc.images if sc.images else None, root / sc.masks if (sc.masks and labelled) else None, data)
    if src.skipped:
        log.warning("%s: %d bad image(s) skipped (strict: false):\n  %s", root / (sc.images or ""), len(src.skipped),
                    "\n  ".join(src.skipped))
    return src
