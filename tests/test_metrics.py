import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.metrics import (confusion_matrix, confusion_matrix_torch, iou_from_confusion, mean_iou,
                              multilabel_counts)


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
