"""Loading: YAML layers (base <- data <- model <- exp, where an exp file may `extends:` another)
<- key=value overrides, merged and interpolated by OmegaConf, then built strictly into the schema's
frozen dataclasses from their type hints: a bool field takes only true/false, an int field no
bool, and every unknown key is named. OmegaConf's own structured-config typing is not used for
this because it converts silently (it reads `channels_last=1` as true)."""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.config.choices import CHOICES, LOSSES, TRACKERS, parse_tta
from pipeline.config.schema import (CompetitionConfig, Config, DataConfig, FoldsConfig, InferConfig, LossTerm,
                                    ModelConfig, PseudoConfig, RuntimeConfig, SubmissionConfig, TrainConfig)
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
    _validate(cfg)
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


def _validate(cfg: Config) -> None:
    """Cross-field checks, so a mistake fails here and not an hour into training."""
    for key, allowed in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not one of {allowed}")
    d, t, f = cfg.data, cfg.train, cfg.folds
    for name in d.priority:
        if name not in d.classes:
            raise ConfigError(f"data.priority: {name!r} is not a class")
    if d.overlap == "priority" and not d.priority:
        raise ConfigError("data.priority: required when data.overlap is 'priority'")
    if not d.num_classes <= d.ignore_index <= 255:
        raise ConfigError(f"data.ignore_index: {d.ignore_index} must be in 0..255 (label maps are 8-bit) "
                          f"and not a class index (0..{d.num_classes - 1})")
    _check_value_maps(d)
    bg = cfg.competition.background
    if bg is not None and not 0 <= bg < d.num_classes:
        raise ConfigError(f"competition.background: {bg} is not a class index (0..{d.num_classes - 1})")
    s = cfg.submission
    if s.id_template is not None:
        try:
            s.id_template.format(image="i", class_name="c", class_id=0)
        except (KeyError, IndexError, ValueError) as e:
            raise ConfigError(f"submission.id_template: {s.id_template!r}: use {{image}}, {{class_name}}, {{class_id}} ({e})") from None
    if s.size is not None and not all(v > 0 for v in s.size):
        raise ConfigError(f"submission.size: expected [height, width] > 0, got {list(s.size)}")
    for c in cfg.submission.class_ids:
        if not 0 <= c < d.num_classes:
            raise ConfigError(f"submission.class_ids: {c} is outside 0..{d.num_classes - 1}")
    if f.k < 2:
        raise ConfigError("folds.k: at least 2 folds")
    for split in f.splits + ((f.holdout,) if f.holdout else ()):
        if split not in ("train", "val") or getattr(d, split) is None and split != "train":
            raise ConfigError(f"folds: split {split!r} is not a labelled split of data {d.name} (train, val)")
    if f.holdout in f.splits:
        raise ConfigError(f"folds.holdout: {f.holdout!r} is also in folds.splits")
    if f.group_regex is not None:
        try:
            re.compile(f.group_regex)
        except re.error as e:
            raise ConfigError(f"folds.group_regex: {f.group_regex!r} is not a regular expression ({e})") from None
    _check_fold_scheme(f)
    if t.epochs < 1 or t.batch_size < 1 or t.accum_steps < 1 or t.val_every < 1:
        raise ConfigError("train.epochs, train.batch_size, train.accum_steps and train.val_every must be >= 1")
    if t.max_steps_per_epoch is not None and t.max_steps_per_epoch < 1:
        raise ConfigError(f"train.max_steps_per_epoch: {t.max_steps_per_epoch} trains nothing; use null or >= 1")
    if not 0 <= t.rare_crop <= 1 or (t.rare_crop and not t.crop):
        raise ConfigError(f"train.rare_crop: {t.rare_crop} must be in 0..1 and needs train.crop")
    for name in t.rare_classes:
        if name not in d.classes:
            raise ConfigError(f"train.rare_classes: {name!r} is not a class")
    if not 0 < cfg.pseudo.threshold <= 1:
        raise ConfigError(f"pseudo.threshold: {cfg.pseudo.threshold} must be in (0, 1]")
    if t.refit_pseudo and cfg.infer.refit == "off":
        raise ConfigError("train.refit_pseudo: the pseudo-labels train the full-data refit, which infer.refit=off "
                          "leaves out; set infer.refit to with or only")
    if not 0 <= t.swa_epochs <= t.epochs:
        raise ConfigError(f"train.swa_epochs: {t.swa_epochs} must be in 0..train.epochs ({t.epochs})")
    if t.num_workers < 0 or cfg.infer.num_workers < 0 or cfg.infer.batch_size < 1:
        raise ConfigError("train.num_workers and infer.num_workers must be >= 0, infer.batch_size >= 1")
    _validate_windows(cfg)
    if t.losses and sum(term.weight for term in t.losses) <= 0:
        raise ConfigError("train.losses: every weight is 0: nothing would be trained")
    for term in t.losses:
        if term.name not in LOSSES:
            raise ConfigError(f"train.losses: unknown loss {term.name!r} ({', '.join(LOSSES)})")
    _validate_task(cfg)
    for name in t.trackers:
        if name not in TRACKERS:
            raise ConfigError(f"train.trackers: unknown tracker {name!r} ({', '.join(TRACKERS)})")
    for name in cfg.infer.tta:
        parse_tta(name)


