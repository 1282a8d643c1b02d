"""The stages winners use, on the small demo data: full-data refit, weight averaging, starting
from another run's weights, rare-class crops."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline import folds, infer, train
from pipeline.config.schema import REFIT
from pipeline.data.dataset import train_transform
from pipeline.engine import checkpoint
from pipeline.inference.outdir import Preds
from helpers import TINY

FAST = [*TINY, "train.epochs=2", "train.max_steps_per_epoch=1", "infer.num_workers=0", "infer.tta=[]"]


@pytest.fixture
def cfg_of(make_cfg):
    def make(*overrides, fold=0, name="r"):
        cfg = make_cfg(*FAST, *overrides, fold=fold, name=name)
        if not cfg.folds_csv.exists():
            folds.run(cfg)
        return cfg

    return make


def test_full_data_refit_trains_on_everything_and_joins_the_ensemble(cfg_of):
    for k in range(2):
        train.run(cfg_of("folds.k=2", fold=k))
    refit = cfg_of("folds.k=2", fold=REFIT)
    out = train.run(refit)
    assert refit.run_dir().name == "all" and (refit.run_dir() / "best.pt").exists()
    m = pd.read_csv(refit.run_dir() / "metrics.csv")
    assert m["val_miou"].isna().all() and len(m) == 2  # nothing held out, nothing validated
    assert out["epochs"] == 2
    with_refit = infer.run(cfg_of("folds.k=2", "infer.refit=with"))
    assert with_refit["models"] == ["r/fold0", "r/fold1", "r/all"]
    assert with_refit["cv_miou"] is not None and with_refit["folds"] == [0, 1]  # OOF from the fold models
    only = infer.run(cfg_of("folds.k=2", "infer.refit=only"))
    assert only["models"] == ["r/all"] and only["cv_miou"] == pytest.approx(with_refit["cv_miou"])


def test_train_all_trains_the_refit_the_recipe_infers_with(cfg_of, caplog):
    """A recipe with `infer.refit: with` runs `train-all` then `infer`: the refit must not be forgotten."""
    caplog.set_level("INFO")
    out = train.run_all(cfg_of("folds.k=2", "infer.refit=with", name="ra"))
    assert sorted(out) == [REFIT, 0, 1]
    epochs = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert len(epochs) == 6 and all("in train-all" in m for m in epochs[:4])  # the folds see the refit ahead
    assert "in train-all" not in epochs[-1] and "left in this run" in epochs[-2]
    assert out[REFIT]["run_dir"].endswith("/all") and out[REFIT]["epochs"] == 2
    assert infer.run(cfg_of("folds.k=2", "infer.refit=with", name="ra"))["models"] == ["ra/fold0", "ra/fold1", "ra/all"]
    assert sorted(train.run_all(cfg_of("folds.k=2", name="plain"))) == [0, 1]  # no refit unless inference uses it


def test_refit_epochs_shorten_the_refit_only_and_resume_the_folds(cfg_of, caplog):
    """`train.refit_epochs`: the refit (about twice a fold's images) trains its own number of epochs;
    the fold runs keep train.epochs and, finished, resume as complete when only that setting changes."""
    from pipeline.errors import ConfigError

    out = train.run_all(cfg_of("folds.k=2", "infer.refit=with", "train.epochs=3", name="re"))
    assert [out[k]["epochs"] for k in (0, 1, REFIT)] == [3, 3, 3]
    caplog.set_level("INFO")
    out = train.run_all(cfg_of("folds.k=2", "infer.refit=with", "train.epochs=3", "train.refit_epochs=1",
                               "train.on_change=restart", name="re"))
    assert [out[k]["epochs"] for k in (0, 1, REFIT)] == [3, 3, 1]
    assert caplog.text.count("complete: nothing to train") == 2  # the folds; the refit started again
    refit_dir = cfg_of("folds.k=2", name="re").run_dir(fold=REFIT)
    assert len(pd.read_csv(refit_dir / "metrics.csv")) == 1
    assert list(refit_dir.parent.glob("all.replaced-*"))  # the 3-epoch refit kept aside, not lost
    with pytest.raises(ConfigError, match="train.refit_epochs"):
        cfg_of("train.refit_epochs=0", name="re0")


def test_refit_init_starts_the_refit_from_the_named_fold_model(cfg_of):
    """`train.refit_init`: the refit begins at a fold model's weights (learning rate 0 keeps them, so
    its last weights are that fold's and not another's); largest_fold picks the fold trained on the
    most images; a missing fold model or an unknown value is named."""
    from pipeline.data.pool import fold_indices, labelled_pool
    from pipeline.errors import ConfigError, TrainingError

    for k in range(3):
        train.run(cfg_of("folds.k=3", fold=k, name="ri"))
    weights = [torch.load(cfg_of("folds.k=3", fold=k, name="ri").run_dir() / "best.pt", weights_only=False)["model"]
               for k in range(3)]
    params = [k for k in weights[0] if "running" not in k and "num_batches" not in k]
    refit = cfg_of("folds.k=3", "infer.refit=with", "train.refit_init=fold1", "train.refit_epochs=1",
                   "train.lr_encoder=0", "train.lr_decoder=0", fold=REFIT, name="ri")
    train.run(refit)
    last = torch.load(refit.run_dir() / "last.pt", weights_only=False)
    assert all(torch.equal(weights[1][k], last["model"][k]) for k in params)
    assert not all(torch.equal(weights[0][k], last["model"][k]) for k in params)
    assert "init_from: ri/fold1" in (refit.run_dir() / "config.yaml").read_text()

    _, table = labelled_pool(refit)
    sizes = [len(fold_indices(table, k)[0]) for k in range(3)]
    largest = sizes.index(max(sizes))
    assert train.refit_start(cfg_of("folds.k=3", "infer.refit=with", "train.refit_init=largest_fold", fold=REFIT,
                                    name="ri"), table) == f"ri/fold{largest}"
    with pytest.raises(TrainingError, match="train.refit_init=fold2: .*nofolds/fold2/best.pt does not exist"):
        train.run(cfg_of("folds.k=3", "infer.refit=with", "train.refit_init=fold2", fold=REFIT, name="nofolds"))
    with pytest.raises(ConfigError, match="train.refit_init: 'best' must be largest_fold or fold<k>"):
        cfg_of("infer.refit=with", "train.refit_init=best", name="bad")
    with pytest.raises(ConfigError, match="train.refit_init: .*infer.refit=off"):
        cfg_of("train.refit_init=fold0", name="off")


def test_train_all_tells_each_run_the_work_left_after_it(cfg_of, monkeypatch):
    """The time-left estimate counts what train-all will still train after each run: the later folds'
    images and the refit's (every labelled image and, with refit_pseudo, the test images) x its epochs."""
    from pipeline.data.pool import fold_indices, labelled_pool
    from pipeline.data.sources import open_split

    after = {}
    monkeypatch.setattr(train, "run", lambda cfg, args, image_epochs_after=0: after.update({cfg.fold: image_epochs_after}))
    monkeypatch.setattr(train, "pseudo_label", lambda cfg, keep_probs: None)
    cfg = cfg_of("folds.k=3", "infer.refit=with", "train.refit_pseudo=true", "train.epochs=5", "train.refit_epochs=2",
                 name="eta")
    train.run_all(cfg)
    _, table = labelled_pool(cfg)
    fold_images = [len(fold_indices(table, k)[0]) for k in range(3)]
    refit = (len(table) + len(open_split(cfg.data, cfg.pseudo.split, labelled=False))) * 2
    assert after == {0: (fold_images[1] + fold_images[2]) * 5 + refit, 1: fold_images[2] * 5 + refit, 2: refit,
                     REFIT: 0}

    # resumed: fold 2 finished and the refit one epoch in (their checkpoints count from epoch 0)
    for k, epoch in ((2, 4), (REFIT, 0)):
        cfg.run_dir(fold=k).mkdir(parents=True, exist_ok=True)
        checkpoint.save(cfg.run_dir(fold=k) / "last.pt", {"model": {}, "optimizer": {}, "epoch": epoch})
    after.clear()
    train.run_all(cfg)
    assert after == {0: fold_images[1] * 5 + refit // 2, 1: refit // 2, 2: refit // 2, REFIT: 0}


def test_the_epoch_line_says_the_time_left_in_the_run_and_in_train_all(caplog):
    """The median of the epochs after the first, times the epochs left; train-all's later runs at this
    run's seconds per image and epoch."""
    from types import SimpleNamespace

    from pipeline.engine.eta import duration, seconds_left
    from pipeline.engine.hooks import ConsoleLog

    caplog.set_level("INFO")
    history = [{"epoch": e + 1, "train_loss": 1.0, "bad_steps": 0, "seconds": s} for e, s in enumerate([30, 10, 12, 10])]
    trainer = SimpleNamespace(history=history, epoch=4, tc=SimpleNamespace(epochs=10), validated=False)
    ConsoleLog(images=100, image_epochs_after=2000).after_epoch(trainer)
    assert caplog.records[-1].getMessage().endswith("(10.0s; ~1 min left in this run, ~4 min in train-all)")  # 60 s, 260 s
    ConsoleLog().after_epoch(trainer)
    assert caplog.records[-1].getMessage().endswith("(10.0s; ~1 min left in this run)")
    assert seconds_left([], 3) is None and seconds_left([50.0], 2, 10, 100) == (100.0, 600.0)
    assert [duration(s) for s in (44.6, 90, 3569, 3599, 11100)] == ["45 s", "2 min", "59 min", "1h00m", "3h05m"]


@pytest.mark.parametrize("rank", [0, 1])
def test_train_all_under_torchrun_one_rank_writes_the_pseudo_labels(cfg_of, monkeypatch, rank):
    """Rank zero labels the test images, every rank waits at the barrier, and only then does any rank
    train the refit on those labels (two writers would race on one folder; an early reader would
    train on half-written labels)."""
    from pipeline.config import DistInfo, StageArgs

    events = []

    class FakeRuntime:
        def barrier(self):
            events.append("barrier")

    monkeypatch.setattr(train, "run", lambda cfg, args, **_: events.append(f"train {cfg.fold}") or {})
    monkeypatch.setattr(train, "pseudo_label", lambda cfg, keep_probs: events.append(
        f"pseudo refit={cfg.infer.refit} keep_probs={keep_probs}"))
    monkeypatch.setattr(train.Runtime, "create", staticmethod(lambda rc, dist: FakeRuntime()))
    cfg = cfg_of("folds.k=2", "infer.refit=with", "train.refit_pseudo=true", name="rk")
    train.run_all(cfg, StageArgs(dist=DistInfo(rank=rank, world=2)))
    labels = ["pseudo refit=off keep_probs=True"] if rank == 0 else []  # the fold ensemble labels: never a refit not yet trained
    assert events == ["train 0", "train 1", *labels, "barrier", f"train {REFIT}"]


def test_refit_from_the_command_line(cfg_of, capsys):
    from pipeline.cli import parse

    _, cfg, _ = parse(["train", "fold=all"])
    assert cfg.fold == REFIT and cfg.run_dir().name == "all"


def test_weight_averaging_writes_a_validated_swa_checkpoint(cfg_of, caplog):
    caplog.set_level("INFO")
    cfg = cfg_of("train.epochs=3", "train.swa_epochs=2", name="swa")
    train.run(cfg)
    swa = torch.load(cfg.run_dir() / "swa.pt", weights_only=False)
    assert swa["averaged"] == 2 and 0 <= swa["val_miou"] <= 1
    last = torch.load(cfg.run_dir() / "last.pt", weights_only=False)
    assert last["hooks"]["swa"]["saved"] is True
    assert "swa.pt: 2 epochs averaged" in caplog.text
    manifest = infer.run(cfg_of("train.epochs=3", "train.swa_epochs=2", "infer.checkpoint=swa", "infer.folds=[0]",
                                name="swa"))
    assert manifest["checkpoint"] == "swa" and manifest["cv_miou"] is not None


def test_init_from_another_run(cfg_of):
    first = cfg_of(name="first")
    train.run(first)
    frozen = cfg_of("train.init_from=first/fold0", "train.lr_encoder=0", "train.lr_decoder=0", name="second")
    train.run(frozen)
    a = torch.load(first.run_dir() / "best.pt", weights_only=False)["model"]
    b = torch.load(frozen.run_dir() / "last.pt", weights_only=False)["model"]
    params = [k for k in a if "running" not in k and "num_batches" not in k]
    assert params and all(torch.equal(a[k], b[k]) for k in params)  # started from them, LR 0 kept them
    from pipeline.errors import TrainingError

    with pytest.raises(TrainingError, match="does not fit this model"):
        train.run(cfg_of("train.init_from=first/fold0", "model.params={width: 0.25, fc_channels: 32}", name="third"))


def test_rare_class_crops_contain_the_rare_class(make_cfg):
    cfg = make_cfg("train.crop=[16, 16]", "train.rare_crop=1.0", "train.augment=[]")
    mask = np.zeros((64, 64), np.uint8)
    mask[50:53, 5:8] = 3  # a small patch of a rare class
    image = np.zeros((64, 64, 3), np.uint8)
    t = train_transform(cfg.train, 255, rare=[3], num_classes=6)
    hits = 0
    for seed in range(30):
        t.set_random_seed(seed)
        hits += int((t(image=image, mask=mask)["mask"] == 3).any())
    assert hits == 30
    plain = train_transform(cfg.train.__class__(crop=(16, 16)), 255)
    misses = 0
    for seed in range(30):
        plain.set_random_seed(seed)
        misses += int(not (plain(image=image, mask=mask)["mask"] == 3).any())
    assert misses > 20  # uniform crops mostly miss it


def test_rare_classes_default_to_the_rarest(make_cfg, caplog):
    caplog.set_level("INFO")
    cfg = make_cfg(*FAST, "train.crop=[48, 48]", "train.rare_crop=0.5", name="rare")
    folds.run(cfg)
    train.run(cfg)
    line = next(r.getMessage() for r in caplog.records if "rare-class crops" in r.getMessage())
    assert "p=0.50" in line and len(line.split(":", 1)[1].split(",")) == 2  # a third of 6 classes
    assert json.loads(json.dumps(line))


def test_pseudo_labels_train_the_next_round_and_never_validate(cfg_of, caplog):
    from PIL import Image

    from pipeline import pseudo
    from helpers import fake_runs

    from pipeline import infer

    cfg = cfg_of(name="p0")
    fake_runs(cfg)
    infer.run(cfg_of("infer.save_probs=true", "infer.oof=false", name="p0"))
    conf = np.concatenate([np.load(p)["probs"].astype(np.float32).max(0).ravel()
                           for p in (Preds.of(cfg).root / "probs").glob("*.npz")])
    threshold = float(np.median(conf))  # about half of the pixels are sure enough
    cfg = cfg_of(f"pseudo.threshold={threshold}", name="p0")
    manifest = pseudo.run(cfg)
    masks = sorted((cfg.pseudo_dir() / "masks").glob("*.png"))
    assert manifest["round"] == 1 and manifest["images"] == len(masks) == 6 and len(manifest["models"]) == 3
    assert 0.3 < manifest["kept_pixel_share"] < 0.7
    kept = sum(int((np.asarray(Image.open(p)) != 255).sum()) for p in masks)
    assert kept == sum(manifest["kept_pixels"].values())  # the manifest counts what the masks hold
    caplog.set_level("INFO")
    nxt = cfg_of("train.pseudo=p0", name="p1")
    train.run(nxt)
    assert "16 train / 8 val images" not in caplog.text and "22 train / 8 val images" in caplog.text
    assert json.loads((nxt.run_dir() / "pseudo.json").read_text())["round"] == 1
    # round 2: an ensemble trained with round-1 labels makes round-2 labels
    for k in (1, 2):
        train.run(cfg_of("train.pseudo=p0", fold=k, name="p1"))
    assert pseudo.run(cfg_of(f"pseudo.threshold={threshold}", name="p1"))["round"] == 2


def test_train_all_pseudo_labels_the_test_for_the_refit_only(cfg_of, caplog):
    """`train.refit_pseudo`: the fold models train on labelled images only (the CV stays theirs);
    the fold ensemble then labels the test images, and the refit trains on both."""
    from pipeline.errors import ConfigError

    caplog.set_level("INFO")
    cfg = cfg_of("folds.k=2", "infer.refit=with", "train.refit_pseudo=true", "pseudo.threshold=0.01", name="rp")
    out = train.run_all(cfg)
    assert sorted(out) == [REFIT, 0, 1]
    manifest = json.loads((cfg.pseudo_dir() / "manifest.json").read_text())
    assert manifest["round"] == 1 and manifest["models"] == [str(cfg.run_dir(fold=k) / "best.pt") for k in (0, 1)]
    used = json.loads((cfg.run_dir(fold=REFIT) / "pseudo.json").read_text())
    assert used["images"] == manifest["images"] == 6
    for k in (0, 1):
        assert not (cfg.run_dir(fold=k) / "pseudo.json").exists()
    assert "fold all (full-data refit): 30 train / 0 val images" in caplog.text  # 24 labelled + 6 test
    with pytest.raises(ConfigError, match="train.refit_pseudo"):
        cfg_of("train.refit_pseudo=true", name="rp2")


def test_infer_reuses_the_pseudo_pass_test_probabilities_only_when_they_are_its_own(cfg_of):
    """Before a pseudo-labelled refit the fold ensemble has already predicted the test images:
    `infer` reuses those probabilities and runs only the refit, with the same result as a full pass
    (up to float16 rounding); a retrained fold model or other settings make it run everything again."""
    import os

    args = ("folds.k=2", "infer.refit=with", "train.refit_pseudo=true", "pseudo.threshold=0.01", "infer.save_probs=true",
            "train.max_steps_per_epoch=6", "train.lr_decoder=0.01")
    cfg = cfg_of(*args, name="ru")
    train.run_all(cfg)
    assert len(list((cfg.pseudo_dir() / "probs").glob("*.npy"))) == 6
    reused = infer.run(cfg)
    assert reused["reused_probs"] == str(cfg.pseudo_dir()) and reused["models"] == ["ru/fold0", "ru/fold1", "ru/all"]
    preds = Preds.of(cfg)
    stems = preds.read_manifest()["files"]
    fast = {s: preds.read_probs(s) for s in stems}
    kept = cfg.pseudo_dir() / "manifest.json"
    text = kept.read_text()
    older = json.loads(text)
    older["probs_key"]["numerics"] -= 1  # as if an earlier segpipe, with other arithmetic, had kept them
    kept.write_text(json.dumps(older))
    assert infer.run(cfg)["reused_probs"] is None
    kept.write_text(text)
    # float16 probabilities are not reused by a run that keeps uint8 ones (nor the reverse)
    assert infer.run(cfg_of(*args, "infer.probs_dtype=uint8", name="ru"))["reused_probs"] is None
    assert infer.run(cfg)["reused_probs"] == str(cfg.pseudo_dir())
    ckpt = cfg.run_dir(fold=1) / "best.pt"
    st = ckpt.stat()
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # as if fold 1 had been trained again
    full = infer.run(cfg)
    assert full["reused_probs"] is None
    slow = {s: preds.read_probs(s) for s in stems}
    assert max(np.abs(slow[s] - fast[s]).max() for s in stems) < 5e-4
    infer.run(cfg_of(*args, "infer.refit=only", name="ru"))  # the tolerance is far below what a member changes
    assert max(np.abs(preds.read_probs(s) - slow[s]).max() for s in stems) > 0.02
    assert infer.run(cfg_of(*args, "infer.tta=[hflip]", name="ru"))["reused_probs"] is None  # other TTA, other key


def test_uint8_kept_probabilities_are_reused_within_half_a_step(tmp_path):
    from pipeline.inference.reuse import ReusedPart, probs_path, save_probs

    torch.manual_seed(0)
    kept, rest = torch.softmax(torch.randn(2, 5, 8, 9), 1).unbind(0)
    save_probs(tmp_path, "a", kept, "uint8")
    assert np.load(probs_path(tmp_path, "a")).dtype == np.uint8
    mean = ReusedPart(tmp_path, weight=3.0).combine("a", rest, 1.0)
    assert (mean - (3 * kept + rest) / 4).abs().max() <= 0.75 / 510 + 1e-6
