"""Room on the disk checked before a stage writes: infer and the pseudo-labelling pass refuse a
prediction folder the disk cannot hold before writing any of it, make check says so before the
training, train-all warns; the estimate is checked against what infer really writes. Probabilities
kept as uint8 (infer.probs_dtype) take half the disk and decide what make submission and the
offline bundle write alike."""
import json
import shutil
from collections import namedtuple
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import fake_runs

from pipeline.data.sources import open_split
from pipeline.errors import DataError, DiskSpaceError
from pipeline.inference.outdir import Preds, encode_probs
from pipeline.inference.space import infer_expected, oof_sizes, prediction_bytes, record_sizes
from pipeline.io import require_space

Usage = namedtuple("Usage", "total used free")
MIB = 2 ** 20


def disk_with(monkeypatch, free: int) -> list:
    """Every disk looks as if `free` bytes were free on it; returns the paths asked about."""
    asked = []

    def usage(path):
        asked.append(str(path))
        return Usage(10 * free, 9 * free, free)

    monkeypatch.setattr("pipeline.io.shutil", SimpleNamespace(disk_usage=usage))
    return asked


def folder_bytes(root) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def test_prediction_bytes_are_float16_probabilities_per_class_and_pixel():
    sizes = [(10, 20), (5, 4)]
    with_probs = prediction_bytes(sizes, 3, keep_probs=True)
    labels_only = prediction_bytes(sizes, 3, keep_probs=False)
    assert with_probs - labels_only == pytest.approx(220 * 3 * 2, abs=1)
    assert 0 < labels_only < 220  # a label PNG takes well under a byte per pixel
    assert prediction_bytes(sizes, 6, True) - labels_only == pytest.approx(2 * (with_probs - labels_only), abs=2)


def test_require_space_names_the_folder_and_both_sizes(tmp_path, monkeypatch):
    asked = disk_with(monkeypatch, 100 * MIB)
    target = tmp_path / "not" / "yet"
    with pytest.raises(DiskSpaceError) as e:
        require_space(target, 200 * MIB, "infer: the predictions")
    message = str(e.value)
    assert str(target) in message and "200.0 MiB" in message and "100.0 MiB is free" in message
    assert "infer: the predictions" in message and "outputs=" in message
    assert asked[-1] == str(tmp_path)  # the nearest folder that exists
    require_space(target, 10 * MIB, "small")  # fits: no error
    assert not target.exists()


def test_infer_refuses_a_folder_the_disk_cannot_hold_and_keeps_the_old_one(make_cfg, monkeypatch):
    from pipeline import infer
    from pipeline.inference.ensemble import find_members

    cfg = make_cfg("infer.save_probs=true", "infer.tta=[]", "infer.num_workers=0")
    fake_runs(cfg)
    manifest = infer.run(cfg)
    preds = Preds.of(cfg)
    kept = (preds.labels, preds.root / "probs", preds.oof.labels, preds.oof.root / "probs")
    written = sum(folder_bytes(d) for d in kept)
    test = record_sizes(open_split(cfg.data, "test", labelled=False).records)
    estimate, what = infer_expected(cfg, test, oof_sizes(cfg, sorted(find_members(cfg)[0])))
    assert f"{manifest['test_images']} test and {manifest['oof_images']} OOF images with float16 probabilities" in what
    assert 0.9 * written <= estimate <= 1.1 * written  # the estimate is what infer writes

    before = {p: p.stat().st_mtime_ns for p in preds.root.rglob("*")}
    disk_with(monkeypatch, estimate // 2)
    with pytest.raises(DiskSpaceError, match="infer: the predictions of"):
        infer.run(cfg)
    assert {p: p.stat().st_mtime_ns for p in preds.root.rglob("*")} == before
    assert not list(preds.root.parent.glob(f".{preds.root.name}.partial-*"))


def test_pseudo_labelling_refuses_before_writing(make_cfg, monkeypatch):
    from pipeline.inference.pseudo_labels import pseudo_label

    cfg = make_cfg("infer.tta=[]", "infer.num_workers=0")
    fake_runs(cfg)
    disk_with(monkeypatch, 4 * MIB)
    with pytest.raises(DiskSpaceError, match="pseudo: the label maps of 6 test images with float16 probabilities"):
        pseudo_label(cfg, keep_probs=True)
    assert not cfg.pseudo_dir().exists() and not list(cfg.pseudo_dir().parent.glob("*.partial-*"))


def test_check_says_the_disk_is_too_small_before_the_training(make_cfg, monkeypatch):
    from pipeline import check

    cfg = make_cfg("infer.save_probs=true")
    assert check.run(cfg)["disk"]["problems"] == []
    disk_with(monkeypatch, 1 * MIB)
    with pytest.raises(DataError, match="1 problem"):
        check.run(cfg)
    report = {}
    check._check_disk(cfg, report)
    [problem] = report["disk"]["problems"]  # before folds.csv: every labelled image is an OOF image
    assert str(cfg.out_dir) in problem and "6 test and 24 OOF images with float16 probabilities" in problem


def test_train_all_warns_before_the_training_when_the_predictions_will_not_fit(make_cfg, monkeypatch, caplog):
    from pipeline import folds, train

    cfg = make_cfg("infer.save_probs=true")
    folds.run(cfg)
    trained = []
    monkeypatch.setattr(train, "run", lambda c, *a, **k: trained.append(c.fold) or {})
    caplog.set_level("WARNING")
    disk_with(monkeypatch, 1 * MIB)
    train.run_all(cfg)
    warned = [r.getMessage() for r in caplog.records if "is free on that disk" in r.getMessage()]
    assert len(warned) == 1 and "after the training" in warned[0] and trained == [0, 1, 2]
    caplog.clear()
    monkeypatch.setattr("pipeline.io.shutil", shutil)  # the real disk: room enough
    train.run_all(cfg)
    assert not [r for r in caplog.records if "is free on that disk" in r.getMessage()]


def test_uint8_probabilities_are_off_by_at_most_half_a_step():
    from pipeline.inference.outdir import decode_probs, encode_probs

    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(5), size=(40, 30)).transpose(2, 0, 1).astype(np.float32)
    kept = encode_probs(probs, "uint8")
    assert kept.dtype == np.uint8
    assert np.abs(decode_probs(kept) - probs).max() <= 1 / 510 + 1e-6
    assert np.abs(decode_probs(encode_probs(probs, "float16")) - probs).max() <= 1e-3
    assert decode_probs(encode_probs(np.array([1.2, -0.1], np.float32), "uint8")).tolist() == [1.0, 0.0]


