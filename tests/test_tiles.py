"""Training windows from large images: decoded once into memory-mapped files, a configurable share
centred on foreground, validation on a grid that scores every pixel once; counting and RLE on large
label maps without full-image int64 temporaries; the slides demo end to end at a small size."""
import os
import tracemalloc

import albumentations as A
import numpy as np
import pandas as pd
import pytest

from pipeline.competition import rle
from pipeline.data.dataset import IMAGENET
from pipeline.data.tiles import DecodedCache, GridTiles, TileDataset, foreground_sample
from pipeline.pixels import class_counts
from pipeline.inference.outdir import Preds


class ArraySource:
    """Images and masks held in memory; counts decodes."""

    def __init__(self, images, masks, files=()):
        from pipeline.data.coco import ImageRecord

        self.images, self.masks, self.decodes, self._files = images, masks, 0, list(files)
        self.records = [ImageRecord(f"s{k}", f"s{k}.png", m.shape[0], m.shape[1], None) for k, m in enumerate(masks)]

    def image(self, i):
        self.decodes += 1
        return self.images[i]

    def mask(self, i):
        return self.masks[i]

    def files(self, i):
        return self._files


def _slide(h, w, seed):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[10:20, 30:45] = 1
    mask[h - 30:h - 25, w - 12:w - 2] = 2
    mask[0:3, 0:3] = 255
    return img, mask


def test_foreground_sample_is_foreground_and_proportional_across_bands():
    mask = np.zeros((2000, 300), np.uint8)
    mask[100:110, :100] = 1  # 1000 pixels in the first band of rows
    mask[1500:1530, :100] = 2  # 3000 pixels in the fourth band
    mask[50, 50] = 255
    yx = foreground_sample(mask, background=0, ignore_index=255, k=2000, seed=0)
    assert len(yx) == 2000 and len(np.unique(yx[:, 0] * 300 + yx[:, 1])) == 2000
    values = mask[yx[:, 0], yx[:, 1]]
    assert set(values.tolist()) <= {1, 2}
    assert abs((values == 2).mean() - 0.75) < 0.05  # each foreground pixel equally likely, whatever its band
    assert len(foreground_sample(np.zeros((5, 5), np.uint8), 0, 255, 10, 0)) == 0


def test_decoded_cache_decodes_once_and_reads_memory_mapped(tmp_path):
    img, mask = _slide(100, 140, 0)
    src = ArraySource([img], [mask])
    a = DecodedCache(src, tmp_path, 0, 255)
    first = a.image(0)
    b = DecodedCache(src, tmp_path, 0, 255)  # another process (a loader worker) on the same folder
    again = b.image(0)
    assert src.decodes == 1 and isinstance(again, np.memmap)
    assert np.array_equal(first, img) and np.array_equal(b.mask(0), mask)
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically


def test_an_edited_source_file_gets_a_new_cache_entry(tmp_path):
    img, mask = _slide(40, 50, 0)
    f = tmp_path / "slide.png"
    f.write_bytes(b"v1")
    src = ArraySource([img], [mask], files=[f])
    DecodedCache(src, tmp_path / "c", 0, 255).image(0)
    f.write_bytes(b"version 2")
    os.utime(f, ns=(1, 1))
    DecodedCache(src, tmp_path / "c", 0, 255).image(0)
    assert src.decodes == 2 and len(list((tmp_path / "c").glob("*.image.npy"))) == 2


def _plain():
    return A.Compose([A.Normalize(*IMAGENET)])


@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_a_share_of_training_windows_is_centred_on_foreground(tmp_path, share):
    images, masks = zip(*[_slide(300, 400, s) for s in range(3)])
    cache = DecodedCache(ArraySource(list(images), list(masks)), tmp_path, 0, 255)
    ds = TileDataset(cache, [0, 1, 2], (64, 64), per_image=100, fg_share=share, transform=_plain(), seed=3)
    wins = [ds.window(k) for k in range(len(ds))]
    on = np.array([w[3] for w in wins])
    assert abs(on.mean() - share) < 0.08
    for i, y, x, centred in wins:
        assert 0 <= y <= 300 - 64 and 0 <= x <= 400 - 64
        crop = masks[i][y:y + 64, x:x + 64]
        if centred:
            assert ((crop == 1) | (crop == 2)).any()  # the window holds the structure it was centred on
    # random windows on a mostly empty slide rarely see foreground; centred ones always do
    fg_seen = np.array([((masks[i][y:y + 64, x:x + 64] % 255) > 0).any() for i, y, x, _ in wins])
    if share == 0.0:
        assert fg_seen.mean() < 0.3
    assert ds.window(7) == ds.window(7) and ds.window(7) != ds.window(len(ds) + 7)  # same epoch same window


