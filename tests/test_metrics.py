import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.competition.metrics import IoUMeter, confusion_matrix_torch, mean_iou
from reference_metrics import confusion_matrix, iou_from_confusion, multilabel_counts


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_confusion_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    t = rng.integers(0, 5, (9, 11)).astype(np.uint8)
    t[rng.random(t.shape) < 0.2] = 255
    p = rng.integers(0, 4, t.shape)
    cm = confusion_matrix(t, p, 4, 255)
    brute = np.zeros((4, 4), int)
    for a, b in zip(t.ravel(), p.ravel()):
        if a < 4:
            brute[a, b] += 1
    assert np.array_equal(cm, brute)
    assert np.array_equal(confusion_matrix_torch(torch.from_numpy(t.astype(np.int64)), torch.from_numpy(p), 4, 255).numpy(), brute)


def test_iou_and_mean():
    cm = np.array([[5, 1], [2, 0]])
    iou = iou_from_confusion(cm)
    assert np.allclose(iou, [5 / 8, 0.0])
    assert mean_iou(iou) == np.mean([5 / 8, 0.0])
    # a class absent from truth and prediction is not averaged
    assert np.isnan(iou_from_confusion(np.array([[3, 0], [0, 0]]))[1])


def test_multilabel_counts_overlapping_predictions_and_void():
    truth = np.array([[0, 0, 1, 255]])
    pred = {0: np.array([[1, 0, 1, 1]], bool), 1: np.array([[1, 0, 1, 0]], bool)}
    inter, union = multilabel_counts(pred, truth, [0, 1], 255)
    # class 0: pred {0,2} (void px 3 dropped), truth {0,1}: inter 1, union 3
    # class 1: pred {0,2}, truth {2}: inter 1, union 2 -- pixel 2 counts for both classes
    assert inter.tolist() == [1, 1] and union.tolist() == [3, 2]


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_meter_equals_confusion_maths_in_any_batching(seed):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 5, (6, 7, 9)).astype(np.uint8)
    truth[rng.random(truth.shape) < 0.1] = 255
    pred = rng.integers(0, 5, truth.shape)
    whole = IoUMeter(5, 255)
    whole.update(pred, truth)
    batched = IoUMeter(5, 255)
    for k in range(0, 6, 4):
        batched.update(torch.from_numpy(pred[k:k + 4]), torch.from_numpy(truth[k:k + 4]))
    cm = confusion_matrix(truth, pred, 5, 255)
    for m in (whole, batched):
        r = m.compute()
        assert np.allclose(r["iou"], iou_from_confusion(cm), equal_nan=True)
        assert r["miou"] == mean_iou(iou_from_confusion(cm))
        assert r["pixel_acc"] == np.trace(cm) / cm.sum()
        assert np.array_equal(m.confusion.numpy(), cm)


def test_meter_masks_match_label_maps_and_count_overlaps():
    truth = np.array([[0, 0, 1, 255]])
    masks = np.array([[[1, 0, 1, 1]], [[1, 0, 1, 0]]], bool)
    m = IoUMeter(2, 255)
    m.update_masks(masks, truth)
    inter, union = multilabel_counts({0: masks[0], 1: masks[1]}, truth, [0, 1], 255)
    assert m.inter.tolist() == inter.tolist() == [1, 1] and m.union.tolist() == union.tolist() == [3, 2]
    # disjoint masks from a label map score exactly like the label map itself
    rng = np.random.default_rng(0)
    t = rng.integers(0, 3, (20, 20))
    p = rng.integers(0, 3, (20, 20))
    a, b = IoUMeter(3, 255, classes=[1, 2]), IoUMeter(3, 255, classes=[1, 2])
    a.update(p, t)
    b.update_masks(np.stack([p == 1, p == 2]), t)
    ra, rb = a.compute(), b.compute()
    assert np.allclose(ra["iou"], rb["iou"]) and ra["miou"] == rb["miou"]


def test_meter_perfect_empty_and_disjoint():
    t = np.array([[0, 1], [1, 0]])
    perfect = IoUMeter(2, 255)
    perfect.update(t, t)
    assert perfect.compute()["miou"] == 1.0
    disjoint = IoUMeter(2, 255)
    disjoint.update(1 - t, t)
    assert disjoint.compute()["miou"] == 0.0
    empty = IoUMeter(3, 255)
    empty.update(t, t)
    assert np.isnan(empty.compute()["iou"][2]) and empty.compute()["miou"] == 1.0  # absent class not averaged
