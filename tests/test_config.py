import re
import shutil
from pathlib import Path

import pytest

from pipeline.config import ConfigError, config_to_yaml, load_config, load_config_file, parse_override
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


@pytest.mark.parametrize("override,match", [
    ("runtime.channels_last=1", "runtime.channels_last: expected true or false, got 1"),
    ("train.epochs=true", "train.epochs: expected an integer, got True"),
    ("train.lr_decoder=fast", "expected a number"), ("infer.tta=[hflip, scale:abc]", "scales must be numbers"),
    ("folds.group_regex='(('", "not a regular expression"), ("data.ignore_index=300", "0..255"),
    ("data.ignore_index=2", "not a class index"), ("train.max_steps_per_epoch=0", "trains nothing"),
    ("train.trackers=[wandb]", "unknown tracker"), ("model.params=5", "expected a mapping"),
])
def test_every_field_is_type_checked(override, match):
    with pytest.raises(ConfigError, match=re.escape(match)):
        load_config("demo", "unet", None, [override], 0, REPO / "configs")


def test_interpolation():
    cfg = load_config("demo", "unet", None, ["train.resize=[64, 96]", "train.crop=${train.resize}"], 0, REPO / "configs")
    assert cfg.train.crop == (64, 96)
    with pytest.raises(ConfigError, match="interpolation"):
        load_config("demo", "unet", None, ["train.crop=${train.nosuch}"], 0, REPO / "configs")


def test_an_experiment_extends_another():
    base = load_config("camvid", "unet", "camvid_unet", [], 3, REPO / "configs")
    gpu = load_config("camvid", "unet", "camvid_unet_gpu", [], 3, REPO / "configs")
    assert gpu.exp == "camvid_unet_gpu" and gpu.model.encoder_name == "resnet34" and gpu.train.epochs == 100
    # everything the GPU file does not say comes from the CPU recipe it extends
    assert gpu.train.augment == base.train.augment and gpu.train.losses == base.train.losses
    assert gpu.model.arch == base.model.arch == "Unet" and gpu.train.lr_encoder == base.train.lr_encoder
    assert "extends" in (REPO / "configs" / "exp" / "camvid_unet_gpu.yaml").read_text()


def test_extends_cycle_and_missing_parent(tmp_path):
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    (tmp_path / "configs" / "exp" / "a.yaml").write_text("extends: b\n")
    (tmp_path / "configs" / "exp" / "b.yaml").write_text("extends: a\n")
    (tmp_path / "configs" / "exp" / "c.yaml").write_text("extends: nosuch\n")
    with pytest.raises(ConfigError, match="cycle: a -> b -> a"):
        load_config("demo", "unet", "a", [], 0, tmp_path / "configs")
    with pytest.raises(ConfigError, match=r"exp=nosuch \(extended by c\)"):
        load_config("demo", "unet", "c", [], 0, tmp_path / "configs")


def test_unknown_experiment_is_an_error_unless_named_as_a_new_run():
    with pytest.raises(ConfigError, match=r"exp=demmo: no file .*experiments: \[.*'camvid_unet', .*'demo'.*name=demmo"):
        load_config("demo", "unet", "demmo", [], 0, REPO / "configs")
    cfg = load_config("demo", "unet", None, [], 0, REPO / "configs", name="trial7")
    assert cfg.exp == "trial7" and cfg.run_dir().parts[-2:] == ("trial7", "fold0")
    named = load_config("demo", "unet", "demo", [], 0, REPO / "configs", name="demo_lr2")
    assert named.exp == "demo_lr2" and named.train.epochs == 15  # the demo experiment under another run name


def test_saved_config_loads_back_identical(tmp_path):
    cfg = load_config("camvid", "unet", "camvid_unet_gpu", ["train.crop=[64, 64]", "model.params={a: 1}"], 3,
                      REPO / "configs")
    path = tmp_path / "config.yaml"
    path.write_text(config_to_yaml(cfg))
    assert load_config_file(path) == cfg
    again = load_config_file(path, ["train.epochs=7"], fold=1)
    assert again.train.epochs == 7 and again.fold == 1 and again.exp == cfg.exp


@pytest.mark.parametrize("old,new", [("train.amp=bf16", "runtime.amp"), ("train.device=cpu", "runtime.device"),
                                     ("train.seed=1", "runtime.seed"), ("train.progress=false", "runtime.progress")])
def test_a_moved_key_is_refused_naming_its_new_place(old, new, tmp_path):
    with pytest.raises(ConfigError, match=f"{re.escape(old.split('=')[0])} is now {new}"):
        load_config("demo", "unet", None, [old], 0, REPO / "configs")
    exp = tmp_path / "exp"
    exp.mkdir()
    shutil.copy(REPO / "configs" / "base.yaml", tmp_path / "base.yaml")
    shutil.copytree(REPO / "configs" / "data", tmp_path / "data")
    shutil.copytree(REPO / "configs" / "model", tmp_path / "model")
    key, value = old.split("=")
    (exp / "mine.yaml").write_text(f"train:\n  {key.split('.')[1]}: {value}\n")
    with pytest.raises(ConfigError, match=f"mine.yaml: {re.escape(key)} is now {new}"):
        load_config("demo", "unet", "mine", [], 0, tmp_path)


def test_a_config_saved_before_the_runtime_section_loads_as_the_same_run(tmp_path):
    cfg = load_config("demo", "unet", None, ["runtime.amp=bf16", "runtime.seed=7"], 0, REPO / "configs")
    text = config_to_yaml(cfg)
    old = text.replace("runtime:\n", "old_runtime:\n")  # the old layout: these keys under train
    import yaml
    doc = yaml.safe_load(text)
    moved = doc.pop("runtime")
    moved.pop("depthwise_fp32")  # added after the move: an old config has no such key
    doc["train"].update(moved)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert old != text and load_config_file(path) == cfg


def _all_config_files():
    for kind in ("data", "model", "exp"):
        for path in sorted((REPO / "configs" / kind).glob("*.yaml")):
            yield pytest.param(kind, path.stem, id=f"{kind}/{path.stem}")


@pytest.mark.parametrize("kind,name", list(_all_config_files()))
def test_every_config_file_loads(kind, name):
    data = name if kind == "data" else next((d for d in ("camvid", "demo_overlap", "demo_slides", "demo_defects")
                                             if name.startswith(d)), "demo")  # an experiment's own data
    cfg = load_config(data, name if kind == "model" else "unet", name if kind == "exp" else None, [], 0, REPO / "configs")
    assert cfg.data.name == data and cfg.model.arch and cfg.exp == (name if kind == "exp" else cfg.model.name)
    assert load_config_file_roundtrip(cfg) == cfg


def load_config_file_roundtrip(cfg):
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "config.yaml"
        path.write_text(config_to_yaml(cfg))
        return load_config_file(path)
