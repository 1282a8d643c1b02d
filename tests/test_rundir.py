"""A run folder holds one run: it remembers its config, and one process trains in it at a time."""
import pandas as pd
import pytest
import torch
from filelock import FileLock

from pipeline import folds, train
from pipeline.engine.rundir import config_changes
from pipeline.errors import RunFolderError
from helpers import TINY


@pytest.fixture
def tiny(make_cfg):
    def make(*overrides):
        cfg = make_cfg(*TINY, "train.epochs=1", "train.max_steps_per_epoch=2", *overrides)
        if not cfg.folds_csv.exists():
            folds.run(cfg)
        return cfg

    return make


def test_changed_config_is_refused_naming_the_keys(tiny):
    cfg = tiny()
    train.run(cfg)
    before = torch.load(cfg.run_dir() / "last.pt", weights_only=False)["model"]
    with pytest.raises(RunFolderError, match=r"train.epochs: 1 -> 2.*train.lr_decoder: 0.001 -> 0.002"):
        train.run(tiny("train.epochs=2", "train.lr_decoder=0.002"))
    after = torch.load(cfg.run_dir() / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing touched


def test_restart_keeps_the_old_run_aside(tiny):
    cfg = tiny()
    train.run(cfg)
    old_metrics = (cfg.run_dir() / "metrics.csv").read_text()
    train.run(tiny("train.epochs=2", "train.on_change=restart"))
    aside = list(cfg.run_dir().parent.glob("fold0.replaced-*"))
    assert len(aside) == 1 and (aside[0] / "metrics.csv").read_text() == old_metrics
    assert pd.read_csv(cfg.run_dir() / "metrics.csv")["epoch"].tolist() == [1, 2]  # a fresh run, not a resumed one
    assert "epochs: 2" in (cfg.run_dir() / "config.yaml").read_text()


def test_settings_that_change_nothing_may_differ(tiny, caplog):
    cfg = tiny()
    train.run(cfg)
    caplog.set_level("INFO")
    train.run(tiny("train.num_workers=1", "runtime.progress=true", "infer.batch_size=2"))
    assert "complete: nothing to train" in caplog.text


def test_a_run_from_before_a_setting_existed_resumes_at_its_default(tiny, caplog):
    """A config.yaml written before a setting was added lacks it: at its default the run resumes,
    set to anything else it is a change."""
    import yaml

    cfg = tiny()
    train.run(cfg)
    saved = cfg.run_dir() / "config.yaml"
    old = yaml.safe_load(saved.read_text())
    del old["train"]["swa_epochs"], old["train"]["refit_pseudo"]
    saved.write_text(yaml.safe_dump(old))
    caplog.set_level("INFO")
    train.run(tiny())
    assert "complete: nothing to train" in caplog.text
    with pytest.raises(RunFolderError, match=r"train.swa_epochs: 0 -> 1"):
        train.run(tiny("train.swa_epochs=1"))


def test_config_changes_ignores_free_settings():
    old = {"train": {"epochs": 1, "num_workers": 0, "losses": [{"name": "ce"}]}, "infer": {"tta": ["hflip"]},
           "competition": {"metric": "miou", "bias_shrink": 1.0}}
    new = {"train": {"epochs": 1, "num_workers": 4, "losses": [{"name": "dice"}]}, "infer": {"tta": []},
           "competition": {"metric": "miou_image", "bias_shrink": 0.5}}  # tune's shrink is free; the metric is not
    assert config_changes(old, new) == [("competition.metric", "miou", "miou_image"),
                                        ("train.losses", [{"name": "ce"}], [{"name": "dice"}])]


def test_a_second_process_in_the_same_run_folder_is_refused(tiny):
    cfg = tiny()
    lock = FileLock(str(cfg.run_dir().parent / f".{cfg.run_dir().name}.lock"))
    cfg.run_dir().parent.mkdir(parents=True, exist_ok=True)
    with lock:  # stands for another `make train` of the same fold
        with pytest.raises(RunFolderError, match="another process is training this run"):
            train.run(cfg)
    assert not (cfg.run_dir() / "last.pt").exists()
    train.run(cfg)  # once the other one is done, it trains
    assert (cfg.run_dir() / "last.pt").exists()
