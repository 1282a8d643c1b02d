"""The ensemble reads images through a DataLoader: each image decoded once per batch whatever the
number of members, and the same predictions with or without loader workers."""
import pytest
import torch

from pipeline.config import ModelConfig
from pipeline.config.schema import RuntimeConfig
from pipeline.data.sources import open_split
from pipeline.engine import checkpoint
from pipeline.engine.runtime import DistInfo, Runtime
from pipeline.inference.ensemble import Ensemble, Member
from pipeline.inference.tta import build_tta
from pipeline.models import build_model
from pipeline.inference.outdir import Preds


class CountingSource:
    def __init__(self, source):
        self.source, self.records, self.calls = source, source.records, 0

    def image(self, i):
        self.calls += 1
        return self.source.image(i)

    def mask(self, i):
        return self.source.mask(i)


def _members(tmp_path, classes, n=2):
    out = []
    for k in range(n):
        torch.manual_seed(k)
        mc = ModelConfig(name="tiny", arch="deconvnet", params={"width": 0.125, "fc_channels": 16})
        model = build_model(mc, len(classes))
        path = tmp_path / f"m{k}.pt"
        checkpoint.save_model(path, model, mc, classes)
        out.append(Member("e", k, path, 1.0 + k))
    return out


def test_each_image_is_decoded_once_and_workers_change_nothing(make_cfg, tmp_path):
    cfg = make_cfg()
    src = open_split(cfg.data, "train")
    rt = Runtime.create(RuntimeConfig(device="cpu"), DistInfo())
    ens = Ensemble(_members(tmp_path, list(cfg.data.classes)), rt, build_tta(["hflip"]))
    counting = CountingSource(src)
    idx = [0, 3, 5, 7, 8]
    plain = list(ens.predict(counting, idx, batch_size=2, num_workers=0, with_mask=True))
    assert counting.calls == len(idx)  # two members, one decode per image
    workers = list(ens.predict(src, idx, batch_size=2, num_workers=2))
    assert [i for i, _, _ in plain] == [i for i, _ in workers] == idx
    for (_, a, truth), (_, b) in zip(plain, workers):
        assert torch.equal(a, b)
        assert a.shape == (len(cfg.data.classes), *truth.shape)
        assert torch.allclose(a.sum(0), torch.ones_like(a[0]), atol=1e-5)  # a weighted mean of softmaxes


def test_error_analysis_page_shows_the_worst_oof_images(make_cfg):
    import json

    import numpy as np
    from PIL import Image

    from pipeline import infer
    from pipeline.competition.metrics import IoUMeter
    from pipeline.data.pool import labelled_pool
    from helpers import fake_runs

    cfg = make_cfg("infer.num_workers=0", "infer.tta=[]", "infer.analysis_images=3", name="ea")
    fake_runs(cfg)
    manifest = infer.run(cfg)
    page = Preds.of(cfg).analysis
    report = (page / "report.md").read_text()
    assert (page / "worst_00.png").exists() and (page / "iou_by_fold.png").exists()
    pool, _ = labelled_pool(cfg)
    scores = {}
    for i, rec in enumerate(pool.records):  # independent: every OOF label map against its truth
        m = IoUMeter(cfg.data.num_classes, cfg.data.ignore_index)
        m.update(np.asarray(Image.open(Preds.of(cfg).oof.label(rec.stem))), pool.mask(i))
        scores[rec.stem] = m.compute()["miou"]
    rows = [line.split("|")[1:3] for line in report.splitlines() if "![" in line and "worst_" in line]
    listed = [(stem.strip(), float(score)) for stem, score in rows]
    assert len(listed) == 3
    assert [s for _, s in listed] == pytest.approx(sorted(scores.values())[:3], abs=5e-4)  # the three lowest
    assert all(scores[stem] == pytest.approx(s, abs=5e-4) for stem, s in listed)
    assert "| fold 0 | fold 1 | fold 2 |" in report and "Most confused" in report
    assert json.loads((Preds.of(cfg).manifest).read_text())["cv_miou"] == manifest["cv_miou"]