def test_uint8_probabilities_take_half_the_disk_and_tune_and_submit_read_them(make_cfg):
    from pipeline import infer, submit, tune

    over = ["infer.save_probs=true", "infer.tta=[]", "infer.num_workers=0"]
    half_cfg = make_cfg(*over, "infer.probs_dtype=uint8")
    fake_runs(half_cfg)
    preds = Preds.of(half_cfg)
    infer.run(make_cfg(*over))  # float16 first, the same models
    full = {p.stem: preds.oof.read_probs(p.stem) for p in (preds.oof.root / "probs").glob("*.npz")}
    full_bytes = folder_bytes(preds.root / "probs") + folder_bytes(preds.oof.root / "probs")

    manifest = infer.run(half_cfg)
    assert manifest["probs_dtype"] == "uint8"
    half_bytes = folder_bytes(preds.root / "probs") + folder_bytes(preds.oof.root / "probs")
    assert 0.45 <= half_bytes / full_bytes <= 0.55
    for stem, p in full.items():
        assert np.abs(preds.oof.read_probs(stem) - p).max() <= 1 / 510 + 1e-3  # uint8's half step, float16's rounding
    test = record_sizes(open_split(half_cfg.data, "test", labelled=False).records)
    estimate, what = infer_expected(half_cfg, test, oof_sizes(half_cfg, range(half_cfg.folds.k)))
    assert "uint8 probabilities" in what and "halves" not in what
    written = half_bytes + folder_bytes(preds.labels) + folder_bytes(preds.oof.labels)
    assert 0.9 * written <= estimate <= 1.1 * written
    tuned = tune.run(half_cfg)
    assert tuned["oof_after"] >= tuned["oof_before"]
    assert submit.run(half_cfg).exists()


def test_the_bundle_rounds_its_probabilities_as_make_submission_read_them(make_cfg, tmp_path, monkeypatch):
    from pipeline import export, infer, submit
    from pipeline.competition.submission import read_submission
    from pipeline.config import StageArgs
    from pipeline.inference import bundle as bundle_module
    from pipeline.io import write_json

    def no_wheel(out):  # predict_folder runs in this process: the wheel is test_export's business
        out.mkdir(parents=True, exist_ok=True)
        (out / "segpipe-0-py3-none-any.whl").write_bytes(b"")
        return out / "segpipe-0-py3-none-any.whl"

    rounded = []

    def spy(probs, dtype):
        rounded.append(dtype)
        return encode_probs(probs, dtype)

    monkeypatch.setattr(export, "_wheel", no_wheel)
    monkeypatch.setattr(bundle_module, "encode_probs", spy)
    cfg = make_cfg("infer.save_probs=true", "infer.tta=[]", "infer.num_workers=0", "infer.probs_dtype=uint8")
    fake_runs(cfg)
    infer.run(cfg)
    write_json(Preds.of(cfg).postprocess, {"rules": {cfg.data.classes[1]: {"bias": 2.0}}})
    expected = read_submission(submit.run(cfg), cfg.submission)
    bundle = export.run(cfg, StageArgs(out=str(tmp_path / "bundle")))
    assert json.loads((bundle / "bundle.json").read_text())["probs_dtype"] == "uint8"
    images = tmp_path / "test_images"
    images.mkdir()
    for r in open_split(cfg.data, "test", labelled=False).records:
        shutil.copy(r.path, images / r.path.name)
    got = read_submission(bundle_module.predict_folder(bundle, images, tmp_path / "bundle.csv", "cpu"), cfg.submission)
    assert rounded == ["uint8"] * len(list(images.iterdir()))  # each image's probabilities, as infer kept them
    key = list(expected.columns)
    assert got.sort_values(key).reset_index(drop=True).equals(expected.sort_values(key).reset_index(drop=True))
