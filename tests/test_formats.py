"""Submission formats: per-class RLE (columns or an id template, any output size, any empty token)
and Boostcamp's PredictionString; each round-trips and rejects malformed files line by line."""
import dataclasses

import numpy as np
import pytest

from pipeline.competition.submission import (columns, encode_rows, output_label, prediction_masks, read_submission,
                                             validate)
from pipeline.config import SubmissionConfig, StageArgs
from pipeline.errors import SubmissionError
from pipeline.inference.outdir import Preds

NAMES = ["background", "Fish", "Flower", "Gravel"]
CLOUDS = SubmissionConfig(id_column="Image_Label", rle_column="EncodedPixels", id_template="{image}_{class_name}",
                          image_id="file_name", size=(6, 9), class_ids=(1, 2, 3))
SIIM = SubmissionConfig(empty="-1")
TRASH = SubmissionConfig(format="prediction_string", id_column="image_id", rle_column="PredictionString", size=(4, 5))


def _write(tmp_path, sc, rows):
    import csv

    path = tmp_path / "s.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns(sc))
        w.writerows(rows)
    return path


def _labels(seed=0, n=3, shape=(12, 18), classes=4):
    rng = np.random.default_rng(seed)
    return {f"img{k}.jpg": rng.integers(0, classes, shape).astype(np.uint8) for k in range(n)}


@pytest.mark.parametrize("sc", [CLOUDS, SIIM, TRASH, SubmissionConfig()], ids=["clouds", "siim", "trash", "default"])
def test_formats_round_trip(tmp_path, sc):
    classes = list(sc.class_ids) or [0, 1, 2, 3]
    labels = {k: output_label(v, sc) for k, v in _labels().items()}
    rows = [r for img, lab in labels.items() for r in encode_rows(img, lab, classes, sc, NAMES)]
    path = _write(tmp_path, sc, rows)
    parsed = validate(read_submission(path, sc), {k: v.shape for k, v in labels.items()}, classes, sc, str(path), NAMES)
    for img, lab in labels.items():
        masks = prediction_masks(parsed, img, classes, lab.shape, sc)
        assert np.array_equal(masks, np.stack([lab == c for c in classes]))


def test_clouds_ids_size_and_trash_strings_look_like_the_competitions():
    lab = np.zeros((12, 18), np.uint8)
    lab[:6, :9] = 2
    out = output_label(lab, CLOUDS)
    assert out.shape == (6, 9) and (out[:3, :4] == 2).all() and (out[4:, 5:] == 0).all()  # nearest neighbour
    rows = encode_rows("0011165.jpg", out, [1, 2, 3], CLOUDS, NAMES)
    assert [r[0] for r in rows] == ["0011165.jpg_Fish", "0011165.jpg_Flower", "0011165.jpg_Gravel"]
    assert rows[0][1] == "" and rows[1][1].startswith("1 3")  # column-major runs, empty Fish
    assert encode_rows("a", np.zeros((2, 2), np.uint8), [1], SIIM)[0] == ("a", 1, "-1")
    assert encode_rows("batch_01_vt/0021.jpg", np.array([[0, 3], [10, 1]], np.uint8), [0], TRASH) == \
        [("batch_01_vt/0021.jpg", "0 3 10 1")]  # row-major, space-separated


@pytest.mark.parametrize("sc,rows,match", [
    (CLOUDS, [["x.jpg_Fish", ""]], r"line 2 \(Image_Label='x.jpg_Fish'\): not an id of the form"),
    (CLOUDS, [["img0.jpg_Fish", "1 2"], ["img0.jpg_Fish", ""]], r"line 3 .*duplicate row"),
    (CLOUDS, [["img0.jpg_Fish", "50 9"]], r"line 2 .*EncodedPixels: run 50\+9 passes the last pixel \(54\)"),
    (SIIM, [["img0.jpg", "0", "-2 3"]], r"line 2 .*EncodedPixels: start -2 < 1"),
    (TRASH, [["img0.jpg", "0 1 2"]], r"line 2 \(image_id='img0.jpg'\): PredictionString: 3 values, expected 4x5 = 20"),
    (TRASH, [["img0.jpg", " ".join(["1"] * 19 + ["x"])]], r"'x' is not a class index"),
    (TRASH, [["img0.jpg", " ".join(["1"] * 19 + ["9"])]], r"class 9 is outside 0..3"),
    (TRASH, [["img0.jpg", " ".join(["1"] * 20)]], r"1 image\(s\) without a row, e.g. 'img1.jpg'"),
])
def test_malformed_rows_are_named(tmp_path, sc, rows, match):
    classes = list(sc.class_ids) or [0, 1, 2, 3]
    size = sc.size or (12, 18)
    sizes = {"img0.jpg": size, "img1.jpg": size} if sc is TRASH else {"img0.jpg": size}
    sc = dataclasses.replace(sc, empty_rows=False)
    with pytest.raises(SubmissionError, match=match):
        validate(read_submission(_write(tmp_path, sc, rows), sc), sizes, classes, sc, "s.csv", NAMES)


