"""Nothing silently wrong, part 2: every file people edit by hand (folds.csv, postprocess.json, a
prediction manifest, a submission's record, the leaderboard) is read through one validating reader
that `make check` uses too; config values are checked for sense; the local truth is checked
against the test list; lossy masks, damaged weights, a full disk, two submissions in one second
and huge CSV fields are each refused or handled with one line naming the file and the field."""
import csv
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from pipeline import infer
from pipeline.cli import main
from pipeline.competition.submission import read_submission, resize_nearest
from pipeline.config import SubmissionConfig
from pipeline.data.coco import load_coco
from pipeline.data.sources import read_label_png
from pipeline.engine import checkpoint
from pipeline.errors import DataError, TrainingError, WeightsError
from pipeline.inference.outdir import Preds
from helpers import REPO, TINY, fake_runs, write_coco


@pytest.fixture(scope="module")
def built_chain(demo_root, tmp_path_factory):
    """Folds, tiny fold models and their predictions over a copy of the demo data, built once per
    module (inference and its error-analysis page take seconds); each test works on its own copy."""
    from pipeline.config import load_config

    base = tmp_path_factory.mktemp("chain")
    shutil.copytree(demo_root, base / "demo")
    cfg = load_config("demo", "unet", None, [f"data.root={base / 'demo'}", f"outputs={base / 'outputs'}",
                                             f"submissions={base / 'submissions'}", "runtime.progress=false", *TINY],
                      0, REPO / "configs")
    fake_runs(cfg)
    infer.run(cfg)
    return base


@pytest.fixture
def chain(make_cfg, built_chain, tmp_path, capsys):
    """A private copy of `built_chain` (data and outputs, nothing in them names the folder); `run`
    calls the CLI and returns (exit code, stdout, stderr)."""
    root = tmp_path / "demo"
    shutil.copytree(built_chain / "demo", root)
    shutil.copytree(built_chain / "outputs", tmp_path / "outputs")
    cfg = make_cfg(*TINY, root=root)
    common = [f"data.root={root}", f"outputs={tmp_path / 'outputs'}", f"submissions={tmp_path / 'submissions'}",
              "runtime.progress=false", *TINY]

    def run(stage, *extra):
        capsys.readouterr()
        rc = main([stage, "--configs", str(REPO / "configs"), *common, *extra])
        out = capsys.readouterr()
        return rc, out.out, out.err

    run.cfg = cfg
    return run


def _one_line(result, stage, *fragments):
    rc, _, err = result
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"segpipe {stage}: error: "), err
    for f in fragments:
        assert f in lines[0], lines[0]


def _edit_folds(path, how):
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    if how == "no fold column":
        df = df.drop(columns=["fold"])
    elif how == "word":
        df.loc[3, "fold"] = "two"
    elif how == "empty":
        df.loc[3, "fold"] = ""
    elif how == "float":
        df.loc[3, "fold"] = "1.5"
    elif how == "duplicate":
        df = pd.concat([df, df.iloc[[2]]], ignore_index=True)
    elif how == "gap":
        df.loc[df["fold"] == "2", "fold"] = "7"
    elif how == "semicolon":
        path.write_text(df.to_csv(index=False, sep=";"))
        return
    elif how == "unknown split":
        df.loc[0, "split"] = "tarin"
    path.write_text(df.to_csv(index=False))


@pytest.mark.parametrize("how,fragment", [
    ("no fold column", "missing column(s) ['fold']"),
    ("word", "line 5, column fold: 'two'"),
    ("empty", "line 5, column fold: ''"),
    ("float", "line 5, column fold: '1.5'"),
    ("duplicate", "is listed 2 times"),
    ("gap", "no gap"),
    ("semicolon", "separated by ';'"),
    ("unknown split", "line 2, column split: 'tarin'"),
])
def test_hand_edited_folds_csv_is_refused_by_check_and_training(chain, how, fragment):
    _edit_folds(chain.cfg.folds_csv, how)
    rc, out, err = chain("check")
    assert rc == 2 and fragment in out, out  # listed by make check, not "all well"
    _one_line(chain("train"), "train", str(chain.cfg.folds_csv), fragment)


