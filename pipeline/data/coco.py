"""COCO annotations: loading with record-level validation, and rasterisation in RLE space."""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from pycocotools import mask as mask_utils

from pipeline.errors import DataError




@dataclass(frozen=True)
class ImageRecord:
    id: Any
    file_name: str
    height: int
    width: int
    path: Path | None = None
    key: str | None = None  # set when file-name stems collide within a file (batch_01/0001.jpg, batch_02/0001.jpg)

    @property
    def stem(self) -> str:
        """The image's name in folds, caches and prediction files: its file stem, or its whole
        relative path (folders joined by '__') when stems alone are not unique."""
        return self.key or Path(self.file_name).stem


@dataclass
class CocoSet:
    path: Path
    images: list[ImageRecord]
    anns: dict[Any, list[dict]]  # image id -> annotations (validated)
    categories: dict[int, str]  # category id -> name
    skipped: list[str] = field(default_factory=list)  # non-strict mode: every record left out, with why
    has_annotations: bool = True
    duplicate_annotation_ids: list = field(default_factory=list)  # harmless here; pycocotools' COCO index drops them

    def annotations(self) -> list[dict]:
        return [a for img in self.images for a in self.anns.get(img.id, [])]


def read_json(path: Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason})") from None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def compressed_counts(s: str | bytes) -> list[int]:
    """The run lengths of a COCO compressed-RLE string (pycocotools' rleFrString, checked: a bad
    string raises ValueError instead of hanging or reading past its end)."""
    data = s.encode() if isinstance(s, str) else bytes(s)
    counts: list[int] = []
    p = 0
    while p < len(data):
        x, k, more = 0, 0, True
        while more:
            if p >= len(data):
                raise ValueError("truncated (the last run is unfinished)")
            c = data[p] - 48
            if not 0 <= c < 64:
                raise ValueError(f"character {chr(data[p])!r} at {p} is not in the RLE alphabet")
            if k > 12:
                raise ValueError(f"run at character {p} is longer than any image")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        if x < 0:
            raise ValueError(f"run {len(counts)} has negative length {x}")
        counts.append(x)
    return counts


def _check_segmentation(seg: Any, h: int, w: int) -> str | None:
    """Why a segmentation is unusable for an image of h x w, or None when it is fine."""
    if isinstance(seg, list):
        if not seg:
            return "'segmentation': empty polygon list"
        for k, poly in enumerate(seg):
            if not isinstance(poly, list) or len(poly) % 2 or not all(_is_number(v) for v in poly):
                return f"'segmentation'[{k}]: polygon must be a flat list of finite x, y numbers"
            if len(poly) < 6:
                return f"'segmentation'[{k}]: polygon with {len(poly) // 2} point(s), at least 3 needed"
            xs, ys = np.asarray(poly[0::2], float), np.asarray(poly[1::2], float)
            if xs.min() < -1 or ys.min() < -1 or xs.max() > w + 1 or ys.max() > h + 1:
                return (f"'segmentation'[{k}]: polygon outside the {w}x{h} image "
                        f"(x {xs.min():g}..{xs.max():g}, y {ys.min():g}..{ys.max():g})")
        return None
    if isinstance(seg, dict):
        if "counts" not in seg or "size" not in seg:
            return "'segmentation': RLE needs 'counts' and 'size'"
        if not isinstance(seg["size"], list) or list(seg["size"]) != [h, w]:
            return f"'segmentation'.size {seg['size']!r} differs from the image size [{h}, {w}]"
        counts = seg["counts"]
        if isinstance(counts, list):
            if any(not _is_int(c) or c < 0 for c in counts):
                return "'segmentation'.counts: run lengths must be non-negative integers"
        elif isinstance(counts, (str, bytes)):
            try:
                counts = compressed_counts(counts)
            except ValueError as e:
                return f"'segmentation'.counts: invalid compressed RLE: {e}"
        else:
            return "'segmentation'.counts: must be a list (uncompressed) or a string (compressed)"
        if sum(counts) != h * w:
            return f"'segmentation'.counts: runs cover {sum(counts)} pixels, image has {h * w}"
        return None
    return f"'segmentation': unsupported type {type(seg).__name__}"


