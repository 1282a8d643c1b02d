"""Models by name: `deconvnet` (ours) or any segmentation-models-pytorch architecture. Every model
is wrapped so that inputs of any size are padded to the multiple it needs and outputs cropped back."""
from __future__ import annotations

from pathlib import Path

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import ModelConfig
from pipeline.errors import WeightsError
from pipeline.models.deconvnet import DeconvNet
from pipeline.models.pretrained import load_offline_imagenet, match_training_eps, read_state_dict

class SegModel(nn.Module):
    """Pads to `multiple`, runs the network, crops the logits back to the input size."""

    def __init__(self, net: nn.Module, multiple: int = 32):
        super().__init__()
        self.net, self.multiple = net, multiple

    @property
    def encoder(self) -> nn.Module:
        return self.net.encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.multiple, (-w) % self.multiple
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect" if ph < h and pw < w else "replicate")
        out = self.net(x)
        return out[..., :h, :w]


def _load_encoder(net: nn.Module, cfg: ModelConfig) -> None:
    path = Path(cfg.encoder_weights)
    state = read_state_dict(path)
    if cfg.arch.lower() == "deconvnet":
        try:
            net.encoder.load_torchvision_vgg16_bn(state)
        except (KeyError, ValueError) as e:
            raise WeightsError(f"{path}: does not fit the VGG16-BN encoder ({e})") from None
        return
    # an SMP encoder state, a full SMP model state, or a torchvision/timm classifier state (its
    # classification head is dropped) all fit
    if any(k.startswith("encoder.") for k in state):
        state = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    state = {k: v for k, v in state.items() if not k.startswith(("fc.", "classifier.", "head."))}
    try:
        # nn.Module's own loader: SMP encoders override it and drop its return value
        missing, unexpected = nn.Module.load_state_dict(net.encoder, state, strict=False)
    except RuntimeError as e:
        raise WeightsError(f"{path}: does not fit encoder {cfg.encoder_name}: {str(e).splitlines()[0]}") from None
    missing = [k for k in missing if "num_batches_tracked" not in k]
    if missing or unexpected:
        raise WeightsError(f"{path}: does not fit encoder {cfg.encoder_name}: {len(missing)} parameter(s) "
                           f"missing (e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})")


def build_model(cfg: ModelConfig, num_classes: int, in_channels: int = 3, pretrained: bool = True) -> SegModel:
    """`pretrained=False` builds the bare network (inference: the checkpoint holds every weight, so
    the encoder's pretrained file is neither read nor needed)."""
    weights = cfg.encoder_weights if pretrained else None
    offline = weights == "imagenet" and cfg.arch.lower() != "deconvnet"
    is_file = weights is not None and (Path(weights).suffix in (".pt", ".pth", ".bin") or "/" in str(weights))
    if cfg.arch.lower() == "deconvnet":
        net = DeconvNet(num_classes, in_channels, **cfg.params)
        if weights is not None and not is_file:
            raise WeightsError(f"model.encoder_weights: DeconvNet takes a local vgg16_bn weights file, got {weights!r}")
    else:
        try:
            net = smp.create_model(cfg.arch, encoder_name=cfg.encoder_name,
                                   encoder_weights=None if (is_file or offline) else weights,
                                   in_channels=in_channels, classes=num_classes, **cfg.params)
        except KeyError as e:
            raise WeightsError(f"model: unknown architecture or encoder ({e})") from None
        except (OSError, RuntimeError, ValueError) as e:
            if weights and not is_file:
                raise WeightsError(f"model.encoder_weights={weights!r} for {cfg.encoder_name}: not in the local "
                                   f"torch-hub / Hugging Face cache and there is no network ({e}). Give a local "
                                   "weights file path instead.") from None
            raise
        match_training_eps(net.encoder, cfg.encoder_name)
    if offline:
        load_offline_imagenet(net.encoder, cfg.encoder_name)
    if is_file:
        _load_encoder(net, cfg)
    return SegModel(net, cfg.pad_multiple)
