import itertools
import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from pipeline.config import DataConfig
from pipeline.data.coco import ann_to_rle, load_coco
from pipeline.data.sources import MaskDirSource
from pipeline.eda import coco_summary, maskdir_summary
from helpers import SHARED


def brute_force(coco):
    """Decode every annotation at full size and count with numpy."""
    cats = {cid: {"pixels": 0, "images": 0, "annotations": 0} for cid in coco.categories}
    pairs, ml_pixels, ml_images = {}, 0, 0
    for img in coco.images:
        per_cat = {}
        for a in coco.anns.get(img.id, []):
            m = mask_utils.decode(ann_to_rle(a, img.height, img.width)).astype(bool)
            per_cat[a["category_id"]] = per_cat.get(a["category_id"], False) | m
            cats[a["category_id"]]["annotations"] += 1
        count = np.zeros((img.height, img.width), int)
        for cid, m in per_cat.items():
            cats[cid]["pixels"] += int(m.sum())
            cats[cid]["images"] += 1
            count += m
        for a, b in itertools.combinations(sorted(per_cat), 2):
            n = int((per_cat[a] & per_cat[b]).sum())
            if n:
                pairs[(a, b)] = pairs.get((a, b), 0) + n
        ml_pixels += int((count >= 2).sum())
        ml_images += bool((count >= 2).any())
    return cats, pairs, ml_pixels, ml_images


def test_coco_summary_is_exact_on_demo(demo_root):
    coco = load_coco(demo_root / "train.json")
    s = coco_summary(coco)
    cats, pairs, ml_pixels, ml_images = brute_force(coco)
    for c in s["categories"]:
        assert c["pixels"] == cats[c["id"]]["pixels"]
        assert c["images"] == cats[c["id"]]["images"]
        assert c["annotations"] == cats[c["id"]]["annotations"]
    assert {(p["a"], p["b"]): p["pixels"] for p in s["overlap"]["pairs"]} == pairs
    assert s["overlap"]["multilabel_pixels"] == ml_pixels > 0
    assert s["overlap"]["images_with_multilabel_pixels"] == ml_images
    assert s["overlap"]["policy_pixels_changed_vs_order"]["ignore"] == ml_pixels
    assert s["num_annotations"] == sum(len(v) for v in coco.anns.values())


def test_policy_changes_match_full_rasterisation(demo_root):
    from pipeline.data.overlap import compose_label_map

    coco = load_coco(demo_root / "train.json")
    s = coco_summary(coco)
    changed = 0
    for img in coco.images:
        anns = coco.anns.get(img.id, [])
        masks = [mask_utils.decode(ann_to_rle(a, img.height, img.width)) for a in anns]
        cls = [a["category_id"] for a in anns]
        base = compose_label_map(masks, cls, "order", (img.height, img.width), 0, 255)
        changed += int((compose_label_map(masks, cls, "area_desc", (img.height, img.width), 0, 255) != base).sum())
    assert s["overlap"]["policy_pixels_changed_vs_order"]["area_desc"] == changed


def test_both_forms_give_the_same_pixel_counts(tmp_path):
    """A mask folder and its COCO twin (one RLE annotation per image and class) agree."""
    rng = np.random.default_rng(0)
    (tmp_path / "m").mkdir()
    images, anns = [], []
    for k in range(4):
        m = rng.integers(0, 4, (9, 13)).astype(np.uint8)  # 3 = void
        Image.fromarray(m).save(tmp_path / "m" / f"f{k}.png")
        images.append({"id": k, "file_name": f"m/f{k}.png", "height": 9, "width": 13})
        for c in range(3):
            if (m == c).any():
                r = mask_utils.encode(np.asfortranarray((m == c).astype(np.uint8)))
                anns.append({"id": len(anns), "image_id": k, "category_id": c + 1,
                             "segmentation": {"size": r["size"], "counts": r["counts"].decode()}})
    (tmp_path / "c.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": [
        {"id": c + 1, "name": n} for c, n in enumerate("xyz")]}))
    data = DataConfig(name="t", root=str(tmp_path), format="maskdir", classes=("x", "y", "z"), ignore_index=3)
    md = maskdir_summary(MaskDirSource(None, tmp_path / "m", data), data.classes)
    cs = coco_summary(load_coco(tmp_path / "c.json"))
    assert [c["pixels"] for c in md["categories"]] == [c["pixels"] for c in cs["categories"]]
    assert md["num_annotations"] == cs["num_annotations"]


@pytest.mark.shared
@pytest.mark.skipif(not (SHARED / "taco" / "annotations.json").exists(), reason="needs ../shared/datasets/taco")
def test_taco_real_overlaps():
    coco = load_coco(SHARED / "taco" / "annotations.json")
    s = coco_summary(coco)
    assert s["num_images"] == 1500 and s["num_categories"] == 60
    assert s["overlap"]["images_with_multilabel_pixels"] > 100
    assert all(p["a"] < p["b"] and p["pixels"] > 0 for p in s["overlap"]["pairs"])
    assert sum(c["annotations"] for c in s["categories"]) == len(coco.annotations())


@pytest.mark.shared
@pytest.mark.skipif(not (SHARED / "camvid" / "train.json").exists(), reason="needs ../shared/datasets/camvid")
def test_camvid_both_forms_agree():
    root = SHARED / "camvid"
    classes = tuple(f"c{i}" for i in range(11))
    data = DataConfig(name="camvid", root=str(root), format="maskdir", classes=classes, ignore_index=11)
    md = maskdir_summary(MaskDirSource(None, root / "train" / "masks", data), classes)
    cs = coco_summary(load_coco(root / "train.json"))
    assert [c["pixels"] for c in md["categories"]] == [c["pixels"] for c in cs["categories"]]
