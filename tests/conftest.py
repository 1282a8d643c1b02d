import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network in tests
os.environ.setdefault("HF_HUB_OFFLINE", "1")
from pathlib import Path

import pytest
import torch
from helpers import REPO

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """A small demo competition, generated once per test session."""
    from pipeline.data.demo import generate

    return generate(tmp_path_factory.mktemp("demo"), seed=1, n_train=24, n_test=6)


@pytest.fixture
def make_cfg(demo_root, tmp_path):
    """Config over the small demo data; outputs and submissions go to the test's tmp dir."""
    from pipeline.config import load_config

    def make(*overrides, data="demo", model="unet", exp=None, fold=0, root=None, name=None):
        base = [f"data.root={root or demo_root}", f"outputs={tmp_path / 'outputs'}",
                f"submissions={tmp_path / 'submissions'}", "runtime.progress=false"]
        return load_config(data, model, exp, base + list(overrides), fold, REPO / "configs", name)

    return make