@pytest.mark.parametrize("doc,fragment", [
    ({"rules": {"bottel": {"min_area": 0.001}}}, "rules.bottel: 'bottel' is not a class"),
    ({"rules": {"bottle": {"min_area": 250}}}, "rules.bottle.min_area: 250 is outside 0..1 (a pixel count?"),
    ({"rules": {"bottle": {"min_aera": 0.01}}}, "rules.bottle.min_aera: unknown field"),
    ({"rules": {"bottle": {"gate": "big"}}}, "rules.bottle.gate: expected a number"),
    ({"rules": ["bottle"]}, "field 'rules': expected a mapping"),
    ("{\"rules\": {", "line 1, column"),
])
def test_hand_edited_postprocess_json_is_refused(chain, doc, fragment):
    path = Preds.of(chain.cfg).postprocess
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    _one_line(chain("submit"), "submit", str(path), fragment)
    rc, out, _ = chain("check")
    assert rc == 2 and fragment in out
    assert not list((chain.cfg.out_dir.parent.parent / "submissions").rglob("*.csv"))  # nothing written


def test_truncated_manifest_is_refused(chain):
    path = Preds.of(chain.cfg).manifest
    path.write_text(path.read_text()[:40])
    _one_line(chain("submit"), "submit", str(path), "not valid JSON")
    path.write_text(json.dumps({"files": "all"}))
    _one_line(chain("submit"), "submit", "field 'files'")


def test_malformed_submission_record_and_leaderboard(chain):
    assert chain("submit")[0] == 0
    sub = next((chain.cfg.out_dir.parent.parent / "submissions").rglob("*.csv"))
    record = sub.with_suffix(".json")
    good = record.read_text()
    record.write_text(good[:-10])
    _one_line(chain("score", f"sub={sub}"), "score", str(record), "not valid JSON")
    record.write_text(json.dumps({**json.loads(good), "cv_score": "high"}))
    _one_line(chain("score", f"sub={sub}"), "score", "field 'cv_score'")
    record.write_text(good)
    assert chain("score", f"sub={sub}")[0] == 0
    board = sub.parent.parent / "leaderboard.csv"
    df = pd.read_csv(board, dtype=str, keep_default_na=False)
    df.loc[0, "local_score"] = "0,93"  # a spreadsheet's decimal comma
    df.to_csv(board, index=False)
    before = board.read_text()
    _one_line(chain("score", f"sub={sub}"), "score", str(board), "line 2, column local_score: '0,93'")
    assert board.read_text() == before  # nothing appended
    rc, out, _ = chain("check")
    assert rc == 2 and "local_score" in out


@pytest.mark.parametrize("override,fragment", [
    ("train.lr_encoder=-0.001", "train.lr_encoder: -0.001 is outside [0, inf)"),
    ("train.wd_decoder=-0.1", "train.wd_decoder: -0.1 is outside [0, inf)"),
    ("train.losses=[{name: ce, weight: -1}]", "weight: -1.0 is outside [0, inf)"),
    ("train.losses=[{name: ce, weight: 0}]", "every weight is 0"),
    ("train.ema_decay=1.5", "train.ema_decay: 1.5 is outside (0, 1)"),
    ("train.rare_crop=2", "train.rare_crop"),
    ("infer.tta=[scale:0]", "every scale must be > 0"),
    ("infer.overlap=1", "infer.overlap: 1.0 is outside [0, 1)"),
    ("train.lr_encoder=.nan", "expected a number (finite)"),
    ("folds.k=1", "folds.k: 1 is outside [2, inf)"),
    ("data.category_map={1: 40}", "data.category_map: 1: 40 must map"),
])
def test_config_values_are_checked_for_sense(chain, override, fragment):
    _one_line(chain("train", override), "train", fragment)


def test_crop_in_augment_larger_than_the_images_is_refused_before_training(chain):
    _one_line(chain("train", "train.augment=[{name: RandomCrop, height: 999, width: 64}]"), "train",
              "RandomCrop [999, 64] is larger than the smallest training image")


def test_group_regex_that_misses_images_is_one_line(chain):
    _one_line(chain("folds", "folds.group_regex='^seq(\\d+)_'"), "folds", "does not match image")


def test_local_truth_must_be_the_test_list(chain):
    assert chain("submit")[0] == 0
    truth = chain.cfg.data_root / "test_truth"
    victim = sorted(truth.glob("*.png"))[0]
    victim.rename(victim.with_name("zz_not_a_test_image.png"))
    result = chain("score")
    _one_line(result, "score", "no label for 1 of the", "not in the test list")
    rc, out, _ = chain("check")
    assert rc == 2 and "no label for 1 of the" in out
    assert not (chain.cfg.out_dir.parent.parent / "submissions" / "leaderboard.csv").exists()