def test_a_training_window_is_the_crop_of_the_slide(tmp_path):
    img, mask = _slide(120, 90, 1)
    cache = DecodedCache(ArraySource([img], [mask]), tmp_path, 0, 255)
    ds = TileDataset(cache, [0], (64, 128), per_image=5, fg_share=0.5, transform=_plain(), seed=0)
    for k in range(5):
        _, y, x, _ = ds.window(k)
        x_t, m_t = ds[k]
        assert x_t.shape == (3, 64, 128) and m_t.shape == (64, 128)
        assert np.array_equal(m_t[:, :90].numpy(), mask[y:y + 64, :])  # the slide is narrower than the window
        assert (m_t[:, 90:] == 255).all()  # padding is ignored, never background
        expect = _plain()(image=img[y:y + 64])["image"]
        assert np.allclose(x_t[:, :, :90].numpy(), expect.transpose(2, 0, 1), atol=1e-6)


def test_validation_grid_scores_every_pixel_once(tmp_path):
    images, masks = zip(*[_slide(130, 170, s) for s in range(2)])
    cache = DecodedCache(ArraySource(list(images), list(masks)), tmp_path, 0, 255)
    grid = GridTiles(cache, [0, 1], (64, 64), _plain())
    counted = np.zeros(3, np.int64)
    for k in range(len(grid)):
        _, m = grid[k]
        assert m.shape == (64, 64)
        counted += class_counts(m.numpy(), 3)
    assert np.array_equal(counted, sum(class_counts(m, 3) for m in masks))


def _traced_peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_counting_and_rle_on_a_large_label_map_make_no_full_image_int64_temporaries():
    h, w = 6000, 6000
    label = np.zeros((h, w), np.uint8)
    label[1000:3000, 2000:2500] = 1
    label[5000:, :] = 2
    px = h * w
    peak = _traced_peak(lambda: class_counts(label, 3))
    assert peak < 40 * 2 ** 20, peak  # one chunk's int64 at most, not 8 bytes per pixel (275 MiB)
    assert class_counts(label, 3).tolist() == [px - 1_000_000 - 6_000_000, 1_000_000, 6_000_000]
    mask = label == 1
    peak = _traced_peak(lambda: rle.encode(mask))
    assert peak < 4 * px, peak  # a few bytes per pixel (int64 would be 8)
    assert np.array_equal(rle.decode(rle.encode(mask), (h, w)), mask)


def test_slides_demo_end_to_end_at_a_small_size(tmp_path, monkeypatch):
    """The slides demo's chain (tiles in training, windows in inference, RLE submission, local
    score) on the same generator at a small size."""
    from pipeline import folds, infer, score, submit, train
    from pipeline.config import load_config
    from pipeline.data import demo_slides

    demo_slides.generate(tmp_path / "data", n_train=4, n_test=2, train_size=(192, 256), test_size=(300, 360))
    over = [f"data.root={tmp_path / 'data'}", f"outputs={tmp_path / 'out'}", f"submissions={tmp_path / 'subs'}",
            "runtime.device=cpu", "train.epochs=2", "train.val_every=1", "train.tile=[64,64]", "train.tiles_per_image=4",
            "runtime.progress=false", "infer.window=[96,96]", "infer.overlap=0.25", "infer.num_workers=0"]
    cfg = load_config("demo_slides", exp="demo_slides", overrides=over)
    folds.run(cfg)
    for k in range(cfg.folds.k):
        assert train.run(load_config("demo_slides", exp="demo_slides", fold=k, overrides=over))["epochs"] == 2
    manifest = infer.run(cfg)
    assert manifest["oof_images"] == 4 and manifest["test_images"] == 2
    labels = sorted(p.name for p in (Preds.of(cfg).labels).iterdir())
    assert labels == ["test00.png", "test01.png"]
    path = submit.run(cfg)
    table = pd.read_csv(path, keep_default_na=False)
    assert len(table) == 2 * len(cfg.submission.class_ids)
    scored = score.run(cfg)
    assert 0 <= scored["score"] <= 1
