import pytest
import torch
import ttach

from pipeline.config import ModelConfig
from pipeline.models import build_model
from pipeline.inference.tta import build_tta, predict_probs


class Softmaxed(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m(x).softmax(1)


@pytest.mark.parametrize("names", [["hflip"], ["hflip", "vflip"], ["d4"], ["scale:0.75,1.25"], []])
def test_batched_tta_equals_ttach_wrapper(names):
    torch.manual_seed(0)
    model = build_model(ModelConfig("m", "deconvnet", params={"width": 0.125, "fc_channels": 16}), 3).eval()
    x = torch.randn(2, 3, 64, 96)
    tta = build_tta(names)
    ours = predict_probs(model, x, tta)
    ref = ttach.SegmentationTTAWrapper(Softmaxed(model), tta, merge_mode="mean")(x)
    assert ours.shape == (2, 3, 64, 96)
    assert torch.allclose(ours, ref, atol=1e-5)
    assert torch.allclose(ours.sum(1), torch.ones(2, 64, 96), atol=1e-5)


def test_unknown_transform():
    with pytest.raises(ValueError, match="unknown transform 'rot45'"):
        build_tta(["rot45"])