def _check_numbers(ann: dict) -> str | None:
    """area, bbox and iscrowd, when present, must be finite numbers of the right shape."""
    if "area" in ann and not _is_number(ann["area"]):
        return f"'area': expected a finite number, got {ann['area']!r}"
    if "bbox" in ann and not (isinstance(ann["bbox"], list) and len(ann["bbox"]) == 4 and all(map(_is_number, ann["bbox"]))):
        return f"'bbox': expected [x, y, width, height] of finite numbers, got {ann['bbox']!r}"
    if "iscrowd" in ann and ann["iscrowd"] not in (0, 1):
        return f"'iscrowd': expected 0 or 1, got {ann['iscrowd']!r}"
    return None


def _categories(doc: dict, path: Path) -> dict[int, str]:
    categories: dict[int, str] = {}
    for i, cat in enumerate(doc["categories"]):
        if not isinstance(cat, dict):
            raise DataError(f"{path}: categories[{i}]: expected an object, got {cat!r}")
        for key in ("id", "name"):
            if key not in cat:
                raise DataError(f"{path}: categories[{i}]: missing key '{key}'")
        if not _is_int(cat["id"]):
            raise DataError(f"{path}: categories[{i}]: 'id' must be an integer, got {cat['id']!r}")
        if cat["id"] in categories:
            first = next(k for k, c in enumerate(doc["categories"]) if isinstance(c, dict) and c.get("id") == cat["id"])
            raise DataError(f"{path}: categories[{i}]: id {cat['id']} ({cat['name']!r}) repeats categories[{first}] "
                            f"({categories[cat['id']]!r}): one of them would lose its annotations")
        categories[cat["id"]] = str(cat["name"])
    return categories


def _image_record(im: Any, i: int, seen: set, images_root: Path | None) -> ImageRecord | str:
    """The record of images[i], or why it is unusable."""
    if not isinstance(im, dict):
        return f"images[{i}]: expected an object with id, file_name, height, width; got {im!r:.80}"
    where = f"images[{i}] (id {im.get('id')!r})"
    missing = [k for k in ("id", "file_name", "height", "width") if k not in im]
    if missing:
        return f"{where}: missing key '{missing[0]}'" + (" (image entry without size)" if missing[0] in ("height", "width") else "")
    if not isinstance(im["id"], (int, str)) or isinstance(im["id"], bool) or not isinstance(im["file_name"], str):
        return f"{where}: 'id' must be an integer or string and 'file_name' a string"
    if im["id"] in seen:
        return f"{where}: duplicate image id {im['id']!r}"
    h, w = im["height"], im["width"]
    if not (_is_int(h) and _is_int(w) and h > 0 and w > 0):
        return f"{where}: 'height'/'width' must be positive integers, got {h!r}x{w!r}"
    path = (Path(images_root) / im["file_name"]) if images_root is not None else None
    return ImageRecord(im["id"], im["file_name"], h, w, path)


def _annotation_problem(ann: Any, i: int, categories: dict, by_id: dict) -> str | None:
    """Why annotations[i] is unusable, or None."""
    if not isinstance(ann, dict):
        return f"annotations[{i}]: expected an object, got {ann!r:.80}"
    where = f"annotations[{i}] (id {ann.get('id')!r})"
    missing = [k for k in ("image_id", "category_id", "segmentation") if k not in ann]
    if missing:
        return f"{where}: missing key '{missing[0]}'"
    if not _is_int(ann["category_id"]) or not isinstance(ann["image_id"], (int, str)):
        return (f"{where}: 'category_id' must be an integer and 'image_id' an integer or string, "
                f"got {ann['category_id']!r} and {ann['image_id']!r}")
    why = _check_numbers(ann)
    if why is None and ann["category_id"] not in categories:
        why = f"unknown category id {ann['category_id']!r}"
    img = by_id.get(ann["image_id"])
    if why is None and img is None:
        why = f"'image_id' {ann['image_id']!r} is not in 'images'"
    if why is None:
        why = _check_segmentation(ann["segmentation"], img.height, img.width)
    return None if why is None else f"{where}: {why}"


