"""The public leaderboard beside CV and the final pick, on a fabricated history of submissions: the
public score is recorded with checks, a public-LB outlier is flagged and never picked, the second
pick is diverse."""
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.cli import main
from pipeline.competition.leaderboard import add_public, history, pick, read_leaderboard
from pipeline.errors import DataError
from helpers import REPO

# (file, experiment, CV, CV spread, public): "lucky" has the best public score and a mediocre CV
HISTORY = [("a1.csv", "unet_r34", 0.80, 0.010, 0.79), ("a2.csv", "unet_r34", 0.81, 0.010, 0.80),
           ("b1.csv", "fpn_lite0", 0.805, 0.012, 0.80), ("c1.csv", "deeplab", 0.70, 0.010, 0.71),
           ("lucky.csv", "unet_r18", 0.76, 0.010, 0.86)]


@pytest.fixture
def board(tmp_path):
    subs = tmp_path / "submissions"
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, (5, 16, 16))
    rows = []
    for k, (name, exp, cv, std, public) in enumerate(HISTORY):
        csv = subs / "camvid" / name
        csv.parent.mkdir(parents=True, exist_ok=True)
        csv.write_text("ImageId,ClassId,EncodedPixels\n")
        oof = tmp_path / "preds" / exp / "oof" / "labels"
        oof.mkdir(parents=True, exist_ok=True)
        for i, t in enumerate(truth):  # each experiment's OOF maps: the truth with its own errors
            noise = np.random.default_rng(hash(exp) % 1000).random(t.shape) < {"unet_r34": 0.1, "fpn_lite0": 0.4}.get(exp, 0.2)
            Image.fromarray(np.where(noise, (t + 1) % 4, t).astype(np.uint8)).save(oof / f"img{i}.png")
        csv.with_suffix(".json").write_text(json.dumps({"preds": str(oof.parent.parent), "experiments": [exp]}))
        rows.append({"time": f"2026-01-0{k + 1}", "data": "camvid", "file": str(csv), "experiments": exp, "folds": "0 1 2",
                     "tta": "hflip", "metric": "miou", "cv_score": cv, "cv_fold_std": std, "local_score": np.nan})
    path = subs / "leaderboard.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    for name, *_, public in HISTORY:
        add_public(path, name, public)
    return path


def test_public_scores_are_recorded_with_checks(board):
    b = read_leaderboard(board)
    assert b["public_score"].tolist() == [h[4] for h in HISTORY]
    with pytest.raises(DataError, match="no scored submission 'nope.csv'"):
        add_public(board, "nope.csv", 0.5)
    with pytest.raises(DataError, match="outside the metric's range"):
        add_public(board, "a1.csv", 81.2)
    with pytest.raises(DataError, match="already recorded .*replace=true"):
        add_public(board, "a1.csv", 0.7)
    add_public(board, "a1.csv", 0.7, replace=True)
    assert read_leaderboard(board)["public_score"][0] == 0.7


def test_history_flags_the_public_outlier(board):
    h = history(read_leaderboard(board), "camvid")
    assert h.loc[h["submission"] == "lucky.csv", "disagrees"].item()
    assert not h.loc[h["submission"] == "a2.csv", "disagrees"].item()


def test_pick_by_cv_diverse_second_never_the_outlier(board):
    h = history(read_leaderboard(board), "camvid")
    oof = {f: board.parent.parent / "preds" / e / "oof" / "labels" for f, e in zip(h["file"], h["experiments"])}
    picked = pick(h, 2, oof)
    assert [p["submission"] for p in picked] == ["a2.csv", "b1.csv"]  # best CV, then another experiment
    assert "best CV" in picked[0]["why"] and "OOF agreement" in picked[1]["why"]
    # the best public score with a lower CV is not among the three best by CV (a diverse pick stays within the CV spread)
    assert [p["submission"] for p in pick(h, 3, oof)] == ["a2.csv", "b1.csv", "a1.csv"]


def test_lb_and_pick_from_the_command_line(board, capsys):
    common = ["--configs", str(REPO / "configs"), "data=camvid", f"submissions={board.parent}"]
    assert main(["lb", *common]) == 0
    out = capsys.readouterr().out
    assert "lucky.csv: public 0.8600 vs CV 0.7600: +0.1050 off the usual" in out and "correlation" in out
    assert "a2.csv: public" not in out
    assert (board.parent / "camvid" / "cv_vs_public.png").stat().st_size > 1000
    assert main(["pick", "k=2", *common]) == 0
    out = capsys.readouterr().out
    assert "1. a2.csv" in out and "2. b1.csv" in out
    assert json.loads((board.parent / "camvid" / "pick.json").read_text())["picked"][0]["submission"] == "a2.csv"
    assert main(["lb", "add", "c1.csv", "public=0.72", "replace=true", *common]) == 0
    assert main(["lb", "add", "c1.csv", "public=x", *common]) == 2
