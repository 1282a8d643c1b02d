"""Per-pixel agreement of two CamVid submissions (every image, every class mask)."""
import sys
import numpy as np
from pipeline.config import load_config
from pipeline.competition.submission import read_submission, validate, prediction_masks, class_ids
from pipeline.data.sources import open_split
cfg = load_config("camvid", exp="camvid_lite0_e24ft_seed2")
sc = cfg.submission
test = open_split(cfg.data, "test", labelled=False)
sizes = {r.stem: (r.height, r.width) for r in test.records}
classes = class_ids(cfg)
a, b = (validate(read_submission(p, sc), sizes, classes, sc, class_names=cfg.data.classes) for p in sys.argv[1:3])
same = total = 0
for img, shape in sizes.items():
    ma, mb = prediction_masks(a, img, classes, shape, sc), prediction_masks(b, img, classes, shape, sc)
    la, lb = ma.argmax(0) + 100 * (ma.sum(0) == 0), mb.argmax(0) + 100 * (mb.sum(0) == 0)
    same += int((la == lb).sum()); total += la.size
print(f"pixels with the same label: {same / total:.5f} of {total}")
