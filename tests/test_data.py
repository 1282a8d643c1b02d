import json

import numpy as np
import pytest
from PIL import Image

from pipeline.config import DataConfig, SplitConfig
from pipeline.data.coco import DataError, load_coco
from pipeline.data.overlap import compose_label_map
from pipeline.data.sources import open_split
from helpers import square, write_coco

IMG = {"id": 1, "file_name": "a.png", "height": 10, "width": 12}


def ann(i=1, image_id=1, cat=1, seg=None):
    return {"id": i, "image_id": image_id, "category_id": cat, "segmentation": seg or square(1, 1, 5, 5)}


BAD = [
    ("missing key", [IMG], [{"id": 1, "image_id": 1, "segmentation": square(1, 1, 4, 4)}], "annotations\\[0\\] \\(id 1\\): missing key 'category_id'"),
    ("unknown category", [IMG], [ann(cat=9)], "unknown category id 9"),
    ("two-point polygon", [IMG], [ann(seg=[[1, 1, 4, 4]])], "2 point\\(s\\), at least 3"),
    ("outside image", [IMG], [ann(seg=square(1, 1, 40, 5))], "outside the 12x10 image"),
    ("no size", [{"id": 1, "file_name": "a.png"}], [], "images\\[0\\] \\(id 1\\): missing key 'height' \\(image entry without size\\)"),
    ("duplicate ids", [IMG, dict(IMG, file_name="b.png")], [], "images\\[1\\] \\(id 1\\): duplicate image id 1"),
    ("unknown image", [IMG], [ann(image_id=5)], "'image_id' 5 is not in 'images'"),
    ("rle size", [IMG], [ann(seg={"size": [5, 5], "counts": [25]})], "differs from the image size"),
    ("rle coverage", [IMG], [ann(seg={"size": [10, 12], "counts": [3, 4]})], "runs cover 7 pixels"),
]