def load_coco(path: Path, images_root: Path | None = None, strict: bool = True,
              require_annotations: bool = True) -> CocoSet:
    """Read and validate a COCO file. strict=False skips bad records but lists every one."""
    path = Path(path)
    doc = read_json(path)
    if not isinstance(doc, dict):
        raise DataError(f"{path}: top level must be a JSON object")
    required = ["images", "categories"] + (["annotations"] if require_annotations else [])
    for key in required:
        if key not in doc:
            raise DataError(f"{path}: missing top-level key '{key}'")
    for key in set(required) | ({"annotations"} & set(doc)):
        if not isinstance(doc[key], list):
            raise DataError(f"{path}: '{key}' must be a list of objects, got {type(doc[key]).__name__}")
    skipped: list[str] = []

    def bad(msg: str) -> None:
        if strict:
            raise DataError(f"{path}: {msg}")
        skipped.append(msg)

    categories = _categories(doc, path)
    images: list[ImageRecord] = []
    seen: set = set()
    files: dict[str, int] = {}
    for i, im in enumerate(doc["images"]):
        rec = _image_record(im, i, seen, images_root)
        if isinstance(rec, str):
            bad(rec)
            continue
        if rec.file_name in files:
            bad(f"images[{i}]: file_name {rec.file_name!r} (id {rec.id!r}) repeats images[{files[rec.file_name]}]: "
                "one image listed twice")
            continue
        seen.add(rec.id)
        files[rec.file_name] = i
        images.append(rec)
    stems = [Path(img.file_name).stem for img in images]
    if len(set(stems)) < len(stems):
        images = [dataclasses.replace(img, key=str(Path(img.file_name).with_suffix("")).replace("/", "__"))
                  for img in images]
    by_id = {img.id: img for img in images}
    anns: dict[Any, list[dict]] = {}
    for i, ann in enumerate(doc.get("annotations", [])):
        why = _annotation_problem(ann, i, categories, by_id)
        if why:
            bad(why)
            continue
        anns.setdefault(ann["image_id"], []).append(ann)
    ids = [a.get("id") for a in doc.get("annotations", []) if isinstance(a, dict)]
    seen_ids: set = set()
    dup = sorted({i for i in ids if i in seen_ids or seen_ids.add(i)}, key=str)
    return CocoSet(path, images, anns, categories, skipped, "annotations" in doc, dup)


def ann_to_rle(ann: dict, h: int, w: int) -> dict:
    """One compressed RLE for an annotation of any COCO form (polygons, uncompressed or compressed RLE)."""
    seg = ann["segmentation"]
    if isinstance(seg, list):
        return mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    if isinstance(seg["counts"], list):
        return mask_utils.frPyObjects(seg, h, w)
    counts = seg["counts"]
    return {"size": list(seg["size"]), "counts": counts.encode() if isinstance(counts, str) else counts}


def class_map(categories: dict[int, str], classes: Sequence[str], explicit: dict | None = None,
              where: str = "", ignore_index: int = 255) -> dict[int, int]:
    """COCO category id -> class index: explicit mapping, else by category name."""
    if explicit:
        out = {int(k): int(v) for k, v in explicit.items()}
        wrong = {k: v for k, v in out.items() if not (0 <= v < len(classes) or v == ignore_index)}
        if wrong:
            k, v = next(iter(wrong.items()))
            raise DataError(f"{where}: data.category_map: category {k} -> {v}: not a class index "
                            f"(0..{len(classes) - 1}) or the ignore index {ignore_index}")
        missing = sorted(set(categories) - set(out))
        if missing:
            raise DataError(f"{where}: data.category_map has no entry for category id(s) {missing}")
        return out
    index = {name: i for i, name in enumerate(classes)}
    out = {}
    for cid, name in categories.items():
        if name not in index:
            raise DataError(f"{where}: category {cid} ({name!r}) is not in data.classes {list(classes)}; "
                            "add it or give data.category_map")
        out[cid] = index[name]
    return out
