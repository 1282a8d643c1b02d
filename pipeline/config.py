"""Configuration: YAML layers (base <- data <- model <- exp <- overrides) resolved once into
frozen dataclasses. Stages receive a `Config` and never read files or environment on their own."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class SplitConfig:
    annotations: str | None = None  # COCO json, relative to the data root
    images: str | None = None  # image folder (maskdir) or base folder of COCO file_name
    masks: str | None = None  # PNG label maps with the same stems as the images


@dataclass(frozen=True)
class DataConfig:
    name: str
    root: str
    format: str = "coco"  # coco | maskdir
    classes: tuple[str, ...] = ()
    ignore_index: int = 255
    unlabelled: str = "background"  # COCO pixels with no annotation: "background" (class 0) or "ignore"
    category_map: dict = field(default_factory=dict)  # COCO category id -> class index; default by name
    overlap: str = "area_desc"  # area_desc | order | priority | ignore
    priority: tuple[str, ...] = ()  # for overlap=priority: class names, highest first
    strict: bool = True
    train: SplitConfig = SplitConfig()
    val: SplitConfig | None = None
    test: SplitConfig | None = None
    truth: SplitConfig | None = None  # local ground truth of the test split (the organisers' labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass(frozen=True)
class FoldsConfig:
    k: int = 5
    seed: int = 42
    group_regex: str | None = None  # first capture group (or whole match) of the image stem
    holdout: str | None = None  # "val": the competition's val split becomes one extra fold


@dataclass(frozen=True)
class SubmissionConfig:
    id_column: str = "ImageId"
    class_column: str = "ClassId"
    rle_column: str = "EncodedPixels"
    rle_order: str = "column"  # column (top-to-bottom, then left-to-right) | row
    class_ids: tuple[int, ...] = ()  # classes that get a row; default: every class
    empty_rows: bool = True  # a row with empty EncodedPixels for absent classes


@dataclass(frozen=True)
class ModelConfig:
    name: str
    arch: str  # deconvnet or an SMP architecture name (Unet, UnetPlusPlus, FPN, DeepLabV3Plus, PSPNet, Segformer)
    encoder_name: str = "resnet34"
    encoder_weights: str | None = None  # None, a local file, or an SMP name resolved from the torch-hub cache
    pad_multiple: int = 32
    params: dict = field(default_factory=dict)  # extra keyword arguments of the architecture


@dataclass(frozen=True)
class LossTerm:
    name: str  # ce | dice | focal | lovasz
    weight: float = 1.0
    params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20
    batch_size: int = 8
    crop: tuple[int, int] | None = None  # random crop (h, w) for training; None trains on whole images
    resize: tuple[int, int] | None = None  # resize (h, w) before cropping, train and val alike
    optimizer: str = "adamw"  # adamw | sgd
    lr_encoder: float = 1e-4
    lr_decoder: float = 1e-3
    wd_encoder: float = 1e-4
    wd_decoder: float = 1e-4
    no_decay_norm_bias: bool = True
    momentum: float = 0.9
    scheduler: str = "cosine"  # cosine (with warm-up) | poly | plateau | none
    warmup_epochs: float = 0.0
    min_lr_ratio: float = 0.01
    poly_power: float = 0.9
    plateau_patience: int = 3
    accum_steps: int = 1
    clip_grad: float | None = None
    ema_decay: float | None = None
    amp: str = "auto"  # auto (bf16 on GPUs that have it, else fp16) | bf16 | fp16 | off
    channels_last: bool = True
    compile: bool = False
    patience: int | None = None  # early stopping, in validations without a better val mIoU
    val_every: int = 1  # validate every N epochs (and always after the last)
    max_bad_steps: int = 5  # consecutive non-finite losses before the run stops
    num_workers: int = 0
    seed: int = 42
    device: str = "auto"  # auto | cpu | cuda
    losses: tuple[LossTerm, ...] = (LossTerm("ce"),)
    augment: tuple[dict, ...] = ()  # albumentations transforms by class name, train only
    max_steps_per_epoch: int | None = None
    progress: bool = True
    tensorboard: bool = False  # also log scalars to <run>/tensorboard (pip install segpipe[tensorboard])
    fault_kill_at_step: int | None = None  # test hook: SIGKILL the process after this optimiser step


@dataclass(frozen=True)
class InferConfig:
    tta: tuple[str, ...] = ("hflip",)  # hflip | vflip | d4 | scale:<s1>,<s2>...
    experiments: tuple[str, ...] = ()  # default: the current experiment
    folds: tuple[int, ...] = ()  # default: every fold with a best checkpoint
    weights: tuple[float, ...] = ()  # one per experiment (default equal)
    batch_size: int = 8
    save_probs: bool = False
    oof: bool = True


@dataclass(frozen=True)
class Config:
    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    infer: InferConfig
    folds: FoldsConfig
    submission: SubmissionConfig
    exp: str
    fold: int = 0
    outputs: str = "outputs"
    submissions: str = "submissions"
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def data_root(self) -> Path:
        return Path(self.data.root)

    @property
    def out_dir(self) -> Path:
        return Path(self.outputs) / self.data.name

    def run_dir(self, fold: int | None = None, exp: str | None = None) -> Path:
        return self.out_dir / "runs" / (exp or self.exp) / f"fold{self.fold if fold is None else fold}"

    def preds_dir(self, exp: str | None = None) -> Path:
        return self.out_dir / "preds" / (exp or self.exp)

    @property
    def folds_csv(self) -> Path:
        return self.out_dir / "folds.csv"


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_override(text: str) -> dict:
    """`train.epochs=3` -> {"train": {"epochs": 3}}; the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value")
    key, value = text.split("=", 1)
    node: Any = yaml.safe_load(value) if value != "" else None
    for part in reversed(key.strip().split(".")):
        node = {part: node}
    return node


