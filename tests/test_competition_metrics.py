"""Each competition metric against an independent numpy computation on cases whose answer is known,
and the same metric object behind validation, OOF and `make score`."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.config import StageArgs
from pipeline.competition.metrics import build_metric

IGN = 255


def numpy_scores(preds, truths, classes, ignore=IGN):
    """Straight from the definitions, one image and one class at a time."""
    inter_d, union_d, img_miou, dice = np.zeros(len(classes)), np.zeros(len(classes)), [], []
    for p, t in zip(preds, truths):
        valid = t != ignore
        ious = []
        for k, c in enumerate(classes):
            pc, tc = (p == c) & valid, (t == c)
            i, u = np.sum(pc & tc), np.sum(pc | tc)
            inter_d[k] += i
            union_d[k] += u
            if u:
                ious.append(i / u)
            s = pc.sum() + tc.sum()
            dice.append(1.0 if s == 0 else 2 * i / s)
        if ious:
            img_miou.append(np.mean(ious))
    present = union_d > 0
    return {"miou": np.mean(inter_d[present] / union_d[present]), "miou_image": np.mean(img_miou),
            "dice_image_class": np.mean(dice)}


def scores(name, preds, truths, classes=(0, 1, 2)):
    m = build_metric(name, 3, IGN, list(classes))
    for p, t in zip(preds, truths):
        m.update(p, t)
    return m.compute()["score"]


A = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, 2]])


@pytest.mark.parametrize("name", ["miou", "miou_image", "dice_image_class"])
def test_perfect_prediction_scores_one(name):
    assert scores(name, [A, A[::-1]], [A, A[::-1]]) == pytest.approx(1.0)


def test_disjoint_prediction_scores_zero_except_empty_pairs():
    wrong = (A + 1) % 3
    assert scores("miou", [wrong], [A]) == 0 and scores("miou_image", [wrong], [A]) == 0
    assert scores("dice_image_class", [wrong], [A]) == 0
    # a class absent from truth and prediction: no evidence for IoU, a perfect pair for Dice
    only0 = np.zeros((3, 4), np.uint8)
    assert scores("miou_image", [only0], [only0]) == 1.0
    assert scores("dice_image_class", [np.ones_like(only0)], [only0], classes=(0, 1, 2)) == pytest.approx(1 / 3)


def test_empty_vs_empty_and_per_image_averaging():
    empty = np.zeros((2, 2), np.uint8)  # only class 0
    half = np.array([[1, 1], [0, 0]], np.uint8)
    # image 1 perfect; image 2 predicts nothing of class 1 where truth has it
    preds, truths = [empty, empty], [empty, half]
    expected = numpy_scores(preds, truths, [0, 1, 2])
    for name in ("miou", "miou_image", "dice_image_class"):
        assert scores(name, preds, truths) == pytest.approx(expected[name])
    assert expected["dice_image_class"] == pytest.approx((1 + 1 + 1 + 2 * 2 / 6 + 0 + 1) / 6)
    assert expected["miou_image"] == pytest.approx((1.0 + (0.5 + 0.0) / 2) / 2)


def test_overlapping_masks_count_for_each_class():
    truth = np.array([[0, 1], [2, IGN]])
    masks = np.array([[[1, 1], [0, 1]], [[0, 1], [0, 1]], [[0, 1], [1, 0]]], bool)  # pixel (0,1) in all three
    d = build_metric("dice_image_class", 3, IGN)
    d.update_masks(masks, truth)
    # class 0: pred {00,01} t {00}: 2*1/3; class 1: pred {01} t {01}: 1; class 2: pred {01,10} t {10}: 2*1/3
    assert d.compute()["score"] == pytest.approx((2 / 3 + 1 + 2 / 3) / 3)
    m = build_metric("miou_image", 3, IGN)
    m.update_masks(masks, truth)
    assert m.compute()["score"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_random_batches_match_numpy(seed):
    rng = np.random.default_rng(seed)
    truths = rng.integers(0, 3, (5, 6, 7)).astype(np.uint8)
    truths[rng.random(truths.shape) < 0.15] = IGN
    preds = rng.integers(0, 3, truths.shape)
    preds[rng.random(truths.shape) < 0.3] = 0
    expected = numpy_scores(preds, truths, [0, 1, 2])
    for name in expected:
        batched = build_metric(name, 3, IGN)
        batched.update(preds[:3], truths[:3])  # a batch of three, then two single images
        batched.update(preds[3], truths[3])
        batched.update(preds[4], truths[4])
        assert batched.compute()["score"] == pytest.approx(expected[name])
        assert batched.compute()["miou"] == pytest.approx(expected["miou"])  # always kept beside


def test_the_configured_metric_drives_training_oof_and_score(make_cfg):
    import pandas as pd

    from pipeline import folds, infer, score, submit, train
    from helpers import TINY

    cfg = make_cfg(*TINY, "train.epochs=1", "train.max_steps_per_epoch=1", "competition.metric=dice_image_class",
                   "submission.class_ids=[1, 2, 3]", "infer.num_workers=0", "infer.tta=[]", name="dice")
    folds.run(cfg)
    for k in range(3):
        train.run(make_cfg(*TINY, "train.epochs=1", "train.max_steps_per_epoch=1", "competition.metric=dice_image_class",
                           "submission.class_ids=[1, 2, 3]", name="dice", fold=k))
    m = pd.read_csv(cfg.run_dir() / "metrics.csv")
    assert {"val_score", "val_miou", "dice_image_class_bottle", "dice_image_class_can"} <= set(m.columns)
    assert "dice_image_class_background" not in m.columns  # only the scored classes
    manifest = infer.run(cfg)
    assert manifest["metric"] == "dice_image_class" and 0 <= manifest["cv_score"] <= 1
    result = score.run(cfg, StageArgs(sub=str(submit.run(cfg))))
    assert result["metric"] == "dice_image_class" and list(result["per_class"]) == ["bottle", "bag", "can"]
    board = pd.read_csv(cfg.submissions + "/leaderboard.csv")
    assert board["metric"][0] == "dice_image_class" and board["cv_score"][0] == pytest.approx(manifest["cv_score"])
