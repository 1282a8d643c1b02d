"""The second demo competition: deterministic, mostly empty images, and the whole chain in its
shape (mask folders, Dice per image and class, Image_Label rows at half size, tuned post-processing)."""
import json

import numpy as np
import pandas as pd
from PIL import Image

from pipeline.cli import main
from pipeline.data.demo_defects import generate
from helpers import REPO, TINY


def test_generator_is_deterministic_with_many_empty_images(tmp_path):
    a, b = generate(tmp_path / "a", seed=3, n_train=20, n_test=4), generate(tmp_path / "b", seed=3, n_train=20, n_test=4)
    masks = sorted((a / "train" / "masks").glob("*.png"))
    assert len(masks) == 20 and len(list((a / "test" / "truth").glob("*.png"))) == 4
    for p in masks:
        assert (p.read_bytes() == (b / "train" / "masks" / p.name).read_bytes())
    labels = [np.asarray(Image.open(p)) for p in masks]
    empty = sum(int(m.max() == 0) for m in labels)
    assert 3 <= empty <= 15 and set(np.unique(np.concatenate([m.ravel() for m in labels]))) <= {0, 1, 2, 3, 4}


def test_defects_chain_end_to_end(tmp_path, capsys):
    root = generate(tmp_path / "d", seed=1, n_train=18, n_test=4)
    args = ["--configs", str(REPO / "configs"), "data=demo_defects", f"data.root={root}", f"outputs={tmp_path / 'o'}",
            f"submissions={tmp_path / 's'}", "runtime.progress=false", *TINY, "train.epochs=1", "train.max_steps_per_epoch=1",
            "infer.num_workers=0", "infer.tta=[]", "name=dd"]
    for stage in ("check", "folds", "train-all", "infer", "tune", "submit", "score"):
        assert main([stage, *args]) == 0, capsys.readouterr().err
    sub = next((tmp_path / "s" / "demo_defects").glob("*.csv"))
    df = pd.read_csv(sub, keep_default_na=False)
    assert list(df.columns) == ["Image_Label", "EncodedPixels"] and len(df) == 4 * 4
    assert df["Image_Label"].iloc[0] == "test0000.png_scratch"
    board = pd.read_csv(tmp_path / "s" / "leaderboard.csv")
    assert board["metric"][0] == "dice_image_class" and 0 <= board["local_score"][0] <= 1
    tuned = json.loads((tmp_path / "o" / "demo_defects" / "preds" / "dd" / "postprocess.json").read_text())
    assert tuned["metric"] == "dice_image_class" and tuned["oof_after"] >= tuned["oof_before"]
