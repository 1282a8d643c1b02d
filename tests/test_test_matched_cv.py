"""Folds that mirror how the test set relates to the training data (whole held-out drives, and a
later block of a drive whose earlier frames train), and the CV estimate that weights the two kinds
of out-of-fold images as the test set holds them."""
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline import folds
from pipeline.competition.metrics import build_metric
from reference_metrics import confusion_matrix
from pipeline.data.groups import TRAIN_ONLY, explicit_folds, split_tails, validation_kind
from pipeline.data.pool import fold_indices
from pipeline.errors import ConfigError, DataError
from pipeline.inference.cv_estimate import blocks_of, kind_weights, kinds_of_test, matched_estimate
from pipeline.inference.oof import with_offset


def test_with_offset_moves_the_score_and_interval_and_replaces_an_earlier_offset():
    raw = {"cv_score": 0.50, "cv_interval": [0.45, 0.55], "cv_score_kind": "test_matched", "cv_pooled": 0.52}
    a = with_offset(raw, 0.08)
    assert a["cv_score"] == pytest.approx(0.58) and a["cv_interval"] == pytest.approx([0.53, 0.63])
    assert a["cv_before_offset"] == 0.50 and a["cv_offset"] == 0.08 and a["cv_score_kind"] == "test_matched+offset"
    assert a["cv_pooled"] == 0.52 and raw["cv_score"] == 0.50  # the input is left as it was
    b = with_offset(a, 0.09)  # the recipe's gap re-simulated after inference: replaced, not added
    assert b["cv_score"] == pytest.approx(0.59) and b["cv_interval"] == pytest.approx([0.54, 0.64])
    assert b["cv_before_offset"] == 0.50 and b["cv_score_kind"] == "test_matched+offset"
    c = with_offset(b, 0.0)
    assert c["cv_score"] == pytest.approx(0.50) and c["cv_interval"] == pytest.approx([0.45, 0.55])
    assert "cv_before_offset" not in c and c["cv_offset"] == 0.0 and c["cv_score_kind"] == "test_matched"
    assert with_offset({"files": ["a"]}, 0.08) == {"files": ["a"]}  # no OOF images, no CV to move


def test_offset_sd_widens_the_interval_into_the_leaderboard_range():
    raw = {"cv_score": 0.50, "cv_interval": [0.45, 0.55], "cv_score_kind": "test_matched"}
    a = with_offset(raw, 0.08, 0.026)
    z = 1.6448536  # the normal's 95th percentile
    boot_sd = 0.10 / (2 * z)  # the bootstrap sd behind a 90% interval 0.10 wide
    half = z * (boot_sd ** 2 + 0.026 ** 2) ** 0.5
    assert a["cv_leaderboard_interval"] == pytest.approx([0.58 - half, 0.58 + half], abs=1e-6)
    assert a["cv_interval"] == pytest.approx([0.53, 0.63]) and a["cv_offset_sd"] == 0.026
    wider = with_offset(raw, 0.08, 0.05)["cv_leaderboard_interval"]
    assert wider[0] < a["cv_leaderboard_interval"][0] and wider[1] > a["cv_leaderboard_interval"][1]
    # without an sd the range is the bootstrap's, and none is stated: a stale one is dropped
    b = with_offset(a, 0.09)
    assert "cv_leaderboard_interval" not in b and "cv_offset_sd" not in b and b["cv_score"] == pytest.approx(0.59)
    assert "cv_leaderboard_interval" not in with_offset({"cv_score": 0.5, "cv_interval": None}, 0.08, 0.026)


def test_split_tails_takes_the_latest_frames_by_number():
    stems = ["A_f10", "A_f2", "A_f30", "A_f4", "B_1"]  # frame order 2, 4, 10, 30: not the string order
    groups = ["A", "A", "A", "A", "B"]
    out = split_tails(stems, groups, r"_f?(\d+)$", {"A": 0.5})
    assert out == ["A@tail", "A", "A@tail", "A", "B"]
    with pytest.raises(DataError, match="'C' is not a group"):
        split_tails(stems, groups, r"_f?(\d+)$", {"C": 0.5})
    with pytest.raises(DataError, match="no frame number in image 'A_f10'"):
        split_tails(stems, groups, r"_x(\d+)$", {"A": 0.5})


