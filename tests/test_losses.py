"""segpipe's multiclass Dice against SMP's DiceLoss, and the one fp32 cast in Combined."""
import pytest
import segmentation_models_pytorch as smp
import torch

from pipeline.config import LossTerm
from pipeline.engine.losses import Combined, _MulticlassDice, build_loss


def _batch(seed, n=2, c=5, h=9, w=7):
    g = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
    target = torch.randint(0, c, (n, h, w), generator=g)
    target[0, :3] = 255  # ignored pixels
    target[target == 2] = 0  # class 2 absent from the batch
    return logits, target


@pytest.mark.parametrize("params", [{}, {"smooth": 1.0}, {"log_loss": True}, {"smooth": 0.5, "eps": 1e-5, "log_loss": True}])
@pytest.mark.parametrize("seed", [0, 1])
def test_multiclass_dice_equals_smp(params, seed):
    logits, target = _batch(seed)
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    ref = smp.losses.DiceLoss("multiclass", ignore_index=255, **params)(a, target)
    ours = _MulticlassDice(255, **params)(b, target)
    ref.backward()
    ours.backward()
    assert ours.item() == pytest.approx(ref.item(), rel=1e-10, abs=1e-12)
    assert torch.allclose(b.grad, a.grad, rtol=1e-8, atol=1e-12)
    assert b.grad[0, :, :3].abs().max() == 0 and b.grad.abs().max() > 0  # no gradient from ignored pixels


def test_multiclass_dice_counts_only_present_classes():
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, :2] = 1
    perfect = 50.0 * torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).double()
    # classes 0 and 1 predicted exactly, class 2 absent: it adds 0 but still counts in the mean
    assert _MulticlassDice(255)(perfect, target).item() == pytest.approx(0.0, abs=1e-12)
    swapped = perfect[:, [1, 0, 2]]
    assert _MulticlassDice(255)(swapped, target).item() == pytest.approx(2 / 3, abs=1e-9)


def test_dice_config_picks_smp_for_what_segpipe_does_not_cover():
    assert isinstance(build_loss((LossTerm("dice"),), 3, 255).losses[0].loss, _MulticlassDice)
    other = build_loss((LossTerm("dice", params={"classes": [1, 2]}),), 3, 255).losses[0].loss
    assert isinstance(other, smp.losses.DiceLoss)
    assert isinstance(build_loss((LossTerm("dice"),), 3, 255, multilabel=True).losses[0].loss.loss, smp.losses.DiceLoss)


def test_combined_gives_every_term_one_fp32_contiguous_copy():
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, logits, target):
            seen.append(logits)
            return logits.sum()

    low = torch.randn(2, 3, 4, 4, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    Combined([("a", 1.0, Spy()), ("b", 0.5, Spy())])(low, None)
    assert seen[0] is seen[1] and seen[0].dtype == torch.float32 and seen[0].is_contiguous()


def test_combined_on_bf16_channels_last_logits_equals_the_terms_in_fp32():
    logits, target = _batch(3)
    low = logits.to(torch.bfloat16).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    loss = build_loss((LossTerm("ce"), LossTerm("dice", 0.5)), 5, 255)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(low, target)
    assert value.dtype == torch.float32
    value.backward()
    assert low.grad.dtype == torch.bfloat16
    # the same as both terms on the fp32 logits, to bf16's rounding of the input
    exact = low.detach().float().requires_grad_(True)
    expected = (torch.nn.functional.cross_entropy(exact, target, ignore_index=255)
                + 0.5 * smp.losses.DiceLoss("multiclass", ignore_index=255)(exact, target))
    expected.backward()
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    assert torch.allclose(low.grad.float(), exact.grad, rtol=1e-2, atol=1e-4)