def test_coco_tables_checked_for_consistency(tmp_path):
    img = {"id": 1, "file_name": "a.png", "height": 10, "width": 12}
    cats = [{"id": 1, "name": "a"}, {"id": 1, "name": "b"}]
    path = write_coco(tmp_path / "cats.json", [img], [], cats)
    with pytest.raises(DataError, match=r"categories\[1\]: id 1 \('b'\) repeats categories\[0\] \('a'\)"):
        load_coco(path)
    twice = [img, {**img, "id": 2}]
    path = write_coco(tmp_path / "files.json", twice, [])
    with pytest.raises(DataError, match=r"images\[1\]: file_name 'a.png' \(id 2\) repeats images\[0\]"):
        load_coco(path)


def test_a_jpeg_named_png_is_not_read_as_a_mask(tmp_path):
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 4:12] = 3
    Image.fromarray(mask).save(tmp_path / "m.png", format="JPEG", quality=90)
    with pytest.raises(DataError, match=r"m\.png: a JPEG file .*lossy"):
        read_label_png(tmp_path / "m.png")


def test_damaged_encoder_weights_name_the_file(tmp_path):
    from pipeline.config import ModelConfig
    from pipeline.models import build_model

    net = build_model(ModelConfig("t", "Unet", "resnet18"), 3)
    state = {k: v.clone() for k, v in net.encoder.state_dict().items()}
    state["conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    with pytest.raises(WeightsError, match=r"nan\.pt: non-finite values .*'conv1\.weight'"):
        build_model(ModelConfig("t", "Unet", "resnet18", encoder_weights=str(tmp_path / "nan.pt")), 3)
    torch.save({1: torch.zeros(1)}, tmp_path / "keys.pt")
    with pytest.raises(WeightsError, match=r"keys\.pt: parameter names must be strings"):
        build_model(ModelConfig("t", "Unet", "resnet18", encoder_weights=str(tmp_path / "keys.pt")), 3)


def test_full_disk_while_saving_a_checkpoint_keeps_the_previous(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoint.save(path, {"model": {"w": torch.ones(2)}, "optimizer": None, "epoch": 0})

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(TrainingError, match=r"last\.pt: could not be written .*No space left.*previous checkpoint .* is intact"):
        checkpoint.save(path, {"model": {"w": torch.zeros(2)}, "optimizer": None, "epoch": 1})
    monkeypatch.undo()
    assert checkpoint.load_latest(tmp_path)["epoch"] == 0
    assert not list(tmp_path.glob(".*staging*"))


def test_two_submissions_in_the_same_second_get_two_files(chain, monkeypatch):
    import time

    monkeypatch.setattr(time, "strftime", lambda fmt, *a: "20260101-000000")
    assert chain("submit")[0] == 0
    assert chain("submit")[0] == 0
    names = sorted(p.name for p in (chain.cfg.out_dir.parent.parent / "submissions").rglob("*.csv"))
    exp = chain.cfg.exp
    assert names == [f"20260101-000000-1_{exp}.csv", f"20260101-000000_{exp}.csv"]


def test_prediction_strings_longer_than_the_csv_default_limit_are_read(tmp_path):
    sc = SubmissionConfig(format="prediction_string", id_column="image_id", rle_column="PredictionString")
    long = " ".join(str(v % 11) for v in range(65536))  # 256x256, ten classes and more: ~150k characters
    assert len(long) > 131072
    path = tmp_path / "sub.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["image_id", "PredictionString"], ["a.jpg", long]])
    df = read_submission(path, sc)
    assert df["PredictionString"][0] == long


def test_nearest_resize_conventions():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    label = rng.integers(0, 11, (512, 384)).astype(np.uint8)
    corner = resize_nearest(label, (256, 256), "corner")
    centre = resize_nearest(label, (256, 256), "centre")
    assert np.array_equal(corner, cv2.resize(label, (256, 256), interpolation=cv2.INTER_NEAREST))
    assert np.array_equal(centre, np.asarray(Image.fromarray(label).resize((256, 256), Image.NEAREST)))
    smooth = np.repeat(np.repeat(rng.integers(0, 11, (16, 12)).astype(np.uint8), 32, 0), 32, 1)
    differ = (resize_nearest(smooth, (256, 256), "corner") != resize_nearest(smooth, (256, 256), "centre")).mean()
    assert 0 < differ < 0.1  # region edges move by a pixel