@pytest.mark.parametrize("name,images,anns,match", BAD, ids=[b[0] for b in BAD])
def test_bad_coco_records_are_named(tmp_path, name, images, anns, match):
    path = write_coco(tmp_path / "bad.json", images, anns)
    with pytest.raises(DataError, match=match) as e:
        load_coco(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("name,images,anns,match", BAD[:4] + BAD[6:], ids=[b[0] for b in BAD[:4] + BAD[6:]])
def test_non_strict_skips_and_lists_every_bad_record(tmp_path, name, images, anns, match):
    good = ann(i=99, cat=2, seg=square(6, 6, 9, 9))
    path = write_coco(tmp_path / "bad.json", images, anns + [good])
    coco = load_coco(path, strict=False)
    assert len(coco.skipped) == 1
    assert [a["id"] for a in coco.annotations()] == [99]


def test_malformed_json_and_missing_top_key(tmp_path):
    p = tmp_path / "broken.json"
    p.write_text('{"images": [')
    with pytest.raises(DataError, match="broken.json: malformed JSON at line 1"):
        load_coco(p)
    p.write_text(json.dumps({"images": [], "categories": []}))
    with pytest.raises(DataError, match="missing top-level key 'annotations'"):
        load_coco(p)


def _data(root, **kw) -> DataConfig:
    base = dict(name="t", root=str(root), classes=("bg", "a", "b"), train=SplitConfig("c.json", "."))
    base.update(kw)
    return DataConfig(**base)


def test_missing_and_unreadable_image_files(tmp_path):
    write_coco(tmp_path / "c.json", [IMG, dict(IMG, id=2, file_name="b.png")], [ann()])
    (tmp_path / "b.png").write_bytes(b"not a png")
    src = open_split(_data(tmp_path), "train")
    with pytest.raises(DataError, match="a.png: image file of image 1 not found"):
        src.image(0)
    with pytest.raises(DataError, match="b.png: unreadable image of image 2"):
        src.image(1)


def test_image_size_differs_from_record(tmp_path):
    write_coco(tmp_path / "c.json", [IMG], [ann()])
    Image.fromarray(np.zeros((7, 7, 3), np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(DataError, match="is 7x7, its record says 12x10"):
        open_split(_data(tmp_path), "train").image(0)


def test_maskdir_errors(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(tmp_path / "img" / "x.png")
    Image.fromarray(np.zeros((6, 9), np.uint8)).save(tmp_path / "lab" / "x.png")
    data = _data(tmp_path, format="maskdir", train=SplitConfig(images="img", masks="lab"))
    with pytest.raises(DataError, match="label map is 9x6, image x.png is 8x6"):
        open_split(data, "train").mask(0)
    Image.fromarray(np.full((6, 8), 7, np.uint8)).save(tmp_path / "lab" / "x.png")
    with pytest.raises(DataError, match=r"label values \[7\] outside classes 0..2"):
        open_split(data, "train").mask(0)
    Image.fromarray(np.full((6, 8), 255, np.uint8)).save(tmp_path / "lab" / "x.png")
    assert (open_split(data, "train").mask(0) == 255).all()  # the ignore index is allowed
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(tmp_path / "img" / "y.png")
    with pytest.raises(DataError, match="y.png: no label map for image y.png"):
        open_split(data, "train")


def test_overlap_policies():
    a = np.zeros((1, 4), bool); a[0, :3] = True  # big, class 1, first
    b = np.zeros((1, 4), bool); b[0, 1:2] = True  # small, class 2, second
    c = np.zeros((1, 4), bool); c[0, 2:4] = True  # class 3, third
    m, cls = [a, b, c], [1, 2, 3]
    assert compose_label_map(m, cls, "order", (1, 4), 0, 255).tolist() == [[1, 2, 3, 3]]
    assert compose_label_map(m, cls, "area_desc", (1, 4), 0, 255).tolist() == [[1, 2, 3, 3]]
    assert compose_label_map(m[::-1], cls[::-1], "area_desc", (1, 4), 0, 255).tolist() == [[1, 2, 3, 3]]
    assert compose_label_map(m[::-1], cls[::-1], "order", (1, 4), 0, 255).tolist() == [[1, 1, 1, 3]]
    assert compose_label_map(m, cls, "priority", (1, 4), 0, 255, priority=[1]).tolist() == [[1, 1, 1, 3]]
    assert compose_label_map(m, cls, "ignore", (1, 4), 0, 255).tolist() == [[1, 255, 255, 3]]
    # two annotations of one class never make an ignore pixel
    assert compose_label_map([a, a], [1, 1], "ignore", (1, 4), 0, 255).tolist() == [[1, 1, 1, 0]]


def test_coco_rasterises_all_segmentation_forms_and_caches(tmp_path):
    from pycocotools import mask as mask_utils

    full = np.zeros((10, 12), np.uint8); full[2:4, 2:6] = 1
    rle = mask_utils.encode(np.asfortranarray(full))
    flat = full.ravel(order="F")
    counts, cur, n = [], 0, 0
    for v in flat:
        if v != cur:
            counts.append(n); cur, n = v, 0
        n += 1
    counts.append(n)
    anns = [ann(1, cat=1, seg=square(0, 6, 4, 9)),
            ann(2, cat=2, seg={"size": [10, 12], "counts": rle["counts"].decode()}),
            ann(3, cat=1, seg={"size": [10, 12], "counts": counts})]
    write_coco(tmp_path / "c.json", [IMG], anns)
    cache = tmp_path / "cache"
    src = open_split(_data(tmp_path, overlap="order"), "train", cache_dir=cache)
    m = src.mask(0)
    assert (m[2:4, 2:6] == 1).all()  # the uncompressed-RLE class-1 annotation came last
    assert (m[7, 1] == 1) and m[0, 0] == 0
    cached = next(cache.rglob("*.png"))
    cached.write_bytes(b"garbage")  # corruption is detected and the mask rebuilt
    assert np.array_equal(open_split(_data(tmp_path, overlap="order"), "train", cache_dir=cache).mask(0), m)
    other = open_split(_data(tmp_path, overlap="area_desc"), "train", cache_dir=cache)
    assert other.cache != src.cache  # a different policy never reads the other's cache
    assert (other.mask(0)[2:4, 2:6] == 1).all()


def test_duplicate_annotation_ids_are_reported(tmp_path):
    path = write_coco(tmp_path / "c.json", [IMG], [ann(7), ann(7, cat=2), ann(8)])
    coco = load_coco(path)
    assert coco.duplicate_annotation_ids == [7]
    assert len(coco.annotations()) == 3  # nothing is dropped
