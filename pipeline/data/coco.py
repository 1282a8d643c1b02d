"""COCO annotations: loading with record-level validation, and rasterisation in RLE space."""
from __future__ import annotations

import json
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

    @property
    def stem(self) -> str:
        return Path(self.file_name).stem


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


def _check_segmentation(seg: Any, h: int, w: int) -> str | None:
    """Why a segmentation is unusable for an image of h x w, or None when it is fine."""
    if isinstance(seg, list):
        if not seg:
            return "'segmentation': empty polygon list"
        for k, poly in enumerate(seg):
            if not isinstance(poly, list) or len(poly) % 2 or not all(isinstance(v, (int, float)) for v in poly):
                return f"'segmentation'[{k}]: polygon must be a flat list of x, y numbers"
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
        if list(seg["size"]) != [h, w]:
            return f"'segmentation'.size {list(seg['size'])} differs from the image size [{h}, {w}]"
        counts = seg["counts"]
        if isinstance(counts, list):
            if any((not isinstance(c, int)) or c < 0 for c in counts):
                return "'segmentation'.counts: run lengths must be non-negative integers"
            if sum(counts) != h * w:
                return f"'segmentation'.counts: runs cover {sum(counts)} pixels, image has {h * w}"
        elif not isinstance(counts, (str, bytes)):
            return "'segmentation'.counts: must be a list (uncompressed) or a string (compressed)"
        return None
    return f"'segmentation': unsupported type {type(seg).__name__}"


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
    skipped: list[str] = []

    def bad(msg: str) -> None:
        if strict:
            raise DataError(f"{path}: {msg}")
        skipped.append(msg)

    categories: dict[int, str] = {}
    for i, cat in enumerate(doc["categories"]):
        for key in ("id", "name"):
            if key not in cat:
                raise DataError(f"{path}: categories[{i}]: missing key '{key}'")
        categories[int(cat["id"])] = str(cat["name"])

    images: list[ImageRecord] = []
    seen: set = set()
    for i, im in enumerate(doc["images"]):
        where = f"images[{i}] (id {im.get('id')!r})"
        missing = [k for k in ("id", "file_name", "height", "width") if k not in im]
        if missing:
            bad(f"{where}: missing key '{missing[0]}'" + (" (image entry without size)" if missing[0] in ("height", "width") else ""))
            continue
        if im["id"] in seen:
            bad(f"{where}: duplicate image id {im['id']!r}")
            continue
        h, w = im["height"], im["width"]
        if not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0):
            bad(f"{where}: 'height'/'width' must be positive integers, got {h!r}x{w!r}")
            continue
        seen.add(im["id"])
        img_path = (Path(images_root) / im["file_name"]) if images_root is not None else None
        images.append(ImageRecord(im["id"], str(im["file_name"]), h, w, img_path))

    by_id = {img.id: img for img in images}
    anns: dict[Any, list[dict]] = {}
    for i, ann in enumerate(doc.get("annotations", [])):
        where = f"annotations[{i}] (id {ann.get('id')!r})"
        missing = [k for k in ("image_id", "category_id", "segmentation") if k not in ann]
        if missing:
            bad(f"{where}: missing key '{missing[0]}'")
            continue
        if ann["category_id"] not in categories:
            bad(f"{where}: unknown category id {ann['category_id']!r}")
            continue
        img = by_id.get(ann["image_id"])
        if img is None:
            bad(f"{where}: 'image_id' {ann['image_id']!r} is not in 'images'")
            continue
        why = _check_segmentation(ann["segmentation"], img.height, img.width)
        if why:
            bad(f"{where}: {why}")
            continue
        anns.setdefault(img.id, []).append(ann)
    ids = [a.get("id") for a in doc.get("annotations", [])]
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
              where: str = "") -> dict[int, int]:
    """COCO category id -> class index: explicit mapping, else by category name."""
    if explicit:
        out = {int(k): int(v) for k, v in explicit.items()}
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
