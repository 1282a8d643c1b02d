"""The CPU as a first-class device: bf16 autocast where the CPU has native bf16 (or when asked),
channels_last on the CPU, and a trainer whose eval/EMA model matches the training model's layout."""
import copy

import pytest
import torch

from pipeline.config import ModelConfig
from pipeline.config.schema import RuntimeConfig
from pipeline.engine import runtime
from pipeline.engine.runtime import Runtime, amp_dtype, cpu_has_native_bf16, describe_precision
from pipeline.errors import TrainingError
from pipeline.models import build_model

CPU = torch.device("cpu")


def test_amp_modes_on_the_cpu():
    assert amp_dtype("off", CPU) is None
    assert amp_dtype("bf16", CPU) is torch.bfloat16
    assert amp_dtype("auto", CPU) is (torch.bfloat16 if cpu_has_native_bf16() else None)
    with pytest.raises(TrainingError, match="fp16 on the CPU"):
        amp_dtype("fp16", CPU)


def test_the_log_says_when_the_cpu_has_no_native_bf16(monkeypatch):
    assert describe_precision(torch.bfloat16, CPU) == "bfloat16"
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    assert amp_dtype("auto", CPU) is None
    assert "has no native bf16" in describe_precision(None, CPU)
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    assert amp_dtype("auto", CPU) is torch.bfloat16
    assert describe_precision(None, CPU) == "fp32"  # amp=off on a CPU that has it: nothing to warn of


def test_runtime_applies_channels_last_on_the_cpu():
    rt = Runtime.create(RuntimeConfig(device="cpu", amp="bf16", channels_last=True))
    assert rt.dtype is torch.bfloat16 and rt.channels_last
    model = rt.prepare(build_model(ModelConfig("t", "Unet", "resnet18"), 3))
    conv = model.net.encoder.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    x = rt.to_device(torch.randn(2, 3, 32, 32), image=True)
    assert x.is_contiguous(memory_format=torch.channels_last)
    with rt.autocast():
        assert model(x).dtype is torch.bfloat16
    off = Runtime.create(RuntimeConfig(device="cpu", amp="off", channels_last=False))
    assert off.dtype is None and not off.channels_last


def _one_step(rt: Runtime, seed=0):
    torch.manual_seed(seed)
    model = rt.prepare(build_model(ModelConfig("t", "Unet", "resnet18"), 3))
    before = copy.deepcopy(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = rt.to_device(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)), image=True)
    y = torch.randint(0, 3, (2, 32, 32), generator=torch.Generator().manual_seed(2))
    with rt.autocast():
        loss = torch.nn.functional.cross_entropy(model(x).float(), y)
    loss.backward()
    opt.step()
    return before, model.state_dict()


def test_a_bf16_cpu_step_changes_the_fp32_weights():
    before, after = _one_step(Runtime.create(RuntimeConfig(device="cpu", amp="bf16")))
    changed = [k for k in before if before[k].is_floating_point() and not torch.equal(before[k], after[k])]
    assert changed, "a bf16 step left every weight unchanged"
    assert all(v.dtype == torch.float32 for v in after.values() if v.is_floating_point())


def test_the_fp32_path_is_plain_fp32():
    """amp=off computes exactly what a loop with no autocast computes."""
    _, a = _one_step(Runtime.create(RuntimeConfig(device="cpu", amp="off", channels_last=False)))
    torch.manual_seed(0)
    model = build_model(ModelConfig("t", "Unet", "resnet18"), 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 3, (2, 32, 32), generator=torch.Generator().manual_seed(2))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    for k, v in model.state_dict().items():
        assert torch.equal(v, a[k]), k


def test_ema_model_keeps_the_training_layout():
    """Validation runs the EMA copy: it must be channels_last like the model it averages."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    rt = Runtime.create(RuntimeConfig(device="cpu", amp="bf16", channels_last=True))
    model = rt.prepare(build_model(ModelConfig("t", "Unet", "resnet18"), 3))
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    ema.update_parameters(model)
    w = ema.module.net.encoder.conv1.weight
    assert w.is_contiguous(memory_format=torch.channels_last) and w.dtype == torch.float32


def _dw_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), torch.nn.Conv2d(8, 8, 3, padding=1, groups=8),
                               torch.nn.Conv2d(8, 4, 1, groups=2))


def test_depthwise_convolutions_run_in_fp32_under_cpu_bf16():
    """oneDNN's bf16 depthwise backward is several times slower than fp32's on the CPU: under bf16
    autocast the depthwise layers (only they: not dense, not other grouped convolutions) compute in
    fp32 when gradients are on (in bf16 without them: its forward is faster), with their state-dict
    keys unchanged and a deepcopy (EMA, SWA) computing with its own weights."""
    rt = Runtime.create(RuntimeConfig(device="cpu", amp="bf16"))
    net = rt.prepare(_dw_net())
    keys = list(_dw_net().state_dict())
    assert list(net.state_dict()) == keys
    seen = {}
    for i, m in enumerate(net):
        m.register_forward_hook(lambda mod, inp, out, i=i: seen.__setitem__(i, out.dtype))
    x = rt.to_device(torch.randn(2, 3, 8, 8), image=True)
    with rt.autocast():
        net(x).float().sum().backward()
    assert seen == {0: torch.bfloat16, 1: torch.float32, 2: torch.bfloat16}
    assert net[1].weight.grad is not None and net[1].weight.grad.dtype == torch.float32
    with torch.no_grad(), rt.autocast():  # validation, inference: no backward to pay for, bf16 forward
        net(x)
    assert seen == {0: torch.bfloat16, 1: torch.bfloat16, 2: torch.bfloat16}

    twin = copy.deepcopy(net)
    with torch.no_grad():
        twin[1].weight.zero_()
        twin[1].bias.zero_()
    with rt.autocast():
        assert torch.count_nonzero(twin[:2](x)) == 0  # the copy's conv, not the original's
        assert torch.count_nonzero(net[:2](x)) > 0

    for cfg in (RuntimeConfig(device="cpu", amp="bf16", depthwise_fp32=False), RuntimeConfig(device="cpu", amp="off")):
        plain = Runtime.create(cfg).prepare(_dw_net())
        assert "forward" not in vars(plain[1])


def test_depthwise_fp32_reaches_the_efficientnet_encoder():
    """timm's TF-padded depthwise convolutions (Conv2dSame) are found and still train."""
    from pipeline.engine.runtime import depthwise_in_fp32

    model = build_model(ModelConfig("t", "Unet", "tu-tf_efficientnet_lite0"), 3)
    assert depthwise_in_fp32(model) == 16  # one per MBConv block of Lite0
    rt = Runtime.create(RuntimeConfig(device="cpu", amp="bf16"))
    model = rt.prepare(model)
    before = copy.deepcopy(model.state_dict())
    with rt.autocast():
        model(rt.to_device(torch.randn(2, 3, 64, 64), image=True)).float().mean().backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items() if "conv_dw" in k)
