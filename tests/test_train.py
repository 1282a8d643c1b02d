import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline import folds, train
from pipeline.engine.hooks import Hook
from pipeline.engine.trainer import Trainer
from pipeline.errors import TrainingError
from pipeline.data.dataset import SegDataset, eval_transform, train_transform
from pipeline.data.sources import open_split
from helpers import ARCHS, REPO, TINY


@pytest.fixture
def fold_cfg(make_cfg):
    def make(*overrides, **kw):
        cfg = make_cfg(*TINY, *overrides, **kw)
        if not cfg.folds_csv.exists():
            folds.run(cfg)
        return cfg

    return make


@pytest.mark.parametrize("arch,encoder,params", ARCHS, ids=[a[0] for a in ARCHS])
def test_every_model_trains_a_few_steps(fold_cfg, arch, encoder, params):
    cfg = fold_cfg(f"model.arch={arch}", f"model.encoder_name={encoder}", f"model.params={params or {}}",
                   "train.epochs=1", "train.max_steps_per_epoch=2")
    out = train.run(cfg)
    run_dir = cfg.run_dir()
    assert (run_dir / "best.pt").exists() and (run_dir / "last.pt").exists()
    m = pd.read_csv(run_dir / "metrics.csv")
    assert len(m) == 1 and 0 <= m["val_miou"][0] <= 1 and np.isfinite(m["train_loss"][0])
    assert out["best_score"] == pytest.approx(m["val_miou"][0], abs=1e-12)
    assert (run_dir / "config.yaml").exists() and (run_dir / "curves.png").exists()


def _cli(cfg_args, tmp_path, *extra, check=True, kill_at=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    entry = ["-m", "pipeline", "train"] if kill_at is None else [str(REPO / "tests" / "train_and_kill.py"), str(kill_at)]
    cmd = [sys.executable, *entry, *cfg_args, *extra]
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert p.returncode == 0, p.stderr[-3000:]
    return p


@pytest.mark.parametrize("amp", ["off", "bf16"])
def test_killed_run_resumes_to_identical_weights(fold_cfg, demo_root, tmp_path, amp):
    """fp32, and bf16 autocast on the CPU: checkpoints stay fp32, and the resumed run ends where the
    straight one does, bit for bit."""
    fold_cfg()  # writes folds.csv under tmp_path/outputs
    # 2 steps an epoch keep it short where bf16 is emulated (AVX2: ~7x fp32's time); step 3 is mid-epoch 2
    base = [f"data.root={demo_root}", f"outputs={tmp_path / 'outputs'}", "runtime.progress=false",
            *TINY, "train.epochs=3", "train.max_steps_per_epoch=2", "train.augment=[{name: HorizontalFlip, p: 0.5}]",
            "train.ema_decay=0.9", f"runtime.amp={amp}"]
    _cli(base + ["name=straight"], tmp_path)
    killed = _cli(base + ["name=killed"], tmp_path, check=False, kill_at=3)
    assert killed.returncode == -9  # SIGKILL in the middle of epoch 2
    run_dir = tmp_path / "outputs" / "demo" / "runs"
    assert len(pd.read_csv(run_dir / "killed" / "fold0" / "metrics.csv")) == 1
    resumed = _cli(base + ["name=killed"], tmp_path)
    assert "resuming" in resumed.stdout
    a = torch.load(run_dir / "straight" / "fold0" / "last.pt", weights_only=False)
    b = torch.load(run_dir / "killed" / "fold0" / "last.pt", weights_only=False)
    assert a["epoch"] == b["epoch"] == 2
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
        assert not a["model"][k].is_floating_point() or a["model"][k].dtype == torch.float32, k
    for k in a["ema"]:
        assert torch.equal(a["ema"][k], b["ema"][k]), k


def test_corrupt_checkpoint_falls_back_to_previous(fold_cfg, caplog):
    cfg = fold_cfg("train.epochs=3")
    with pytest.raises(_Interrupt):  # stopped after epoch 2: last.pt = epoch 2, last.prev.pt = epoch 1
        train.run(cfg, hooks=[_RaiseAtEpoch(2)])
    last = cfg.run_dir() / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 3])  # truncated mid-write
    caplog.set_level("INFO")
    train.run(cfg)
    assert "unreadable checkpoint" in caplog.text and "after epoch 1" in caplog.text
    m = pd.read_csv(cfg.run_dir() / "metrics.csv")
    assert m["epoch"].tolist() == [1, 2, 3]  # epoch 2 redone from epoch 1's checkpoint, then 3


