"""Hostile inputs: each gives a clear error naming file, record and field (or works correctly),
never a hang, a traceback or a silently wrong result."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from pipeline import check, eda, folds, train
from pipeline.config import DataConfig, SplitConfig, load_config, StageArgs
from pipeline.data.coco import load_coco
from pipeline.data.dataset import PadCollate
from pipeline.data.pool import labelled_pool
from pipeline.data.sources import open_split, read_image, read_label_png
from pipeline.errors import DataError, SubmissionError
from pipeline.inference.outdir import Preds
from helpers import REPO, TINY, fake_runs, square, write_coco

IMG = {"id": 1, "file_name": "a.png", "height": 10, "width": 12}


def _ann(seg, **extra):
    return {"id": 1, "image_id": 1, "category_id": 1, "segmentation": seg, **extra}


@pytest.mark.parametrize("images,anns,match", [
    ([IMG], [_ann([[1, 1, float("nan"), 1, 5, 5]])], r"annotations\[0\] \(id 1\): 'segmentation'\[0\]: polygon must be a flat list of finite"),
    ([IMG], [_ann(square(1, 1, 5, 5), bbox=[1, 1, float("inf"), 2])], r"annotations\[0\] \(id 1\): 'bbox'"),
    ([IMG], [_ann(square(1, 1, 5, 5), area="big")], r"'area': expected a finite number"),
    ([IMG], [_ann({"size": [10, 12], "counts": "PPPPPPPPPPPPPPPPPPPP"})], r"invalid compressed RLE: run at character"),
    ([IMG], [_ann({"size": [10, 12], "counts": "a~b"})], r"invalid compressed RLE: character '~'"),
    ([IMG], [_ann({"size": [10, 12], "counts": "1"})], r"runs cover 1 pixels, image has 120"),
    (["a.png"], [], r"images\[0\]: expected an object"),
    ([IMG], [_ann(square(1, 1, 5, 5), category_id="x")], r"'category_id' must be an integer"),
])
def test_bad_coco_values_are_named(tmp_path, images, anns, match):
    path = write_coco(tmp_path / "bad.json", images, anns)
    with pytest.raises(DataError, match=match) as e:
        load_coco(path)
    assert str(path) in str(e.value)


def test_malformed_top_level_and_categories(tmp_path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"images": {"1": IMG}, "annotations": [], "categories": []}))
    with pytest.raises(DataError, match="'images' must be a list of objects, got dict"):
        load_coco(path)
    write_coco(path, [IMG], [], categories=[{"id": "abc", "name": "a"}])
    with pytest.raises(DataError, match=r"categories\[0\]: 'id' must be an integer, got 'abc'"):
        load_coco(path)


def test_nan_polygon_written_by_json_is_refused_fast(tmp_path):
    path = tmp_path / "nan.json"
    path.write_text(json.dumps({"images": [IMG], "categories": [{"id": 1, "name": "a"}],
                                "annotations": [_ann([[0, 0, 5, float("nan"), 5, 5]])]}))  # json writes NaN
    assert "NaN" in path.read_text()
    with pytest.raises(DataError, match="finite"):
        load_coco(path)


def _maskdir(root, masks, images=None, mode=None):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for k, m in enumerate(masks):
        img = images[k] if images is not None else np.full((*m.shape, 3), 40 * k % 255, np.uint8)
        Image.fromarray(img).save(root / "images" / f"s{k:02d}_{k:03d}.png")
        Image.fromarray(m, mode=mode).save(root / "masks" / f"s{k:02d}_{k:03d}.png")
    return root


def _maskdir_cfg(root, tmp_path, *overrides, classes="[background, thing]"):
    return load_config("camvid", "unet", None, [
        f"data.root={root}", f"outputs={tmp_path / 'out'}", f"data.classes={classes}", "data.ignore_index=255",
        "data.train={images: images, masks: masks}", "data.val=null", "data.test=null", "folds.splits=[train]",
        "folds.group_regex=null", "folds.tail=null", "folds.assign=null", "folds.k=2", "runtime.progress=false", *TINY, *overrides], 0, REPO / "configs")


def _binary_masks(n=6):
    out = []
    for k in range(n):
        m = np.zeros((16, 20), np.uint8)
        m[2:9, 3:3 + 2 * k + 2] = 255
        out.append(m)
    return out


def test_zero_255_masks_stop_eda_check_and_training(tmp_path):
    root = _maskdir(tmp_path / "d", _binary_masks())
    cfg = _maskdir_cfg(root, tmp_path)
    with pytest.raises(DataError, match=r"\['thing'\] have no pixel while the ignore index 255 covers .*mask_values"):
        eda.run(cfg)
    with pytest.raises(DataError, match="1 problem"):
        check.run(cfg)
    folds.run(cfg)
    with pytest.raises(DataError, match="mask_values"):
        train.run(cfg)
    mapped = _maskdir_cfg(root, tmp_path, "data.mask_values={0: 0, 255: 1}")
    summary = eda.run(mapped)
    assert summary["categories"][1]["pixels"] == sum(int((m == 255).sum()) for m in _binary_masks())


def test_16_bit_masks_and_photos_are_read_faithfully(tmp_path):
    m = np.zeros((4, 5), np.uint16)
    m[0, 0], m[1, 1] = 1, 256
    Image.fromarray(m).save(tmp_path / "m16.png")
    with pytest.raises(DataError, match=r"m16.png: label values \[256\] do not fit 8 bits"):
        read_label_png(tmp_path / "m16.png")  # read as 0 (background) before
    m[1, 1] = 2
    Image.fromarray(m).save(tmp_path / "ok16.png")
    assert read_label_png(tmp_path / "ok16.png").tolist() == m.astype(np.uint8).tolist()
    assert read_label_png(tmp_path / "ok16.png", {2: 7})[1, 1] == 7
    photo = (np.arange(20, dtype=np.uint16).reshape(4, 5) * 3000)
    Image.fromarray(photo).save(tmp_path / "p16.png")
    rgb = read_image(tmp_path / "p16.png")
    assert rgb.shape == (4, 5, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb[..., 0], np.rint(photo / 65535 * 255).astype(np.uint8))  # not a constant image
    assert len(np.unique(rgb)) == 20


def test_zero_byte_image_is_named_not_a_traceback(tmp_path):
    root = _maskdir(tmp_path / "d", [np.zeros((8, 8), np.uint8), np.ones((8, 8), np.uint8)])
    (root / "images" / "s01_001.png").write_bytes(b"")
    cfg = _maskdir_cfg(root, tmp_path)
    for stage in (eda.run, folds.run):
        with pytest.raises(DataError, match=r"s01_001.png: unreadable image of image s01_001.png"):
            stage(cfg)


def test_images_of_mixed_sizes_train_without_resize(tmp_path):
    sizes = [(1, 1), (7, 13), (16, 9), (5, 5), (13, 7), (9, 16)]
    masks = [(np.arange(h * w).reshape(h, w) % 2).astype(np.uint8) for h, w in sizes]
    root = _maskdir(tmp_path / "d", masks)
    cfg = _maskdir_cfg(root, tmp_path, "train.epochs=1", "train.batch_size=3", "train.augment=[]")
    folds.run(cfg)
    out = train.run(cfg)
    m = pd.read_csv(cfg.run_dir() / "metrics.csv")
    assert np.isfinite(m["train_loss"][0]) and 0 <= out["best_score"] <= 1


def test_pad_collate_pads_masks_with_ignore():
    a = (torch.ones(3, 2, 3), torch.zeros(2, 3, dtype=torch.long))
    b = (torch.ones(3, 4, 1), torch.ones(4, 1, dtype=torch.long))
    x, y = PadCollate(255)([a, b])
    assert x.shape == (2, 3, 4, 3) and y.shape == (2, 4, 3)
    assert (y[0, 2:] == 255).all() and (y[0, :, :3][:2] == 0).all() and (y[1, :, 1:] == 255).all()
    assert x[0, :, 2:].abs().sum() == 0 and x[1, :, :, :1].min() == 1


def test_folds_made_before_new_images_are_refused(tmp_path):
    masks = [np.full((8, 8), k % 2, np.uint8) for k in range(6)]
    root = _maskdir(tmp_path / "d", masks)
    cfg = _maskdir_cfg(root, tmp_path)
    folds.run(cfg)
    _maskdir(tmp_path / "more", [np.ones((8, 8), np.uint8)] * 2)
    for p in (tmp_path / "more").rglob("*.png"):
        p.rename(root / p.parent.name / f"new_{p.name}")
    with pytest.raises(DataError, match=r"2 image\(s\) of split train are not in the folds .*re-run"):
        labelled_pool(cfg)
    meta = json.loads((cfg.out_dir / "folds_meta.json").read_text())
    assert meta["images"] == 6 and len(meta["images_sha1"]) == 40


def test_check_reports_every_problem_at_once(tmp_path):
    masks = [np.full((8, 8), k % 2, np.uint8) for k in range(5)]
    root = _maskdir(tmp_path / "d", masks)
    data = (root / "images" / "s01_001.png").read_bytes()
    (root / "images" / "s01_001.png").write_bytes(data[: len(data) // 2])  # truncated: header fine, pixels not
    Image.fromarray(np.full((8, 8), 7, np.uint8)).save(root / "masks" / "s03_003.png")  # not a class
    Image.fromarray(np.zeros((6, 8), np.uint8)).save(root / "masks" / "s04_004.png")  # wrong size
    with pytest.raises(DataError, match="3 problem"):
        check.run(_maskdir_cfg(root, tmp_path))


def test_submission_with_huge_run_or_trailing_commas(tmp_path):
    from pipeline.competition.submission import read_submission, validate
    from pipeline.config import SubmissionConfig

    sc = SubmissionConfig()
    p = tmp_path / "s.csv"
    p.write_text("ImageId,ClassId,EncodedPixels\na,0,2 9223372036854775807\n")
    with pytest.raises(SubmissionError, match="value 9223372036854775807 is larger than the image"):
        validate(read_submission(p, sc), {"a": (4, 4)}, [0], sc)
    p.write_text("ImageId,ClassId,EncodedPixels\na,0,1 2,\na,1,,\n")
    with pytest.raises(SubmissionError, match=r"s.csv line 2: 4 fields, expected 3 \(ImageId, ClassId, EncodedPixels\) \(a trailing comma\?\)"):
        read_submission(p, sc)


def test_data_config_for_split_reading():
    dc = DataConfig(name="x", root="/nonexistent", format="maskdir", classes=("a", "b"),
                    train=SplitConfig(images="i", masks="m"))
    with pytest.raises(DataError, match="/nonexistent/i: image folder not found"):
        open_split(dc, "train")


def test_interrupted_inference_leaves_the_previous_predictions_whole(make_cfg, monkeypatch):
    from pipeline import infer, submit

    cfg = make_cfg("infer.num_workers=0", name="inf")
    fake_runs(cfg)
    first = infer.run(cfg)
    preds = Preds.of(cfg)
    before = {p.name: p.read_bytes() for p in preds.labels.glob("*.png")}
    fake_runs(cfg, seed=100)  # other weights: a second inference would write other labels
    calls = {"n": 0}
    real = infer.save_prediction

    def dies_midway(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # stands for a kill in the middle of the test set
        return real(*a, **k)

    monkeypatch.setattr(infer, "save_prediction", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        infer.run(cfg)
    after = {p.name: p.read_bytes() for p in preds.labels.glob("*.png")}
    assert after == before  # no mix of old and new label maps
    assert json.loads(preds.manifest.read_text())["cv_miou"] == first["cv_miou"]
    assert not list(preds.root.parent.glob(".inf.partial-*"))
    assert submit.run(cfg).exists()
    preds.manifest.unlink()
    with pytest.raises(DataError, match="manifest.json: not found: no complete prediction folder"):
        submit.run(cfg)


def test_a_failed_score_records_nothing(make_cfg, monkeypatch):
    from pipeline import infer, score, submit

    cfg = make_cfg("infer.num_workers=0", "infer.oof=false", name="sc")
    fake_runs(cfg)
    infer.run(cfg)
    sub = submit.run(cfg)

    def read_only(*a, **k):
        raise PermissionError(13, "Permission denied", str(sub.with_suffix(".iou.png")))

    monkeypatch.setattr(score, "_bar_chart", read_only)
    with pytest.raises(PermissionError):
        score.run(cfg, StageArgs(sub=str(sub)))
    assert not (sub.parent.parent / "leaderboard.csv").exists()