def test_explicit_folds_and_kinds():
    groups = ["A", "A@tail", "B", "C", "A"]
    f = explicit_folds(groups, {"B": 0, "C": 1, "A@tail": 2})
    assert f.tolist() == [TRAIN_ONLY, 2, 0, 1, TRAIN_ONLY]
    by_fold = {0: ["B"], 1: ["C"], 2: ["A@tail"], TRAIN_ONLY: ["A"]}
    assert validation_kind("A@tail", 2, by_fold) == "later_frames"  # A's head trains in fold 2
    assert validation_kind("B", 0, by_fold) == "new_group"
    with pytest.raises(DataError, match="'Z'"):
        explicit_folds(groups, {"Z": 0})


def test_pool_and_train_all_skip_train_only_images():
    table = pd.DataFrame({"index": range(5), "fold": [TRAIN_ONLY, 0, 1, 1, TRAIN_ONLY]})
    tr, va = fold_indices(table, 1)
    assert sorted(tr) == [0, 1, 4] and va == [2, 3]
    with pytest.raises(DataError, match=r"folds: \[0, 1\]"):
        fold_indices(table, 5)


def _states(preds_truths, C=3):
    out = []
    for p, t in preds_truths:
        m = build_metric("miou", C, 255)
        m.update(p, t)
        out.append(m.state())
    return out


def test_test_matched_score_is_the_weighted_confusion_of_the_kinds():
    rng = np.random.default_rng(0)
    pairs, kinds, stems, groups = [], [], [], []
    for i in range(30):
        t = rng.integers(0, 3, (6, 6))
        p = t.copy()
        p[rng.random((6, 6)) < (0.6 if i < 10 else 0.1)] = 0  # new drives are harder
        pairs.append((p, t))
        kinds.append("new_group" if i < 10 else "later_frames")
        stems.append(f"{'N' if i < 10 else 'L'}_{i:03d}")
        groups.append(stems[-1][0])
    test = ["new_group"] * 30 + ["later_frames"] * 10  # test: 75% new drive; OOF: 33%
    est = matched_estimate(_states(pairs), kinds, blocks_of(stems, groups), test,
                          lambda: build_metric("miou", 3, 255), ["a", "b", "c"], n_boot=200)
    # independent: each kind's confusion scaled to its share of the test set
    cm = {k: sum(confusion_matrix(t, p, 3, 255) for (p, t), kk in zip(pairs, kinds) if kk == k) for k in set(kinds)}
    mix = 0.75 * cm["new_group"] / 10 + 0.25 * cm["later_frames"] / 20
    inter = np.diag(mix)
    expected = float(np.mean(inter / (mix.sum(0) + mix.sum(1) - inter)))
    assert est["score"] == pytest.approx(expected, rel=1e-9)
    pooled = build_metric("miou", 3, 255)
    for p, t in pairs:
        pooled.update(p, t)
    assert est["score"] < pooled.compute()["score"]  # the harder kind weighs more on this test set
    assert est["low"] <= est["score"] <= est["high"] and est["high"] - est["low"] > 0
    assert est["kinds"]["new_group"] == {"oof_images": 10, "test_images": 30, "test_share": 0.75}


def test_no_estimate_when_the_folds_lack_a_kind_of_the_test_set():
    w, why = kind_weights(["new_group"] * 3, ["new_group", "later_frames"])
    assert w is None and "later_frames" in why
    assert kinds_of_test(["A", "Z"], ["A@tail", "B"]) == ["later_frames", "new_group"]


def test_fold_scheme_config_is_checked(make_cfg):
    with pytest.raises(ConfigError, match="quote it"):
        make_cfg("folds.group_regex='^(.+)_'", "folds.order_regex='_(\\d+)$'", "folds.tail={1600: 0.5}")
    with pytest.raises(ConfigError, match="order_regex"):
        make_cfg("folds.group_regex='^(.+)_'", "folds.tail={A: 0.5}")
    with pytest.raises(ConfigError, match="0 < share < 1"):
        make_cfg("folds.group_regex='^(.+)_'", "folds.order_regex='_(\\d+)$'", "folds.tail={A: 1.5}")
    with pytest.raises(ConfigError, match="every fold"):
        make_cfg("folds.group_regex='^(.+)_'", "folds.k=3", "folds.assign={A: 0, B: 1}")