def test_header_must_match_the_format(tmp_path):
    path = _write(tmp_path, SubmissionConfig(), [["a", "0", ""]])
    with pytest.raises(SubmissionError, match=r"header is \['ImageId', 'ClassId', 'EncodedPixels'\], expected \['image_id', 'PredictionString'\]"):
        read_submission(path, TRASH)


def test_scoring_a_prediction_string_submission_at_its_size(make_cfg, tmp_path):
    """make submission / make score with the Boostcamp format: scored at 256x256-style output size."""
    from PIL import Image

    from pipeline import infer, score, submit
    from pipeline.competition.metrics import IoUMeter
    from helpers import fake_runs

    fmt = ["submission.format=prediction_string", "submission.id_column=image_id", "submission.image_id=file_name",
           "submission.rle_column=PredictionString", "submission.size=[64, 80]", "infer.num_workers=0", "infer.oof=false"]
    cfg = make_cfg(*fmt, name="pstr")
    fake_runs(cfg)
    infer.run(cfg)
    sub = submit.run(cfg)
    df = read_submission(sub, cfg.submission)
    assert len(df) == 6 and all(len(s.split()) == 64 * 80 for s in df["PredictionString"])
    result = score.run(cfg, StageArgs(sub=str(sub)))
    meter = IoUMeter(6, 255)  # independent: label PNGs and truth, both resized with nearest neighbour
    for p in sorted((Preds.of(cfg).labels).glob("*.png")):
        pred = np.asarray(Image.open(p).resize((80, 64), Image.NEAREST))
        truth = np.asarray(Image.open(cfg.data_root / "test_truth" / p.name).resize((80, 64), Image.NEAREST))
        meter.update(pred, truth)
    assert result["miou"] == pytest.approx(meter.compute()["miou"], abs=1e-12)


def test_trash_preset_on_generated_data_in_its_format(tmp_path, capsys):
    """configs/data/trash.yaml on a small competition written in Boostcamp's layout: images in batch
    folders whose file names repeat, 10 trash categories, PredictionString at 256x256."""
    import json
    import shutil

    from pipeline.cli import main
    from pipeline.data.demo import generate
    from helpers import REPO, TINY

    root = generate(tmp_path / "raw", seed=2, n_train=12, n_test=4)
    names = {"bottle": "General trash", "bag": "Paper", "can": "Metal", "cup": "Glass", "paper": "Plastic"}
    data = tmp_path / "trash"
    for split in ("train", "test"):
        doc = json.loads((root / f"{split}.json").read_text())
        for k, im in enumerate(doc["images"]):
            new = f"batch_0{k % 2 + 1}_vt/{k // 2:04d}.jpg"  # 0000.jpg in both batches
            (data / new).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(root / im["file_name"], data / new)
            im["file_name"] = new
        for cat in doc["categories"]:
            cat["name"] = names[cat["name"]]
        out = split if split == "test" else "train"
        (data / f"{out}.json").write_text(json.dumps(doc))
    args = ["--configs", str(REPO / "configs"), "data=trash", f"data.root={data}", "data.val=null",
            "folds.splits=[train]", "folds.k=2", f"outputs={tmp_path / 'out'}", f"submissions={tmp_path / 'subs'}",
            "runtime.progress=false", *TINY, "train.epochs=1", "train.max_steps_per_epoch=1", "infer.num_workers=0",
            "infer.tta=[]", "name=t"]
    for stage in ("check", "eda", "folds", "train-all", "infer", "submit"):
        assert main([stage, *args]) == 0, capsys.readouterr().err
    folds = (tmp_path / "out" / "trash" / "folds.csv").read_text()
    assert "batch_01_vt__0000" in folds and "batch_02_vt__0000" in folds  # same file name, two images
    sub = next((tmp_path / "subs" / "trash").glob("*.csv"))
    df = read_submission(sub, TRASH.__class__(format="prediction_string", id_column="image_id",
                                              rle_column="PredictionString"))
    assert sorted(df["image_id"]) == ["batch_01_vt/0000.jpg", "batch_01_vt/0001.jpg", "batch_02_vt/0000.jpg",
                                      "batch_02_vt/0001.jpg"]
    assert all(len(s.split()) == 256 * 256 for s in df["PredictionString"])
    meta = json.loads(sub.with_suffix(".json").read_text())
    assert meta["metric"] == "miou_image" and meta["cv_score"] is not None
