import pytest
import torch

from pipeline.config import LossTerm, ModelConfig, TrainConfig
from pipeline.engine.losses import build_loss
from pipeline.models import build_model
from pipeline.models.registry import WeightsError
from pipeline.errors import ConfigError, ParamGroupError
from pipeline.engine.optim import build_optimizer, check_param_groups, param_groups
from helpers import ARCHS

@pytest.mark.parametrize("arch,encoder,params", ARCHS, ids=[a[0] for a in ARCHS])
def test_forward_backward_odd_sizes(arch, encoder, params):
    model = build_model(ModelConfig("m", arch, encoder, params=params), 4)
    x = torch.randn(2, 3, 50, 71)  # neither side a multiple of 32: padded, then cropped back
    out = model(x)
    assert out.shape == (2, 4, 50, 71)
    out.mean().backward()
    enc = [p for p in model.encoder.parameters() if p.grad is not None]
    assert enc, "the encoder got no gradient"


def test_local_encoder_weights_load(tmp_path):
    cfg = ModelConfig("m", "Unet", "resnet18")
    src = build_model(cfg, 3)
    path = tmp_path / "resnet18.pth"
    torch.save(src.encoder.state_dict(), path)
    loaded = build_model(ModelConfig("m", "Unet", "resnet18", encoder_weights=str(path)), 3)
    for (k, a), b in zip(src.encoder.state_dict().items(), loaded.encoder.state_dict().values()):
        assert torch.equal(a, b), k


