import json
import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network in tests
os.environ.setdefault("HF_HUB_OFFLINE", "1")
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"

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

    def make(*overrides, data="demo", model="unet", exp=None, fold=0, root=None):
        base = [f"data.root={root or demo_root}", f"outputs={tmp_path / 'outputs'}",
                f"submissions={tmp_path / 'submissions'}", "train.progress=false"]
        return load_config(data, model, exp, base + list(overrides), fold, REPO / "configs")

    return make


TINY = ["train.device=cpu", "model.arch=deconvnet", "model.params={width: 0.125, fc_channels: 32}",
        "train.batch_size=4", "train.epochs=2", "train.warmup_epochs=0"]


def write_coco(path: Path, images, annotations, categories=None) -> Path:
    doc = {"images": images, "annotations": annotations,
           "categories": categories or [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    path.write_text(json.dumps(doc))
    return path


def square(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


@pytest.fixture
def rng():
    return np.random.default_rng(0)
