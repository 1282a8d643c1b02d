"""DeconvNet (Noh, Hong & Han, 2015): a VGG16-BN encoder whose max-pooling indices drive a mirrored
decoder of max-unpooling and transposed convolutions.

Departures from the paper, for arbitrary input sizes and CPU budgets: fc6 is a 7x7 convolution
with padding (the paper's is valid on a 7x7 map, i.e. 224 px inputs only), and `width` scales
every channel count (1.0 is the paper's network, whose encoder loads torchvision's vgg16_bn)."""
from __future__ import annotations

import torch
from torch import nn

VGG16_BLOCKS = (2, 2, 3, 3, 3)
VGG16_CHANNELS = (64, 128, 256, 512, 512)


def _conv(cin: int, cout: int, transpose: bool = False, k: int = 3) -> nn.Sequential:
    conv = (nn.ConvTranspose2d if transpose else nn.Conv2d)(cin, cout, k, padding=k // 2)
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class VGG16BNEncoder(nn.Module):
    def __init__(self, in_channels: int = 3, width: float = 1.0):
        super().__init__()
        self.channels = [max(8, int(c * width)) for c in VGG16_CHANNELS]
        self.blocks = nn.ModuleList()
        cin = in_channels
        for n, cout in zip(VGG16_BLOCKS, self.channels):
            self.blocks.append(nn.Sequential(*[_conv(cin if i == 0 else cout, cout) for i in range(n)]))
            cin = cout
        self.pool = nn.MaxPool2d(2, 2, return_indices=True)

    def forward(self, x):
        indices, sizes = [], []
        for block in self.blocks:
            x = block(x)
            sizes.append(x.shape[-2:])
            x, idx = self.pool(x)
            indices.append(idx)
        return x, indices, sizes

    def load_torchvision_vgg16_bn(self, state: dict) -> None:
        """Copy torchvision's vgg16_bn `features.*` weights, layer by layer, into this encoder."""
        convs = [m for m in self.modules() if isinstance(m, nn.Conv2d)]
        bns = [m for m in self.modules() if isinstance(m, nn.BatchNorm2d)]
        conv_keys = sorted({k.rsplit(".", 1)[0] for k in state if k.startswith("features.") and
                            state[k].ndim == 4}, key=lambda k: int(k.split(".")[1]))
        if len(conv_keys) != len(convs):
            raise ValueError(f"expected {len(convs)} VGG16 conv layers in the weights, found {len(conv_keys)}")
        for conv, bn, key in zip(convs, bns, conv_keys):
            bn_key = f"features.{int(key.split('.')[1]) + 1}"
            if state[f"{key}.weight"].shape != conv.weight.shape:
                raise ValueError(f"{key}.weight has shape {tuple(state[key + '.weight'].shape)}, "
                                 f"this encoder needs {tuple(conv.weight.shape)} (width must be 1.0)")
            conv.weight.data.copy_(state[f"{key}.weight"])
            conv.bias.data.copy_(state[f"{key}.bias"])
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(bn, name).data.copy_(state[f"{bn_key}.{name}"])


class DeconvDecoder(nn.Module):
    def __init__(self, channels: list[int], fc_channels: int):
        super().__init__()
        top = channels[-1]
        self.fc = nn.Sequential(_conv(top, fc_channels, k=7), _conv(fc_channels, fc_channels, k=1),
                                _conv(fc_channels, top, transpose=True, k=7))
        self.unpool = nn.MaxUnpool2d(2, 2)
        self.blocks = nn.ModuleList()
        for i in reversed(range(len(VGG16_BLOCKS))):
            cout = channels[i - 1] if i > 0 else channels[0]
            n = VGG16_BLOCKS[i]
            layers = [_conv(channels[i], channels[i], transpose=True) for _ in range(n - 1)]
            layers.append(_conv(channels[i], cout, transpose=True))
            self.blocks.append(nn.Sequential(*layers))

    def forward(self, x, indices, sizes):
        x = self.fc(x)
        for block, idx, size in zip(self.blocks, reversed(indices), reversed(sizes)):
            x = block(self.unpool(x, idx, output_size=size))
        return x


class DeconvNet(nn.Module):
    def __init__(self, classes: int, in_channels: int = 3, width: float = 1.0, fc_channels: int = 4096):
        super().__init__()
        self.encoder = VGG16BNEncoder(in_channels, width)
        self.decoder = DeconvDecoder(self.encoder.channels, max(8, int(fc_channels)))
        self.segmentation_head = nn.Conv2d(self.encoder.channels[0], classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.segmentation_head(self.decoder(*self.encoder(x)))
