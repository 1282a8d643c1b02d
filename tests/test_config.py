import pytest

from pipeline.config import ConfigError, load_config, parse_override
from helpers import REPO


def test_layers_and_overrides():
    cfg = load_config("demo", "deconvnet", None, ["train.epochs=3", "train.crop=[64, 96]"], 1, REPO / "configs")
    assert cfg.model.arch == "deconvnet" and cfg.data.name == "demo"
    assert cfg.train.epochs == 3 and cfg.train.crop == (64, 96) and cfg.fold == 1
    assert cfg.folds.k == 3  # data layer over base
    assert cfg.train.losses[0].name == "ce"
    assert str(cfg.run_dir()).endswith("outputs/demo/runs/deconvnet/fold1")


def test_exp_layer_names_the_run():
    cfg = load_config("demo", "unet", "demo", [], 0, REPO / "configs")
    assert cfg.exp == "demo" and cfg.model.encoder_name == "resnet18"


def test_parse_override():
    assert parse_override("a.b.c=1.5") == {"a": {"b": {"c": 1.5}}}
    assert parse_override("a.b=[1, 2]") == {"a": {"b": [1, 2]}}
    with pytest.raises(ConfigError):
        parse_override("novalue")


@pytest.mark.parametrize("override,match", [
    ("train.epoch=3", "unknown key"), ("train.optimizer=adam", "not one of"),
    ("data.overlap=random", "not one of"), ("train.epochs=abc", "integer"),
    ("train.losses=[{name: hinge}]", "unknown loss"), ("bogus=1", "unknown top-level"),
    ("train.crop=[64]", "height, width"),
])
def test_bad_config_is_named(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config("demo", "unet", None, [override], 0, REPO / "configs")


def test_missing_config_file():
    with pytest.raises(ConfigError, match="nosuch.yaml: config file not found"):
        load_config("nosuch", "unet", None, [], 0, REPO / "configs")
