"""Class paste (train.class_paste): another training image's pixels of chosen classes, with their
labels, copied onto a training image at the same place; deterministic per (seed, epoch, item)."""
import albumentations as A
import numpy as np
import pytest

from pipeline import folds, train
from pipeline.data.dataset import SegDataset
from pipeline.data.paste import paste_classes, paste_donor
from pipeline.errors import ConfigError
from helpers import TINY


def _pair(h=6, w=8):
    image, mask = np.zeros((h, w, 3), np.uint8), np.zeros((h, w), np.uint8)
    donor_image, donor_mask = np.full((h, w, 3), 200, np.uint8), np.ones((h, w), np.uint8)
    donor_mask[1, 2:5] = 3  # a thin line of the pasted class
    donor_mask[4, 1] = 4  # a class not pasted
    donor_mask[0, 0] = 255  # ignored in the donor: never pasted
    return image, mask, donor_image, donor_mask


def test_paste_copies_only_the_chosen_classes_pixels_and_labels():
    image, mask, donor_image, donor_mask = _pair()
    before = image.copy(), mask.copy(), donor_image.copy(), donor_mask.copy()
    out_image, out_mask = paste_classes(image, mask, donor_image, donor_mask, [3])
    pasted = donor_mask == 3
    assert (out_mask[pasted] == 3).all() and (out_mask[~pasted] == 0).all()
    assert (out_image[pasted] == 200).all() and (out_image[~pasted] == 0).all()
    for a, b in zip((image, mask, donor_image, donor_mask), before):
        assert np.array_equal(a, b)  # inputs untouched: a source may hand out cached arrays
    _, two = paste_classes(image, mask, donor_image, donor_mask, [3, 4])
    assert (two == 3).sum() == 3 and (two == 4).sum() == 1


def test_images_of_different_sizes_share_their_top_left_overlap():
    image, mask = np.zeros((4, 10, 3), np.uint8), np.zeros((4, 10), np.uint8)
    donor_image, donor_mask = np.full((7, 5, 3), 9, np.uint8), np.full((7, 5), 2, np.uint8)
    out_image, out_mask = paste_classes(image, mask, donor_image, donor_mask, [2])
    assert out_mask.shape == (4, 10) and out_image.shape == (4, 10, 3)
    assert (out_mask[:, :5] == 2).all() and (out_mask[:, 5:] == 0).all()
    assert (out_image[:, :5] == 9).all() and (out_image[:, 5:] == 0).all()


def test_the_donor_is_another_item_drawn_deterministically_at_the_given_share():
    n = 7
    items = [(e, k) for e in range(40) for k in range(n)]
    draws = [paste_donor(3, e, k, n, 0.5) for e, k in items]
    share = sum(d is not None for d in draws) / len(draws)
    assert 0.4 < share < 0.6
    assert all(d != k for (_, k), d in zip(items, draws))
    assert {d for d in draws if d is not None} == set(range(n))  # every other item donates somewhere
    assert draws == [paste_donor(3, e, k, n, 0.5) for e, k in items]  # pure
    assert draws != [paste_donor(4, e, k, n, 0.5) for e, k in items]  # the seed matters
    assert paste_donor(3, 0, 0, n, 0.0) is None and paste_donor(3, 0, 0, 1, 1.0) is None
    assert all(paste_donor(3, 0, k, n, 1.0) is not None for k in range(n))


class _Frames:
    """A source of n frames: frame i has class 1 everywhere and class 3 in row i only."""

    def __init__(self, n=5, shape=(6, 8)):
        self.n, self.shape = n, shape

    def image(self, i):
        return np.full((*self.shape, 3), 10 * i, np.uint8)

    def mask(self, i):
        m = np.ones(self.shape, np.uint8)
        m[i] = 3
        return m


def test_the_training_dataset_pastes_the_same_sample_in_every_worker_and_after_a_resume():
    src, n = _Frames(), 5
    plain = SegDataset(src, range(n), A.Compose([]), seed=1)
    pasted = SegDataset(src, range(n), A.Compose([]), seed=1, paste=1.0, paste_classes=[3])
    again = SegDataset(src, range(n), A.Compose([]), seed=1, paste=1.0, paste_classes=[3])
    for item in range(3 * n):  # three epochs (EpochSampler's epoch * n + index)
        _, m0 = plain[item]
        x1, m1 = pasted[item]
        x2, m2 = again[item]
        assert (m0 == 3).sum() == 8  # its own row
        assert (m1 == 3).sum() == 16  # and the donor's row, another frame's
        rows = sorted({int(r) for r in np.nonzero((m1 == 3).numpy())[0]})
        donor = next(r for r in rows if r != item % n)
        assert float(x1[0, donor, 0]) == 10 * donor  # the donor's pixels came with its labels
        assert np.array_equal(m1, m2) and np.array_equal(x1, x2)
    assert SegDataset(src, range(n), A.Compose([]), paste=1.0).paste == 0.0  # no classes, no paste


@pytest.mark.parametrize("overrides,match", [
    (["train.class_paste=0.5", "train.paste_classes=[Nope]"], "train.paste_classes: 'Nope' is not a class"),
    (["train.class_paste=1.5"], "train.class_paste"),
])
def test_bad_paste_settings_are_named(make_cfg, overrides, match):
    with pytest.raises(ConfigError, match=match):
        make_cfg(*overrides)


def test_a_run_with_class_paste_trains_and_logs_what_it_pastes(make_cfg, caplog):
    caplog.set_level("INFO")
    cfg = make_cfg(*TINY, "train.epochs=1", "train.max_steps_per_epoch=1", "train.class_paste=0.5", name="paste")
    folds.run(cfg)
    out = train.run(cfg)
    assert out["epochs"] == 1 and (cfg.run_dir() / "last.pt").exists()
    line = next(r.getMessage() for r in caplog.records if "class paste" in r.getMessage())
    assert "p=0.50" in line and len(line.split(":", 1)[1].split(",")) == 2  # default: the rarest third of 6
