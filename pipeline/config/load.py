"""Loading: YAML layers (base <- data <- model <- exp, where an exp file may `extends:` another)
<- key=value overrides, merged and interpolated by OmegaConf, then built strictly into the schema's
frozen dataclasses from their type hints: a bool field takes only true/false, an int field no
bool, and every unknown key is named. OmegaConf's own structured-config typing is not used for
this because it converts silently (it reads `channels_last=1` as true)."""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.config.choices import CHOICES
from pipeline.config.schema import (CompetitionConfig, Config, DataConfig, FoldsConfig, InferConfig, LossTerm,
                                    ModelConfig, PseudoConfig, RuntimeConfig, SubmissionConfig, TrainConfig)
from pipeline.config.validate import validate
from pipeline.errors import ConfigError

SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "runtime": RuntimeConfig, "infer": InferConfig,
            "folds": FoldsConfig, "submission": SubmissionConfig, "competition": CompetitionConfig,
            "pseudo": PseudoConfig}
TOP_LEVEL = set(SECTIONS) | {"outputs", "submissions"}
SAVED_ONLY = {"exp", "fold"}  # a resolved config.yaml also records the run it belongs to
MOVED = {f"train.{k}": f"runtime.{k}" for k in ("device", "amp", "channels_last", "compile", "seed", "progress")}


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        node = OmegaConf.load(path)
    except (OmegaConfBaseException, Exception) as e:  # yaml.YAMLError and OmegaConf's own
        raise ConfigError(f"{path}: invalid YAML: {str(e).splitlines()[0]}") from None
    if not OmegaConf.is_dict(node):
        raise ConfigError(f"{path}: top level must be a mapping")
    return OmegaConf.to_container(node, resolve=False)


def parse_override(text: str) -> dict:
    """`train.epochs=3` -> {"train": {"epochs": 3}}; the value is read as YAML (OmegaConf's loader,
    which reads 1e-3 as a number)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value")
    key, value = text.split("=", 1)
    if not key.strip() or any(not part for part in key.strip().split(".")):
        raise ConfigError(f"override {text!r}: empty key")
    try:
        node: Any = OmegaConf.to_container(OmegaConf.create({"v": None}) if value == "" else
                                           OmegaConf.create(f"v: {value}"), resolve=False)["v"]
    except (OmegaConfBaseException, Exception) as e:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({str(e).splitlines()[0]})") from None
    for part in reversed(key.strip().split(".")):
        node = {part: node}
    return node


def _merge(base: dict, over: dict) -> dict:
    try:
        return OmegaConf.to_container(OmegaConf.merge(base, over), resolve=False)
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot merge config layers: {str(e).splitlines()[0]}") from None


def _exp_layers(root: Path, exp: str, seen: tuple[str, ...] = ()) -> list[tuple[str, Path]]:
    """The exp file and, first, the chain of files it extends."""
    path = root / "exp" / f"{exp}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (root / "exp").glob("*.yaml"))
        where = f" (extended by {seen[-1]})" if seen else ""
        raise ConfigError(f"exp={exp}{where}: no file {path}; experiments: {known}. "
                          f"To name a new run without an experiment file, use name={exp}")
    if exp in seen:
        raise ConfigError(f"{path}: `extends` makes a cycle: {' -> '.join(seen + (exp,))}")
    parent = _read_yaml(path).get("extends")
    if parent is None:
        return [("exp", path)]
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: extends: expected an experiment name, got {parent!r}")
    return _exp_layers(root, parent, seen + (exp,)) + [("exp", path)]


def _layer(kind: str, path: Path) -> dict:
    layer = _read_yaml(path)
    layer.pop("extends", None)
    _refuse_moved(layer, str(path))
    if kind in ("data", "model") and not set(layer) & TOP_LEVEL:  # a data/model file may hold just its section
        layer = {kind: layer}
    bad = sorted(set(layer) & SAVED_ONLY)
    if bad:
        raise ConfigError(f"{path}: top-level {bad} belong on the command line (exp=, name=, fold=), not in a file")
    return layer


def load_config(data: str = "demo", model: str = "unet", exp: str | None = None,
                overrides: list[str] | tuple[str, ...] = (), fold: int = 0, config_dir: str | Path = "configs",
                name: str | None = None) -> Config:
    """The run's configuration from the named layers. `exp` must name a file under configs/exp/;
    `name` names the run (default: the exp, else the model)."""
    root = Path(config_dir)
    layers = [("base", root / "base.yaml"), ("data", root / "data" / f"{data}.yaml"),
              ("model", root / "model" / f"{model}.yaml")]
    if exp:
        layers += _exp_layers(root, exp)
    merged: dict = {}
    for kind, path in layers:
        merged = _merge(merged, _layer(kind, path))
    for text in overrides:
        layer = parse_override(text)
        _refuse_moved(layer, f"override {text!r}")
        merged = _merge(merged, layer)
    merged.setdefault("data", {}).setdefault("name", data)
    merged.setdefault("model", {}).setdefault("name", model)
    merged["exp"] = name or exp or model
    merged["fold"] = fold
    return build_config(merged)


def load_config_file(path: str | Path, overrides: list[str] | tuple[str, ...] = (),
                     fold: int | None = None) -> Config:
    """A resolved config.yaml saved in a run folder, with optional overrides: the same run again."""
    merged = migrate_saved(_read_yaml(Path(path)))
    for text in overrides:
        merged = _merge(merged, parse_override(text))
    if fold is not None:
        merged["fold"] = fold
    missing = sorted(set(SECTIONS) - {"runtime"} - set(merged))
    if missing:
        raise ConfigError(f"{path}: not a resolved run config (no {missing}); pass data=/model=/exp= instead")
    return build_config(merged, where=str(path))


def migrate_saved(saved: dict) -> dict:
    """A config.yaml written before the runtime section existed, in today's layout (only files segpipe
    wrote are migrated; a person's config with an old key is refused, naming the new one)."""
    train, runtime = dict(saved.get("train") or {}), dict(saved.get("runtime") or {})
    for old, new in MOVED.items():
        key = old.split(".")[1]
        if key in train:
            runtime.setdefault(new.split(".")[1], train.pop(key))
    return {**saved, "train": train, "runtime": runtime} if runtime else saved