class _Interrupt(Exception):
    pass


class _RaiseAtEpoch(Hook):
    """Interrupts training after the given epoch has been checkpointed."""

    def __init__(self, epoch):
        self.epoch = epoch

    def after_epoch(self, trainer):
        if trainer.epoch == self.epoch:
            raise _Interrupt


class _NaNLoss(torch.nn.Module):
    def __init__(self, bad_calls):
        super().__init__()
        self.calls, self.bad_calls = 0, bad_calls

    def forward(self, logits, target):
        self.calls += 1
        loss = torch.nn.functional.cross_entropy(logits, target, ignore_index=255)
        return loss * float("nan") if self.calls in self.bad_calls else loss


def test_nan_steps_are_skipped_and_counted(fold_cfg, monkeypatch):
    monkeypatch.setattr(train, "build_loss", lambda *a: _NaNLoss({1, 2}))
    cfg = fold_cfg("train.epochs=1")
    train.run(cfg)
    m = pd.read_csv(cfg.run_dir() / "metrics.csv")
    assert m["bad_steps"][0] == 2 and np.isfinite(m["train_loss"][0])


def test_persistent_nan_stops_the_run(fold_cfg, monkeypatch):
    monkeypatch.setattr(train, "build_loss", lambda *a: _NaNLoss(set(range(1, 100))))
    with pytest.raises(TrainingError, match="3 consecutive non-finite losses"):
        train.run(fold_cfg("train.epochs=1", "train.max_bad_steps=3"))


def test_validation_is_never_augmented(fold_cfg):
    cfg = fold_cfg("train.augment=[{name: HorizontalFlip, p: 1.0}, {name: VerticalFlip, p: 1.0}]")
    src = open_split(cfg.data, "train")
    val = SegDataset(src, [0], eval_transform(cfg.train))
    tr = SegDataset(src, [0], train_transform(cfg.train, 255))
    x_val, y_val = val[0]
    x_tr, y_tr = tr[0]
    assert torch.equal(y_val, torch.from_numpy(src.mask(0).astype(np.int64)))
    assert torch.equal(y_tr, y_val.flip(0).flip(1))
    assert torch.allclose(x_tr, x_val.flip(1).flip(2))


