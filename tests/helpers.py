"""Constants and small builders shared by the tests (fixtures live in conftest.py)."""
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"

TINY = ["runtime.device=cpu", "model.arch=deconvnet", "model.params={width: 0.125, fc_channels: 32}",
        "train.batch_size=4", "train.epochs=2", "train.warmup_epochs=0"]

ARCHS = [("deconvnet", "resnet34", {"width": 0.125, "fc_channels": 32}), ("Unet", "resnet18", {}),
         ("UnetPlusPlus", "resnet18", {}), ("FPN", "resnet18", {}), ("DeepLabV3Plus", "resnet18", {}),
         ("PSPNet", "resnet18", {}), ("Segformer", "mit_b0", {})]


def write_coco(path: Path, images, annotations, categories=None) -> Path:
    doc = {"images": images, "annotations": annotations,
           "categories": categories or [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    path.write_text(json.dumps(doc))
    return path


def square(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def fake_runs(cfg, seed=0):
    """A tiny untrained best.pt per fold, enough for inference to run."""
    import torch

    from pipeline import folds
    from pipeline.config import ModelConfig
    from pipeline.engine import checkpoint
    from pipeline.models import build_model

    folds.run(cfg)
    mc = ModelConfig(name="tiny", arch="deconvnet", params={"width": 0.125, "fc_channels": 16})
    for k in range(cfg.folds.k):
        torch.manual_seed(seed + k)
        model = build_model(mc, cfg.data.num_classes)
        checkpoint.save_model(cfg.run_dir(fold=k) / "best.pt", model, mc, cfg.data.classes)