def _build(cls, values: Any, where: str):
    """Build a (nested) frozen dataclass from a mapping, rejecting unknown keys."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields) - {"raw"})
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(fields)}")
    kwargs = {}
    for name, value in values.items():
        kwargs[name] = _coerce(fields[name].type, value, f"{where}.{name}")
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None


def _coerce(type_str: str, value: Any, where: str):
    t = str(type_str)
    if t.startswith("SplitConfig"):
        return None if value is None else _build(SplitConfig, value, where)
    if t.startswith("tuple[LossTerm"):
        terms = value if isinstance(value, list) else [value]
        out = []
        for i, term in enumerate(terms):
            term = {"name": term} if isinstance(term, str) else term
            out.append(_build(LossTerm, term, f"{where}[{i}]"))
        return tuple(out)
    if t.startswith("tuple") and value is not None:
        if not isinstance(value, (list, tuple)):
            value = [value]
        return tuple(dict(v) if isinstance(v, dict) else v for v in value)
    if t in ("int", "int | None") and value is not None and not isinstance(value, int):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if t.startswith("float") and value is not None:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    return value


_CHOICES = {
    "data.format": ("coco", "maskdir"),
    "data.overlap": ("area_desc", "order", "priority", "ignore"),
    "data.unlabelled": ("background", "ignore"),
    "submission.rle_order": ("column", "row"),
    "train.optimizer": ("adamw", "sgd"),
    "train.scheduler": ("cosine", "poly", "plateau", "none"),
    "train.amp": ("auto", "bf16", "fp16", "off"),
    "train.device": ("auto", "cpu", "cuda"),
}


def _validate(cfg: Config) -> None:
    for key, allowed in _CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not one of {allowed}")
    for name in cfg.data.priority:
        if name not in cfg.data.classes:
            raise ConfigError(f"data.priority: {name!r} is not a class")
    if cfg.data.overlap == "priority" and not cfg.data.priority:
        raise ConfigError("data.priority: required when data.overlap is 'priority'")
    for c in cfg.submission.class_ids:
        if not 0 <= c < cfg.data.num_classes:
            raise ConfigError(f"submission.class_ids: {c} is outside 0..{cfg.data.num_classes - 1}")
    if cfg.folds.k < 2:
        raise ConfigError("folds.k: at least 2 folds")
    t = cfg.train
    if t.epochs < 1 or t.batch_size < 1 or t.accum_steps < 1:
        raise ConfigError("train.epochs, train.batch_size and train.accum_steps must be >= 1")
    for term in t.losses:
        if term.name not in ("ce", "dice", "focal", "lovasz"):
            raise ConfigError(f"train.losses: unknown loss {term.name!r} (ce, dice, focal, lovasz)")


def load_config(
    data: str = "demo",
    model: str = "unet",
    exp: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    fold: int = 0,
    config_dir: str | Path = "configs",
) -> Config:
    root = Path(config_dir)
    layers = [("base", root / "base.yaml"), ("data", root / "data" / f"{data}.yaml"),
              ("model", root / "model" / f"{model}.yaml")]
    if exp and (root / "exp" / f"{exp}.yaml").exists():  # without a file, exp only names the run
        layers.append(("exp", root / "exp" / f"{exp}.yaml"))
    merged: dict = {}
    for kind, path in layers:
        layer = _read_yaml(path)
        if kind in ("data", "model"):  # a data/model file may hold just that section
            top = {k for k in layer if k in {f.name for f in dataclasses.fields(Config)}}
            if not top:
                layer = {kind: layer}
        merged = deep_merge(merged, layer)
    for text in overrides:
        merged = deep_merge(merged, parse_override(text))
    merged.setdefault("data", {}).setdefault("name", data)
    merged.setdefault("model", {}).setdefault("name", model)
    merged.setdefault("exp", exp or model)
    sections = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig,
                "infer": InferConfig, "folds": FoldsConfig, "submission": SubmissionConfig}
    unknown = sorted(set(merged) - set(sections) - {"exp", "outputs", "submissions"})
    if unknown:
        raise ConfigError(f"unknown top-level config key(s) {unknown}")
    built = {name: _build(cls, merged.get(name), name) for name, cls in sections.items()}
    for key in ("crop", "resize"):
        v = getattr(built["train"], key)
        if v is not None and (len(v) != 2 or not all(isinstance(x, int) and x > 0 for x in v)):
            raise ConfigError(f"train.{key}: expected [height, width], got {list(v)}")
    cfg = Config(**built, exp=str(merged["exp"]), fold=int(fold),
                 outputs=str(merged.get("outputs", "outputs")),
                 submissions=str(merged.get("submissions", "submissions")), raw=merged)
    _validate(cfg)
    return cfg


def config_to_yaml(cfg: Config) -> str:
    d = dataclasses.asdict(cfg)
    d.pop("raw", None)

    def plain(x):
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        return x

    return yaml.safe_dump(plain(d), sort_keys=False)