def test_ddp_two_processes_on_cpu(fold_cfg, demo_root, tmp_path):
    fold_cfg()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    args = ["-m", "pipeline", "train", f"data.root={demo_root}", f"outputs={tmp_path / 'outputs'}",
            "runtime.progress=false", *TINY, "name=ddp"]
    p = subprocess.run(torchrun + args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "x2" in p.stdout  # the run reported two ranks
    m = pd.read_csv(tmp_path / "outputs" / "demo" / "runs" / "ddp" / "fold0" / "metrics.csv")
    assert len(m) == 2 and m["val_miou"].between(0, 1).all()


def test_ddp_train_all_with_a_pseudo_labelled_refit(fold_cfg, demo_root, tmp_path):
    """train-all under torchrun with a pseudo-labelled refit: the folds, the test's pseudo-labels, then the
    refit trained on them by both ranks, end to end through the gloo barrier. That only rank zero writes
    the labels is checked by test_recipes.py::test_train_all_under_torchrun_one_rank_writes_the_pseudo_labels
    (a race this run would not reliably show)."""
    import json

    fold_cfg()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    common = [f"data.root={demo_root}", f"outputs={tmp_path / 'outputs'}", "runtime.progress=false", *TINY,
              "folds.k=2", "train.epochs=1", "train.max_steps_per_epoch=1", "infer.tta=[]", "infer.num_workers=0",
              "infer.refit=with", "train.refit_pseudo=true", "pseudo.threshold=0.01", "name=ddp_rp"]
    subprocess.run([sys.executable, "-m", "pipeline", "folds", *common], cwd=REPO, env=env, check=True, capture_output=True)
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "pipeline", "train-all", *common], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    out = tmp_path / "outputs" / "demo"
    manifest = json.loads((out / "pseudo" / "ddp_rp" / "manifest.json").read_text())
    assert manifest["images"] == 6 and len(manifest["models"]) == 2
    assert json.loads((out / "runs" / "ddp_rp" / "all" / "pseudo.json").read_text())["images"] == 6


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
@pytest.mark.parametrize("arch,encoder,params", ARCHS, ids=[a[0] for a in ARCHS])
def test_gpu_amp_channels_last(fold_cfg, arch, encoder, params, amp):
    cfg = fold_cfg("train.epochs=2", "runtime.device=cuda", f"runtime.amp={amp}", "runtime.channels_last=true",
                   f"model.arch={arch}", f"model.encoder_name={encoder}", f"model.params={params or {}}")
    out = train.run(cfg)
    m = pd.read_csv(cfg.run_dir() / "metrics.csv")
    assert m["bad_steps"].sum() == 0 and np.isfinite(m["train_loss"]).all()
    assert 0 <= out["best_score"] <= 1


def test_validation_every_n_epochs(fold_cfg):
    cfg = fold_cfg("train.epochs=3", "train.val_every=2")
    train.run(cfg)
    m = pd.read_csv(cfg.run_dir() / "metrics.csv")
    assert m["epoch"].tolist() == [1, 2, 3]
    assert m["val_miou"].isna().tolist() == [True, False, False]  # epoch 2, then always the last
    assert torch.load(cfg.run_dir() / "best.pt", weights_only=False)["epoch"] in (1, 2)


def test_accumulation_clipping_sgd_poly(fold_cfg):
    cfg = fold_cfg("train.epochs=2", "train.accum_steps=2", "train.clip_grad=1.0", "train.optimizer=sgd",
                   "train.scheduler=poly", "train.max_steps_per_epoch=2")
    train.run(cfg)
    state = torch.load(cfg.run_dir() / "last.pt", weights_only=False)
    assert state["global_step"] == 4  # 2 optimiser steps per epoch, each from 2 micro-batches
    assert state["optimizer"]["param_groups"][0]["momentum"] == 0.9


def _camvid_like(root):
    from PIL import Image

    for split, seqs in (("train", ("0001TP", "0006R0", "0016E5")), ("val", ("0016E5",))):
        for sub in ("images", "masks"):
            (root / split / sub).mkdir(parents=True)
        for s in seqs:
            for f in range(4):
                stem = f"{s}_{f + (100 if split == 'val' else 0):06d}"
                Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / split / "images" / f"{stem}.jpg")
                Image.fromarray(np.full((8, 8), f % 11, np.uint8)).save(root / split / "masks" / f"{stem}.png")
    return root