def _refuse_moved(resolved: dict, where: str) -> None:
    for old, new in MOVED.items():
        section, key = old.split(".")
        if isinstance(resolved.get(section), dict) and key in resolved[section]:
            raise ConfigError(f"{where}: {old} is now {new} (one runtime section for every stage): rename it")


def build_config(merged: dict, where: str = "config") -> Config:
    try:
        resolved = OmegaConf.to_container(OmegaConf.create(merged), resolve=True)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{where}: interpolation failed: {str(e).splitlines()[0]}") from None
    _refuse_moved(resolved, where)
    unknown = sorted(set(resolved) - TOP_LEVEL - SAVED_ONLY)
    if unknown:
        raise ConfigError(f"{where}: unknown top-level config key(s) {unknown}; known: {sorted(TOP_LEVEL)}")
    built = {name: _build(cls, resolved.get(name), name) for name, cls in SECTIONS.items()}
    cfg = Config(**built, exp=_coerce(str, resolved.get("exp"), "exp"), fold=_coerce(int, resolved.get("fold", 0), "fold"),
                 outputs=_coerce(str, resolved.get("outputs", "outputs"), "outputs"),
                 submissions=_coerce(str, resolved.get("submissions", "submissions"), "submissions"))
    validate(cfg)
    return cfg


def _build(cls, values: Any, where: str):
    """A frozen dataclass from a mapping: unknown keys named, every value checked against its hint."""
    if values is None:
        values = {}
    if cls is LossTerm and isinstance(values, str):
        values = {"name": values}
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(names)}")
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}") for k, v in values.items()}
    for f in dataclasses.fields(cls):
        if "range" in f.metadata and f.name in kwargs:
            _check_range(kwargs[f.name], f.metadata["range"], f"{where}.{f.name}")
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None


def _check_range(value, bounds, where: str) -> None:
    lo, hi, lo_open, hi_open = bounds
    for v in value if isinstance(value, tuple) else (value,):
        if v is None:
            continue
        low = lo is not None and (v <= lo if lo_open else v < lo)
        high = hi is not None and (v >= hi if hi_open else v > hi)
        if low or high:
            left = "-inf" if lo is None else f"{lo}"
            right = "inf" if hi is None else f"{hi}"
            interval = f"{'(' if lo_open or lo is None else '['}{left}, {right}{')' if hi_open or hi is None else ']'}"
            raise ConfigError(f"{where}: {v!r} is outside {interval}")


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(tp, value: Any, where: str):
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        arms = [a for a in args if a is not type(None)]
        errors = []
        for arm in arms:
            try:
                return _coerce(arm, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(arms) == 1 else
                          f"{where}: expected {' or '.join(map(_type_name, args))}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if origin is tuple:
        if value is None:
            raise ConfigError(f"{where}: expected a list, got null")
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(items))
        if len(items) != len(args):
            shape = "[height, width]" if where.endswith(("crop", "resize")) else f"{len(args)} values"
            raise ConfigError(f"{where}: expected {shape}, got {items}")
        return tuple(_coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, items)))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{where}: expected a number (finite), got {value!r}")
        return float(value)
    if tp is str:
        if value is False and "off" in CHOICES.get(where, ()):
            return "off"  # YAML 1.1 reads a bare `off` as false
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    if tp is dict or origin is dict:
        if value is None:  # `key=null` on the command line clears a mapping (merging can only add keys)
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    return value


def config_to_dict(cfg: Config) -> dict:
    def plain(x):
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        return x

    return plain(dataclasses.asdict(cfg))


def flatten(d: dict, prefix: str = "") -> dict:
    """{"train": {"epochs": 3}} -> {"train.epochs": 3}; empty mappings stay as values."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.create(config_to_dict(cfg)), sort_keys=False)
