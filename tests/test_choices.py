"""Every name the config accepts for a pluggable kind builds, and every builder has a name the config
accepts: the names are declared once (config/choices.py) and the tables that implement them agree."""
import numpy as np
import pytest
import torch

from pipeline.config import ConfigError, LossTerm, load_config
from pipeline.config import choices
from pipeline.competition.metrics import METRICS, build_metric
from pipeline.data.overlap import compose_label_map
from pipeline.engine.losses import LOSSES, build_loss
from pipeline.engine.trackers import TRACKERS
from pipeline.inference.tta import build_tta
from helpers import REPO


def test_tables_hold_exactly_the_declared_names():
    assert set(LOSSES) == set(choices.LOSSES)
    assert set(TRACKERS) == set(choices.TRACKERS)
    assert set(METRICS) == set(choices.METRICS)
    assert choices.CHOICES["data.overlap"] == choices.OVERLAP
    assert choices.CHOICES["competition.metric"] == choices.METRICS


TASKS = {"ce": [False], "bce": [True]}  # the config refuses the other pairing; the rest serve both


@pytest.mark.parametrize("name,multilabel", [(n, m) for n in choices.LOSSES for m in TASKS.get(n, [False, True])])
def test_every_loss_builds_and_backpropagates(name, multilabel):
    loss = build_loss((LossTerm(name),), 3, 255, multilabel)
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    target = (torch.randint(1, 8, (2, 8, 8)) if multilabel else torch.randint(0, 3, (2, 8, 8)))
    value = loss(logits, target)
    value.backward()
    assert torch.isfinite(value) and logits.grad is not None and logits.grad.abs().sum() > 0


@pytest.mark.parametrize("name", choices.METRICS)
def test_every_metric_builds_and_scores_a_perfect_prediction_one(name):
    meter = build_metric(name, 3, 255)
    y = torch.tensor([[[0, 1], [2, 2]]])
    meter.update(y, y)
    assert meter.compute()["score"] == pytest.approx(1.0)
    meter.reset()
    meter.update(torch.zeros_like(y), y)
    assert meter.compute()["score"] < 1


@pytest.mark.parametrize("policy", choices.OVERLAP)
def test_every_overlap_policy_composes(policy):
    masks = [np.ones((4, 4), np.uint8), np.eye(4, dtype=np.uint8)]
    out = compose_label_map(masks, [1, 2], policy, (4, 4), 0, 255, priority=[2])
    assert out.shape == (4, 4) and out.max() > 0


@pytest.mark.parametrize("name", [*choices.TTA, "scale:0.5,1"])
def test_every_tta_name_builds_and_the_config_accepts_it(name):
    n_views = len(build_tta([name]))
    assert n_views == {"none": 1, "d4": 8, "scale:0.5,1": 2}.get(name, 2)
    cfg = load_config("demo", "unet", None, [f"infer.tta=['{name}']"], 0, REPO / "configs")
    assert cfg.infer.tta == (name,)


@pytest.mark.parametrize("name", ["rot45", "scale:", "scale:0,1", "scale:a"])
def test_a_bad_tta_name_fails_the_same_way_in_config_and_inference(name):
    with pytest.raises(ConfigError, match="infer.tta") as in_config:
        load_config("demo", "unet", None, [f"infer.tta=['{name}']"], 0, REPO / "configs")
    with pytest.raises(ConfigError, match="infer.tta") as in_inference:
        build_tta([name])
    assert str(in_config.value) == str(in_inference.value)


@pytest.mark.parametrize("key", sorted(choices.CHOICES))
def test_every_declared_value_is_a_value_of_its_field(key):
    """Each CHOICES key names a real field whose default is one of its values."""
    section, field = key.split(".")
    cfg = load_config("demo", "unet", None, [], 0, REPO / "configs")
    assert getattr(getattr(cfg, section), field) in choices.CHOICES[key]