def test_bad_weights_are_clear(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        build_model(ModelConfig("m", "Unet", "resnet18", encoder_weights=str(tmp_path / "none.pth")), 3)
    torch.save(build_model(ModelConfig("m", "Unet", "resnet34"), 3).encoder.state_dict(), tmp_path / "r34.pth")
    with pytest.raises(WeightsError, match="does not fit encoder resnet18"):
        build_model(ModelConfig("m", "Unet", "resnet18", encoder_weights=str(tmp_path / "r34.pth")), 3)
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(WeightsError, match="not a readable PyTorch weights file"):
        build_model(ModelConfig("m", "Unet", "resnet18", encoder_weights=str(tmp_path / "junk.pth")), 3)


def test_deconvnet_loads_torchvision_vgg16_bn(tmp_path):
    from torchvision.models import vgg16_bn

    ref = vgg16_bn(weights=None)
    # the file keeps torchvision's classifier keys, shrunk: at full size they are 500 MB of disk
    state = {k: (v[:2, :2] if v.ndim == 2 else v[:2]) if k.startswith("classifier.") else v
             for k, v in ref.state_dict().items()}
    torch.save(state, tmp_path / "vgg16_bn.pth")
    model = build_model(ModelConfig("d", "deconvnet", encoder_weights=str(tmp_path / "vgg16_bn.pth"),
                                    params={"width": 1.0, "fc_channels": 64}), 3)
    assert torch.equal(model.encoder.blocks[0][0][0].weight, ref.features[0].weight)
    assert torch.equal(model.encoder.blocks[4][2][1].running_var, ref.features[41].running_var)


def test_param_groups_cover_everything_with_their_own_lr():
    model = build_model(ModelConfig("m", "Unet", "resnet18"), 3)
    tc = TrainConfig(lr_encoder=1e-4, lr_decoder=1e-3, wd_encoder=0.01, wd_decoder=0.02)
    groups = param_groups(model, tc)
    by = {g["name"]: g for g in groups}
    assert set(by) == {"encoder", "encoder_no_decay", "decoder", "decoder_no_decay"}
    assert by["encoder"]["lr"] == 1e-4 and by["decoder"]["lr"] == 1e-3
    assert by["decoder"]["weight_decay"] == 0.02 and by["decoder_no_decay"]["weight_decay"] == 0.0
    assert all(n.startswith("net.encoder.") for n in by["encoder"]["param_names"])
    assert any("segmentation_head" in n for n in by["decoder"]["param_names"])
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    opt = build_optimizer(model, tc)
    assert len(opt.param_groups) == 4


def test_a_missing_group_raises():
    model = build_model(ModelConfig("m", "Unet", "resnet18"), 3)
    groups = [g for g in param_groups(model, TrainConfig()) if not g["name"].startswith("decoder")]
    with pytest.raises(ParamGroupError, match="in no group"):
        check_param_groups(model, groups)
    twice = param_groups(model, TrainConfig())
    twice.append(dict(twice[0]))
    with pytest.raises(ParamGroupError, match="in several"):
        check_param_groups(model, twice)


def test_frozen_parameters_are_not_required():
    model = build_model(ModelConfig("m", "Unet", "resnet18"), 3)
    for p in model.encoder.parameters():
        p.requires_grad = False
    names = {g["name"] for g in param_groups(model, TrainConfig())}
    assert names == {"decoder", "decoder_no_decay"}


@pytest.mark.parametrize("name", ["ce", "dice", "focal", "lovasz"])
def test_losses_ignore_void_and_are_finite_in_half(name):
    loss = build_loss((LossTerm(name),), 3, 255)
    logits = (torch.randn(2, 3, 8, 8) * 3000).half()  # fp16 sums of these overflow without the fp32 cast
    target = torch.randint(0, 3, (2, 8, 8))
    target[:, :2] = 255
    value = loss(logits.float() if name == "ce" else logits, target)
    assert torch.isfinite(value)
    # void pixels do not matter
    logits2 = logits.clone()
    logits2[:, :, :2] = -logits2[:, :, :2]
    value2 = loss(logits2.float() if name == "ce" else logits2, target)
    assert torch.allclose(value.float(), value2.float(), atol=1e-4)


def test_combined_loss_weights():
    logits, target = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
    ce = build_loss((LossTerm("ce"),), 3, 255)(logits, target)
    dice = build_loss((LossTerm("dice"),), 3, 255)(logits, target)
    both = build_loss((LossTerm("ce", 2.0), LossTerm("dice", 0.5)), 3, 255)(logits, target)
    assert torch.allclose(both, 2 * ce + 0.5 * dice)


def _ohem(thresh, min_kept=0, weights=None):
    params = {"ohem_thresh": thresh, "ohem_min_kept": min_kept}
    if weights:
        params["class_weights"] = weights
    return build_loss((LossTerm("ce", params=params),), 3, 255)


def test_ohem_ce_counts_only_the_hard_pixels():
    torch.manual_seed(0)
    logits, target = 0.1 * torch.randn(2, 3, 6, 6), torch.randint(0, 3, (2, 6, 6))  # every p about 1/3: hard
    target[0, 0] = 255
    easy = torch.zeros_like(target, dtype=torch.bool)
    easy[:, 3:] = True  # these pixels' true class gets a probability near 1
    logits = logits + 20.0 * torch.nn.functional.one_hot(target.clamp(max=2), 3).permute(0, 3, 1, 2) * easy.unsqueeze(1)
    weights = [0.5, 1.0, 2.0]
    hard_only = target.masked_fill(easy & (target != 255), 255)
    plain = torch.nn.CrossEntropyLoss(weight=torch.tensor(weights), ignore_index=255)
    assert torch.allclose(_ohem(0.7, weights=weights)(logits, target), plain(logits, hard_only))
    # every labelled pixel kept (min_kept covers them all): the plain weighted CE
    assert torch.allclose(_ohem(0.7, 72, weights)(logits, target), plain(logits, target))
    # the easy pixels get no gradient
    x = logits.clone().requires_grad_(True)
    _ohem(0.7)(x, target).backward()
    assert x.grad[:, :, 3:].abs().max() == 0 and x.grad[:, :, :3].abs().max() > 0


def test_ohem_ce_keeps_at_least_min_kept_hardest():
    torch.manual_seed(1)
    logits, target = torch.randn(1, 3, 5, 5), torch.randint(0, 3, (1, 5, 5))
    prob = torch.softmax(logits, 1).gather(1, target.unsqueeze(1)).squeeze(1)
    hardest = prob.flatten().argsort()[:7]  # distinct probabilities: exactly these seven count
    kept = torch.full_like(target, 255).flatten()
    kept[hardest] = target.flatten()[hardest]
    expect = torch.nn.functional.cross_entropy(logits, kept.view_as(target), ignore_index=255)
    assert torch.allclose(_ohem(1e-6, 7)(logits, target), expect)


@pytest.mark.parametrize("params,message", [({"ohem_min_kept": 10}, "needs ce.ohem_thresh"),
                                            ({"ohem_thresh": 1.5}, "must be in"),
                                            ({"ohem_thresh": 0.7, "ohem_min_kept": -1}, "must be in")])
def test_ohem_ce_config_errors(params, message):
    with pytest.raises(ConfigError, match=message):
        build_loss((LossTerm("ce", params=params),), 3, 255)


def test_median_frequency_weights():
    import numpy as np

    from pipeline.data.stats import label_stats, median_frequency_weights

    from pipeline.pixels import class_counts

    class Src:
        def __init__(self, masks):
            self.masks = masks

        def mask(self, i):
            return self.masks[i]

        def class_pixels(self, m):
            return class_counts(m, 3)

    a = np.zeros((4, 4), np.uint8)
    a[:, :1] = 1  # class 1: 4 of 16 pixels, in one image
    b = np.full((4, 4), 255, np.uint8)
    b[:2] = 0  # class 0 in both images: 12 + 8 of 32 pixels
    stats = label_stats(Src([a, b]), [0, 1], 3, 255)
    assert stats.ignored == 8 and stats.total == 32
    w = median_frequency_weights(stats)
    f0, f1 = 20 / 32, 4 / 16
    med = np.median([f0, f1])
    assert np.allclose(w[:2], [med / f0, med / f1])
    assert w[2] == max(w[:2])  # never-seen class 2 gets the largest weight
    assert np.allclose(median_frequency_weights(stats, 0.5), np.sqrt(w))  # sqrt_median_frequency: milder


def test_a_class_weighting_by_an_unknown_name_is_refused_naming_the_choices(make_cfg):
    import numpy as np

    from pipeline.data.stats import LabelStats
    from pipeline.errors import ConfigError
    from pipeline.train import _class_weights

    stats = LabelStats(pixels=np.array([30, 10, 0]), image_pixels=np.array([40, 20, 0]), ignored=0, total=40)
    cfg = make_cfg("train.losses=[{name: ce, params: {class_weights: sqrt_median_frequency}}]")
    (term,) = _class_weights(cfg, stats)
    assert np.allclose(term.params["class_weights"], np.sqrt([0.625 / 0.75, 0.625 / 0.5, 0.625 / 0.5]))
    bad = make_cfg("train.losses=[{name: ce, params: {class_weights: inverse_frequency}}]")
    with pytest.raises(ConfigError, match="class_weights: 'inverse_frequency' is not one of median_frequency"):
        _class_weights(bad, stats)


def _sched_lrs(**kw):
    from pipeline.engine.optim import build_scheduler

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched, per_step = build_scheduler(opt, TrainConfig(**kw), steps_per_epoch=10)
    lrs = []
    for _ in range(kw.get("epochs", 5) * 10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs, per_step


def test_cosine_with_warmup_and_poly_schedules():
    lrs, per_step = _sched_lrs(epochs=5, scheduler="cosine", warmup_epochs=1, min_lr_ratio=0.01)
    assert per_step
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)  # linear warm-up over 10 steps
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # then monotone decay
    assert lrs[-1] == pytest.approx(0.01, abs=0.01)
    poly, _ = _sched_lrs(epochs=5, scheduler="poly", warmup_epochs=0, min_lr_ratio=0.0, poly_power=1.0)
    assert poly[25] == pytest.approx(0.5)  # linear when power is 1


def test_plateau_steps_per_epoch_on_miou():
    from pipeline.engine.optim import build_scheduler

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1.0)
    sched, per_step = build_scheduler(opt, TrainConfig(scheduler="plateau", plateau_patience=1), 10)
    assert not per_step
    for miou in (0.5, 0.5, 0.5):
        sched.step(miou)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)