def _camvid_like(root, rng):
    """CamVid's layout at 32x48: three labelled drives (train + val), a test set of a new drive and
    frames that continue a training drive."""
    splits = {"train": [f"0001TP_{k:06d}" for k in range(0, 160, 10)] + [f"0006R0_f{k:05d}" for k in range(8)]
              + [f"0016E5_{k:05d}" for k in range(0, 100, 10)],
              "val": [f"0016E5_{k:05d}" for k in range(3, 60, 10)],
              "test": [f"0001TP_{k:06d}" for k in range(160, 200, 10)] + [f"Seq05VD_f{k:05d}" for k in range(8)]}
    images = []
    for split, stems in splits.items():
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir()
        for k, s in enumerate(stems):
            mask = np.zeros((32, 48), np.uint8)
            mask[16:] = 3
            mask[:, :4] = rng.integers(0, 11)
            mask[5:9, 20:24] = 11  # void
            img = (np.stack([mask * 20, 255 - mask * 20, (mask * 7) % 255], -1)).astype(np.uint8)
            Image.fromarray(img).save(root / split / "images" / f"{s}.jpg", quality=95)
            if split != "test":
                Image.fromarray(mask).save(root / split / "masks" / f"{s}.png")
            else:
                images.append({"id": k + 1, "file_name": f"test/images/{s}.jpg", "height": 32, "width": 48})
    (root / "test.json").write_text(json.dumps({"images": images, "annotations": [], "categories": []}))
    return root


@pytest.mark.slow
def test_camvid_config_end_to_end_gives_a_test_matched_cv(make_cfg, tmp_path):
    """configs/data/camvid.yaml's fold scheme on CamVid-shaped data: folds, two quick fold models,
    inference with the OOF estimate weighted as the test set's kinds, carried to the manifest."""
    from pipeline import infer, submit, train

    root = _camvid_like(tmp_path / "camvid", np.random.default_rng(0))
    args = [f"data.root={root}", "runtime.device=cpu", "model.arch=deconvnet",
            "model.params={width: 0.125, fc_channels: 16}", "train.epochs=1", "train.batch_size=4",
            "train.warmup_epochs=0", "infer.batch_size=4"]
    cfg = make_cfg(*args, data="camvid")
    df = folds.run(cfg)
    assert (df.loc[df.group == "0016E5", "fold"] == TRAIN_ONLY).all() and len(df[df.group == "0016E5@tail"]) == 8
    assert set(df.loc[df.fold == 2, "kind"]) == {"later_frames"} and set(df.loc[df.fold == 0, "kind"]) == {"new_group"}
    for k in range(3):
        train.run(make_cfg(*args, data="camvid", fold=k))
    manifest = infer.run(cfg)
    est = manifest["cv_test_matched"]
    assert manifest["cv_score_kind"] == "test_matched" and manifest["cv_score"] == est["score"]
    assert est["kinds"]["new_group"]["test_images"] == 8 and est["kinds"]["later_frames"]["test_images"] == 4
    assert est["kinds"]["new_group"]["oof_images"] == 16 + 8 and est["kinds"]["later_frames"]["oof_images"] == 8
    assert manifest["cv_interval"][0] <= manifest["cv_score"] <= manifest["cv_interval"][1]
    assert 0 <= manifest["cv_pooled"] <= 1
    assert manifest["cv_offset"] == 0.0 and "cv_before_offset" not in manifest

    # the simulated gap between the fold models' CV and the submitted ensemble, added where configured
    shifted_cfg = make_cfg(*args, "infer.cv_offset=0.05", data="camvid")
    shifted = infer.run(shifted_cfg)
    assert shifted["cv_before_offset"] == pytest.approx(manifest["cv_score"])
    assert shifted["cv_score"] == pytest.approx(manifest["cv_score"] + 0.05)
    assert shifted["cv_interval"] == pytest.approx([v + 0.05 for v in manifest["cv_interval"]])
    assert shifted["cv_score_kind"] == "test_matched+offset" and shifted["cv_pooled"] == manifest["cv_pooled"]
    meta = json.loads(submit.run(shifted_cfg).with_suffix(".json").read_text())
    assert meta["cv_score"] == pytest.approx(shifted["cv_score"]) and meta["cv_offset"] == 0.05
    # the offset re-simulated after inference ran: the submission states the one configured now
    meta = json.loads(submit.run(make_cfg(*args, "infer.cv_offset=0.08", data="camvid")).with_suffix(".json").read_text())
    assert meta["cv_score"] == pytest.approx(manifest["cv_score"] + 0.08) and meta["cv_offset"] == 0.08
    assert meta["cv_before_offset"] == pytest.approx(manifest["cv_score"])
    meta = json.loads(submit.run(make_cfg(*args, "infer.cv_offset=0.08", "infer.cv_offset_sd=0.03", data="camvid"))
                      .with_suffix(".json").read_text())
    low, high = meta["cv_leaderboard_interval"]
    assert low < meta["cv_interval"][0] and high > meta["cv_interval"][1] and meta["cv_offset_sd"] == 0.03
    assert (low + high) / 2 == pytest.approx(meta["cv_score"])
