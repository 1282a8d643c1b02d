"""Room on the disk checked before a stage writes: infer and the pseudo-labelling pass refuse a
prediction folder the disk cannot hold before writing any of it, make check says so before the
training, train-all warns; the estimate is checked against what infer really writes."""
import shutil
from collections import namedtuple
from types import SimpleNamespace

import pytest
from helpers import fake_runs

from pipeline.errors import DataError, DiskSpaceError
from pipeline.inference.outdir import Preds
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
    from pipeline.data.sources import open_split
    from pipeline.inference.ensemble import find_members

    cfg = make_cfg("infer.save_probs=true", "infer.tta=[]", "infer.num_workers=0")
    fake_runs(cfg)
    manifest = infer.run(cfg)
    preds = Preds.of(cfg)
    written = sum(folder_bytes(d) for d in (preds.labels, preds.root / "probs", preds.oof.labels, preds.oof.root / "probs"))
    test = record_sizes(open_split(cfg.data, "test", labelled=False).records)
    estimate, what = infer_expected(cfg, test, oof_sizes(cfg, sorted(find_members(cfg)[0])))
    assert f"{manifest['test_images']} test and {manifest['oof_images']} OOF images with probabilities" in what
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
    with pytest.raises(DiskSpaceError, match="pseudo: the label maps of 6 test images with probabilities"):
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
    assert str(cfg.out_dir) in problem and "6 test and 24 OOF images with probabilities" in problem


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