def test_camvid_folds_hold_out_drives_and_a_later_block(tmp_path):
    """Two drives held out whole, the later half of 0016E5 (train and val frames pooled, in frame
    order) held out while its earlier half trains in every fold."""
    from pipeline.config import load_config

    root = _camvid_like(tmp_path)
    cfg = load_config("camvid", "unet", None, [f"data.root={root}", f"outputs={tmp_path / 'out'}"], 0, REPO / "configs")
    df = folds.run(cfg)
    assert sorted(df["fold"].unique()) == [-1, 0, 1, 2] and set(df["split"]) == {"train", "val"}
    assert (df.groupby("group")["fold"].nunique() == 1).all()  # no group straddles folds, val frames included
    assert (df.groupby("fold")["group"].nunique() == 1).all()  # one group per fold
    e5 = df[df["image_id"].str.startswith("0016E5")].assign(frame=lambda d: d["image_id"].str[7:].astype(int))
    head, tail = e5[e5["fold"] == -1], e5[e5["fold"] == 2]
    assert head["frame"].max() < tail["frame"].min() and abs(len(head) - len(tail)) <= 1
    assert set(df.loc[df["fold"] == 2, "kind"]) == {"later_frames"} and set(df.loc[df["fold"] < 2, "kind"]) - {"train_only"} == {"new_group"}


def test_a_holdout_split_sharing_a_group_is_warned_about(tmp_path, caplog):
    from pipeline.config import load_config

    root = _camvid_like(tmp_path)
    cfg = load_config("camvid", "unet", None, [f"data.root={root}", f"outputs={tmp_path / 'out'}",
                                               "folds.splits=[train]", "folds.holdout=val"], 0, REPO / "configs")
    df = folds.run(cfg)
    assert (df.loc[df["split"] == "val", "fold"] == 3).all() and (df.loc[df["split"] == "train", "fold"] < 3).all()
    assert "shares group(s) ['0016E5']" in caplog.text and "near-duplicates" in caplog.text


def test_tensorboard_scalars(fold_cfg):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = fold_cfg("train.epochs=2", "train.trackers=[tensorboard]")
    train.run(cfg)
    acc = EventAccumulator(str(cfg.run_dir() / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("val_miou")] == [1, 2]
    assert "lr_decoder" in acc.Tags()["scalars"]


def test_early_stopping_on_val_miou(fold_cfg, monkeypatch):
    scores = iter([0.5, 0.7, 0.6, 0.65, 0.9, 0.9])  # best at epoch 2, then two worse validations

    def scripted(self):
        self.confusion = np.eye(len(self.class_names), dtype=np.int64)
        s = next(scores) / 2
        return {"val_loss": 1.0, "val_score": s, "val_miou": s, "pixel_acc": 0.5}

    monkeypatch.setattr(Trainer, "validate", scripted)
    out = train.run(fold_cfg("train.epochs=6", "train.patience=2"))
    assert out["early_stopped_at"] == 4 and out["epochs"] == 4
    assert out["best_score"] == pytest.approx(0.35)
    best = torch.load(out["run_dir"] + "/best.pt", weights_only=False)
    assert best["epoch"] == 1  # 0-based: the second epoch


def test_augmentation_changes_every_epoch_with_persistent_workers(fold_cfg):
    """Persistent workers keep their own dataset copy: the epoch must reach them through the sampler."""
    from torch.utils.data import DataLoader, SequentialSampler

    from pipeline.data.dataset import EpochSampler

    class Seq(SequentialSampler):
        def set_epoch(self, epoch):
            pass

    cfg = fold_cfg("train.crop=[48, 48]", "train.augment=[{name: HorizontalFlip, p: 0.5}]")
    src = open_split(cfg.data, "train")
    ds = SegDataset(src, range(4), train_transform(cfg.train, 255), seed=3)

    def epochs(workers):
        sampler = EpochSampler(Seq(ds), len(ds))
        loader = DataLoader(ds, batch_size=4, sampler=sampler, num_workers=workers, persistent_workers=workers > 0)
        out = []
        for e in range(2):
            sampler.set_epoch(e)
            out.append(next(iter(loader))[0])
        return out

    with_workers, without = epochs(2), epochs(0)
    assert not torch.equal(with_workers[0], with_workers[1])  # a new augmentation each epoch
    for a, b in zip(with_workers, without):
        assert torch.equal(a, b)  # and the same samples whatever the worker count
