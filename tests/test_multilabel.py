"""The multilabel task: label maps of class bits, per-class mask folders, sigmoid losses, the
metric on overlapping classes, and the chain end to end on the overlapping-defects demo."""
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from pipeline.competition import rle
from pipeline.competition.metrics import build_metric
from pipeline.config import LossTerm, load_config, StageArgs
from pipeline.data.overlap import compose_label_map
from pipeline.engine.losses import build_loss
from pipeline.errors import ConfigError, DataError
from pipeline.pixels import bit_counts, bits_to_masks, masks_to_bits
from pipeline.inference.outdir import Preds


def test_bits_round_trip_in_numpy_and_torch():
    m = np.random.default_rng(0).random((2, 5, 6, 7)) > 0.5
    bits = masks_to_bits(m)
    assert bits.dtype == np.uint8 and np.array_equal(bits_to_masks(bits, 5), m)
    assert np.array_equal(masks_to_bits(torch.from_numpy(m)).numpy(), bits)
    assert np.array_equal(bits_to_masks(torch.from_numpy(bits).long(), 5).numpy(), m)
    label = bits[0].copy()
    label[0, 0] = 255
    keep = label != 255
    assert bit_counts(label, 5).tolist() == [int((m[0, c] & keep).sum()) for c in range(5)]


def test_multilabel_composition_keeps_every_class():
    a = np.zeros((4, 4), np.uint8)
    a[:2] = 1
    b = np.zeros((4, 4), np.uint8)
    b[1:3] = 1
    out = compose_label_map([a, b], [1, 3], "multilabel", (4, 4), fill=0, ignore_index=255)
    assert out[0, 0] == 0b0010 and out[1, 0] == 0b1010 and out[2, 0] == 0b1000 and out[3, 0] == 0b0001
    ignored = compose_label_map([a], [2], "multilabel", (4, 4), fill=255, ignore_index=255)
    assert (ignored[2:] == 255).all()


def test_config_ties_the_task_to_the_labels():
    with pytest.raises(ConfigError, match="go together"):
        load_config("demo_defects", overrides=["competition.task=multilabel"])
    with pytest.raises(ConfigError, match="bce"):
        load_config("demo_overlap", exp="demo_overlap", overrides=["train.losses=[{name: ce}]"])
    with pytest.raises(ConfigError, match="at most 7 classes"):
        load_config("demo_overlap", overrides=["data.classes=[a,b,c,d,e,f,g,h]", "submission.class_ids=[1]"])


@pytest.mark.parametrize("name", ["bce", "dice", "focal", "lovasz"])
def test_multilabel_losses_reward_the_truth_and_ignore_the_void(name):
    torch.manual_seed(0)
    masks = torch.rand(2, 4, 16, 16) > 0.6
    target = masks_to_bits(masks).long()
    target[:, :2, :2] = 255
    loss = build_loss((LossTerm(name),), 4, 255, multilabel=True)
    right = masks.float() * 20 - 10
    assert float(loss(right, target)) < 0.01 < 0.5 < float(loss(-right, target))
    flipped = right.clone()
    flipped[:, :, :2, :2] *= -1  # wrong only where the truth is void
    assert float(loss(flipped, target)) == pytest.approx(float(loss(right, target)), abs=1e-6)


@pytest.mark.parametrize("metric", ["miou", "dice_image_class", "miou_image"])
def test_multilabel_metric_matches_numpy_on_overlapping_classes(metric):
    rng = np.random.default_rng(0)
    C, classes = 5, [1, 2, 3, 4]
    tm, pm = rng.random((3, C, 20, 30)) > 0.7, rng.random((3, C, 20, 30)) > 0.7
    tm[1, 2] = pm[1, 2] = False  # a class empty in truth and prediction of one image
    t, p = masks_to_bits(tm), masks_to_bits(pm)
    t[:, :3, :3] = 255
    valid = t != 255
    P, T = pm & valid[:, None], tm & valid[:, None]
    if metric == "miou":
        ref = np.mean([(P[:, c] & T[:, c]).sum() / (P[:, c] | T[:, c]).sum() for c in classes])
    elif metric == "dice_image_class":
        ref = np.mean([1.0 if P[k, c].sum() + T[k, c].sum() == 0 else
                       2 * (P[k, c] & T[k, c]).sum() / (P[k, c].sum() + T[k, c].sum()) for k in range(3) for c in classes])
    else:
        ref = np.mean([np.mean([(P[k, c] & T[k, c]).sum() / (P[k, c] | T[k, c]).sum() for c in classes
                                if (P[k, c] | T[k, c]).any()]) for k in range(3)])
    batch, images, masks = (build_metric(metric, C, 255, classes, multilabel=True) for _ in range(3))
    batch.update(p, t)
    for k in range(3):
        images.update(p[k], t[k])
        masks.update_masks(pm[k][classes], t[k])
    for m in (batch, images, masks):
        assert m.compute()["score"] == pytest.approx(ref, abs=1e-9)


