"""An offline inference bundle (Kaggle code competitions: a notebook with no internet, files
uploaded as a dataset): the ensemble's model checkpoints, the resolved config, the post-processing
rules, and `predict_folder`, which turns a folder of test images into the competition's submission
file with the same ensemble, TTA, windows and rules as `make infer-tta` + `make submission`.

Layout of a bundle folder (written by `segpipe export`):
    bundle.json         members (file, weight), TTA, windows, rules, requirements, where it came from
    config.yaml         the resolved config of the experiment
    models/*.pt         model checkpoints: weights, model config, classes (no optimiser, no history)
    wheels/*.whl        segpipe itself (pip install --no-index --no-deps wheels/*.whl)
    predict.py          python predict.py <test images folder> <submission.csv>
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from pipeline.competition.postprocess import decide, load_rules, needs_probs
from pipeline.competition.submission import submission_table
from pipeline.config import Config, SplitConfig, load_config_file
from pipeline.data.sources import MaskDirSource
from pipeline.engine.runtime import Runtime
from pipeline.errors import DataError
from pipeline.inference.ensemble import Ensemble, Member, top_class
from pipeline.inference.outdir import decode_probs, encode_probs
from pipeline.inference.tta import build_tta
from pipeline.io import read_json, write_text

BUNDLE = "bundle.json"
# what the inference path imports, beyond the standard library: Kaggle's image ships most of them
REQUIREMENTS = ("torch", "segmentation-models-pytorch", "albumentations", "numpy", "pandas", "pillow", "ttach",
                "pycocotools", "omegaconf", "pyyaml", "filelock")


def bundle_config(folder: Path, images: Path, device: str = "auto") -> Config:
    """The experiment's config with the test split pointed at `images` (a folder of image files)."""
    cfg = load_config_file(folder / "config.yaml", [f"runtime.device={device}"])
    data = dataclasses.replace(cfg.data, root=str(images), test=SplitConfig(images="."), truth=None)
    return dataclasses.replace(cfg, data=data)


def predict_folder(folder: Path, images: Path, out_csv: Path, device: str = "auto", batch_size: int | None = None) -> Path:
    """Writes the submission for every image in `images` (its own names, by stem or file name as the
    competition's format says) with the bundle's ensemble; returns the CSV path."""
    folder, images = Path(folder), Path(images)
    doc = read_json(folder / BUNDLE)
    cfg = bundle_config(folder, images, device)
    test = MaskDirSource(images, None, cfg.data)
    if not len(test):
        raise DataError(f"{images}: no test images (png, jpg, tif...)")
    members = [Member(m["exp"], m["fold"], folder / m["file"], m["weight"]) for m in doc["members"]]
    rt = Runtime.create(cfg.runtime)
    multilabel = cfg.competition.multilabel
    ensemble = Ensemble.from_config(cfg, members, rt, build_tta(doc["tta"]))
    rules = load_rules({"rules": doc["postprocess"]}, cfg.data.classes) if doc["postprocess"] else {}
    labels, from_probs = {}, multilabel or needs_probs(rules, multilabel)
    for i, probs in ensemble.predict(test, list(range(len(test))), batch_size or cfg.infer.batch_size):
        if from_probs:  # as make infer-tta kept them (float16 or uint8), under the tuned thresholds or biases
            kept = decode_probs(encode_probs(probs.numpy(), doc.get("probs_dtype") or "float16"))
            labels[test.records[i].stem] = decide(kept, rules, multilabel)
        else:
            labels[test.records[i].stem] = top_class(probs)[0]
    df = submission_table(test.records, lambda rec: labels[rec.stem], cfg, rules)
    return write_text(Path(out_csv), df.to_csv(index=False))


PREDICT_PY = '''"""Offline inference with a segpipe bundle (no network needed):

    pip install --no-index --no-deps wheels/*.whl      # segpipe itself; see requirements.txt for the rest
    python predict.py <folder of test images> <submission.csv> [cpu|cuda]
"""
import sys
from pathlib import Path

from pipeline.inference.bundle import predict_folder

if __name__ == "__main__":
    device = sys.argv[3] if len(sys.argv) > 3 else "auto"
    print(predict_folder(Path(__file__).resolve().parent, Path(sys.argv[1]), Path(sys.argv[2]), device))
'''