def _validate_windows(cfg: Config) -> None:
    """Crops, resizes, training tiles and inference windows."""
    t = cfg.train
    for key, v in (("train.crop", t.crop), ("train.resize", t.resize), ("train.tile", t.tile),
                   ("infer.window", cfg.infer.window)):
        if v is not None and (len(v) != 2 or not all(x > 0 for x in v)):
            raise ConfigError(f"{key}: expected [height, width] > 0, got {list(v)}")
    if t.tile is not None and (t.crop or t.resize):
        raise ConfigError("train.tile replaces train.crop and train.resize: set only one of them")
    if t.tile is not None and cfg.competition.background is None:
        raise ConfigError("train.tile needs competition.background (the class that is not foreground for train.tile_fg)")
    if not 0 <= t.tile_fg <= 1 or t.tiles_per_image < 1:
        raise ConfigError(f"train.tile_fg: {t.tile_fg} must be in 0..1, train.tiles_per_image >= 1")
    if not 0 <= cfg.infer.overlap < 1:
        raise ConfigError(f"infer.overlap: {cfg.infer.overlap} must be in [0, 1)")
    if cfg.infer.window is not None and t.resize:
        raise ConfigError("infer.window: the models were trained on resized images (train.resize); "
                          "windows are cut at the image's own scale")


def _validate_task(cfg: Config) -> None:
    """The single-label or multilabel task against its labels and losses."""
    d, t = cfg.data, cfg.train
    multilabel = cfg.competition.multilabel
    if multilabel != (d.overlap == "multilabel"):
        raise ConfigError("competition.task: multilabel and data.overlap: multilabel go together (one sigmoid per "
                          f"class needs labels that may overlap); got task {cfg.competition.task}, overlap {d.overlap}")
    if multilabel and (d.num_classes > 7 or d.ignore_index != 255):
        raise ConfigError(f"competition.task: multilabel keeps one bit per class in 8-bit label maps: at most 7 classes "
                          f"(got {d.num_classes}) and data.ignore_index 255 (got {d.ignore_index})")
    if multilabel and t.rare_crop:
        raise ConfigError("train.rare_crop picks crops by class index, not class bits: not for the multilabel task "
                          "(train.tile with train.tile_fg centres windows on any class)")
    wrong = {"ce"} if multilabel else {"bce"}
    for term in t.losses:
        if term.name in wrong:
            raise ConfigError(f"train.losses: {term.name} is for the {'single-label' if multilabel else 'multilabel'} "
                              f"task; use {'bce' if multilabel else 'ce'} (dice, focal and lovasz serve both)")


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


def _check_fold_scheme(f) -> None:
    if f.order_regex is not None:
        try:
            re.compile(f.order_regex)
        except re.error as e:
            raise ConfigError(f"folds.order_regex: {f.order_regex!r} is not a regular expression ({e})") from None
    if (f.tail or f.assign) and f.group_regex is None:
        raise ConfigError("folds.tail and folds.assign need folds.group_regex (they name groups)")
    if f.tail and f.order_regex is None:
        raise ConfigError("folds.tail needs folds.order_regex (the frame order that says which frames are latest)")
    for g in (*f.tail, *f.assign):
        if not isinstance(g, str):
            raise ConfigError(f"folds.tail/assign: {g!r} is not a group name (YAML read it as a number: quote it)")
    for g, share in f.tail.items():
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share < 1:
            raise ConfigError(f"folds.tail: {g}: {share!r} must be a share of the group's frames, 0 < share < 1")
    for g, k in f.assign.items():
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < f.k:
            raise ConfigError(f"folds.assign: {g}: {k!r} must be a fold index 0..{f.k - 1}")
    if f.assign and sorted(set(f.assign.values())) != list(range(f.k)):
        raise ConfigError(f"folds.assign: every fold 0..{f.k - 1} needs a group (got {sorted(set(f.assign.values()))})")


def _check_value_maps(d) -> None:
    """data.category_map and data.mask_values point at a class index or the ignore index."""
    for k, c in d.category_map.items():
        if isinstance(k, bool) or not isinstance(k, int) or isinstance(c, bool) or not isinstance(c, int) \
                or not (0 <= c < d.num_classes or c == d.ignore_index):
            raise ConfigError(f"data.category_map: {k!r}: {c!r} must map a COCO category id (an integer) to a class "
                              f"index (0..{d.num_classes - 1}) or the ignore index {d.ignore_index}")
    for raw, c in d.mask_values.items():
        if not (isinstance(raw, int) and 0 <= raw <= 65535 and isinstance(c, int) and (0 <= c < d.num_classes or c == d.ignore_index)):
            raise ConfigError(f"data.mask_values: {raw!r}: {c!r} must map a PNG value (0..65535) to a class index "
                              f"(0..{d.num_classes - 1}) or the ignore index {d.ignore_index}")
