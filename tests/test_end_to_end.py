"""The whole chain on the small demo data through the CLI, checked against independent maths."""
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.cli import main
from helpers import REPO, TINY


@pytest.fixture
def cli(demo_root, tmp_path):
    common = [f"data.root={demo_root}", f"outputs={tmp_path / 'outputs'}",
              f"submissions={tmp_path / 'submissions'}", "runtime.progress=false", *TINY]

    def run(stage, *extra):
        return main([stage, "--configs", str(REPO / "configs"), "name=e2e", *common, *extra])

    return run


def test_full_chain(cli, demo_root, tmp_path, capsys):
    out = tmp_path / "outputs" / "demo"
    assert cli("eda") == 0
    summary = json.loads((out / "eda" / "summary.json").read_text())
    assert summary["num_images"] == 24 and summary["overlap"]["multilabel_pixels"] > 0
    assert (out / "eda" / "report.md").read_text().count("![") >= 5
    assert cli("folds") == 0
    folds = pd.read_csv(out / "folds.csv")
    assert sorted(folds["fold"].unique()) == [0, 1, 2]
    assert cli("train-all") == 0
    assert all((out / "runs" / "e2e" / f"fold{k}" / "best.pt").exists() for k in range(3))
    assert cli("infer", "infer.tta=[hflip, vflip]", "infer.save_probs=true") == 0
    preds = out / "preds" / "e2e"
    manifest = json.loads((preds / "manifest.json").read_text())
    assert manifest["folds"] == [0, 1, 2] and manifest["tta_views"] == 4
    assert len(list((preds / "labels").glob("*.png"))) == 6
    assert len(list((preds / "oof" / "labels").glob("*.png"))) == 24  # every labelled image predicted by its own fold
    probs = np.load(next((preds / "probs").glob("*.npz")))["probs"]
    assert probs.dtype == np.float16 and probs.shape == (6, 120, 152)

    assert cli("submit") == 0
    assert cli("submit") == 0  # a second submission never overwrites the first
    subs = sorted((tmp_path / "submissions" / "demo").glob("*.csv"))
    assert len(subs) == 2
    df = pd.read_csv(subs[0], keep_default_na=False)
    assert len(df) == 6 * 6 and list(df.columns) == ["ImageId", "ClassId", "EncodedPixels"]

    capsys.readouterr()
    assert cli("score", f"sub={subs[0]}") == 0
    printed = capsys.readouterr().out
    board = pd.read_csv(tmp_path / "submissions" / "leaderboard.csv")
    assert len(board) == 1 and board["cv_miou"][0] == pytest.approx(manifest["cv_miou"])

    # independent computation: label PNGs against the hidden truth, plain numpy
    inter, union = np.zeros(6), np.zeros(6)
    for p in sorted((demo_root / "test_truth").glob("*.png")):
        t = np.asarray(Image.open(p))
        pred = np.asarray(Image.open(preds / "labels" / p.name))
        for c in range(6):
            inter[c] += np.sum((pred == c) & (t == c))
            union[c] += np.sum((pred == c) | (t == c))
    present = union > 0
    expected = np.mean(inter[present] / union[present])
    assert board["local_miou"][0] == pytest.approx(expected, abs=1e-12)
    assert f"local miou {expected:.4f}" in printed and board["local_score"][0] == board["local_miou"][0]


def test_stage_errors_are_one_line(cli, capsys):
    assert cli("train") == 2  # no folds yet
    assert "folds.csv: not found; run `make folds" in capsys.readouterr().err
    assert cli("score") == 2
    assert "no submission" in capsys.readouterr().err
