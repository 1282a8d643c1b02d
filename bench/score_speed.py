"""Wall time of scoring a CamVid-sized submission (233 images x 11 classes = 2,563 rows at 360x480)
with the full validator and the competition metric. Synthetic labels; the code path is `make score`'s.

    python bench/score_speed.py
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from common import save
from PIL import Image

from pipeline.config import DataConfig, SubmissionConfig, SplitConfig
from pipeline.score import score_submission
from pipeline.competition.submission import encode_rows


class _Cfg:  # the two fields score_submission reads
    def __init__(self, data, submission):
        self.data, self.submission = data, submission


def main():
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "truth").mkdir()
        sc = SubmissionConfig()
        rows = []
        for k in range(233):
            truth = rng.integers(0, 12, (360, 480)).astype(np.uint8)
            truth = np.repeat(np.repeat(truth[::20, ::20], 20, 0), 20, 1)  # blocky regions, some void (11)
            Image.fromarray(truth).save(tmp / "truth" / f"img{k:03d}.png")
            pred = np.where(rng.random(truth.shape) < 0.1, rng.integers(0, 11, truth.shape), np.minimum(truth, 10))
            rows += encode_rows(f"img{k:03d}", pred, list(range(11)), sc)
        sub = tmp / "sub.csv"
        pd.DataFrame(rows, columns=["ImageId", "ClassId", "EncodedPixels"]).to_csv(sub, index=False)
        data = DataConfig(name="bench", root=str(tmp), format="maskdir", classes=tuple(f"c{i}" for i in range(11)),
                          ignore_index=11, truth=SplitConfig(masks="truth"))
        t = time.perf_counter()
        result = score_submission(sub, _Cfg(data, sc))
        dt = time.perf_counter() - t
    save("score_speed", {"rows": len(rows), "images": 233, "shape": [360, 480], "seconds": round(dt, 3),
                         "miou": round(result["miou"], 4)})


if __name__ == "__main__":
    main()