def test_per_class_mask_folders(tmp_path):
    from pipeline.data import demo_defects
    from pipeline.data.sources import open_split

    demo_defects.generate(tmp_path, n_train=12, n_test=2, overlapping=True)
    cfg = load_config("demo_overlap", overrides=[f"data.root={tmp_path}"])
    src = open_split(cfg.data, "train")
    assert src.multilabel and len(src) == 12
    overlapping = 0
    for i in range(len(src)):
        bits = src.mask(i)
        for c, name in enumerate(cfg.data.classes[1:], start=1):
            binary = np.asarray(Image.open(tmp_path / "train/masks" / name / f"train{i:04d}.png")) > 0
            assert np.array_equal((bits >> c) & 1, binary)
        assert np.array_equal(bits & 1, bits == 1)  # background only where no class is
        overlapping += int(np.count_nonzero((bits & (bits - 1)) > 0))
    assert overlapping > 0  # the demo's defects overlap
    (tmp_path / "train/masks/crack").rename(tmp_path / "crack_gone")
    with pytest.raises(DataError, match="crack"):
        open_split(cfg.data, "train")


def test_overlap_demo_end_to_end(tmp_path):
    """Sigmoid training, sigmoid TTA ensembling with OOF probabilities, thresholds tuned on OOF, a
    validated Image_Label submission scored against overlapping local truth."""
    from pipeline import eda, folds, infer, score, submit, train
    from pipeline import tune as tune_stage
    from pipeline.data import demo_defects

    demo_defects.generate(tmp_path / "data", n_train=24, n_test=6, overlapping=True)
    over = [f"data.root={tmp_path / 'data'}", f"outputs={tmp_path / 'out'}", f"submissions={tmp_path / 'subs'}",
            "runtime.device=cpu", "train.epochs=2", "train.swa_epochs=1", "runtime.progress=false", "train.batch_size=8",
            "infer.num_workers=0", "infer.tta=[hflip]"]
    cfg = load_config("demo_overlap", exp="demo_overlap", overrides=over)
    summary = eda.run(cfg)
    assert summary["overlap"]["multilabel_pixels"] > 0
    folds.run(cfg)
    for k in range(cfg.folds.k):
        train.run(load_config("demo_overlap", exp="demo_overlap", fold=k, overrides=over))
    manifest = infer.run(cfg)
    assert manifest["oof_images"] == 24 and 0 <= manifest["cv_score"] <= 1
    probs = sorted((Preds.of(cfg).oof.root / "probs").glob("*.npz"))
    assert len(probs) == 24
    with np.load(probs[0]) as z:
        p = z["probs"]
    assert p.dtype == np.float16 and p.shape[0] == 5 and not np.allclose(p.astype(np.float32).sum(0), 1, atol=1e-2)
    tuned = tune_stage.run(cfg)
    assert tuned["oof_after"] >= tuned["oof_before"]
    path = submit.run(cfg)
    table = pd.read_csv(path, keep_default_na=False)
    assert len(table) == 6 * 4 and table["Image_Label"].str.endswith(("_scratch", "_pits", "_patch", "_crack")).all()
    scored = score.run(cfg, StageArgs(sub=str(path)))
    # independent: decode every row and compute mean Dice per (image, class) at 48x80
    from pipeline.competition.submission import output_label
    from pipeline.data.sources import open_split

    truth = open_split(cfg.data, "truth")
    dice = []
    for k, rec in enumerate(truth.records):
        t = output_label(truth.mask(k), cfg.submission)
        for c, name in enumerate(cfg.data.classes[1:], start=1):
            enc = table.loc[table["Image_Label"] == f"{rec.file_name}_{name}", "EncodedPixels"].item()
            pred = rle.decode(enc, (48, 80))
            true = ((t >> c) & 1).astype(bool)
            d = pred.sum() + true.sum()
            dice.append(1.0 if d == 0 else 2 * (pred & true).sum() / d)
    assert scored["score"] == pytest.approx(float(np.mean(dice)), abs=1e-9)


def test_coco_overlaps_become_class_bits(tmp_path):
    """The bottle-inside-a-bag case: with data.overlap multilabel both annotations keep their class."""
    from helpers import square, write_coco
    from pipeline.data.sources import open_split

    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp_path / "x.png")
    write_coco(tmp_path / "a.json", [{"id": 1, "file_name": "x.png", "height": 10, "width": 10}],
               [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": square(0, 0, 6, 6), "area": 36,
                 "bbox": [0, 0, 6, 6], "iscrowd": 0},
                {"id": 2, "image_id": 1, "category_id": 2, "segmentation": square(3, 3, 9, 9), "area": 36,
                 "bbox": [3, 3, 6, 6], "iscrowd": 0}])
    over = [f"data.root={tmp_path}", "data.format=coco", "data.classes=[background,a,b]", "data.overlap=multilabel",
            "data.train={annotations: a.json, images: .}", "competition.task=multilabel", "train.losses=[{name: bce}]",
            "submission.class_ids=[1,2]"]
    cfg = load_config("demo_overlap", overrides=over)
    bits = open_split(cfg.data, "train", cache_dir=tmp_path / "cache").mask(0)
    assert bits[4, 4] == 0b110 and bits[1, 1] == 0b010 and bits[8, 8] == 0b100 and bits[0, 9] == 0b001
    counts = bit_counts(bits, 3)
    assert counts[1] + counts[2] > 100 - counts[0]  # pixels of both classes count for each
