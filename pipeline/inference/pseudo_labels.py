"""Pseudo-labels: the current ensemble (the test-set members of `make infer-tta`) labels an
unlabelled split; pixels below `pseudo.threshold` probability are left as the ignore index. A next
round trains with `train.pseudo=<this exp>`: the images join the training folds, never validation.
Used by the `make pseudo` stage and by `train-all` before a pseudo-labelled refit (`train.refit_pseudo`)."""
from __future__ import annotations


import numpy as np
from tqdm import tqdm

from pipeline.config import Config
from pipeline.data.sources import open_split
from pipeline.engine.runtime import DistInfo, Runtime, get_logger
from pipeline.inference.ensemble import Ensemble, find_members, top_class
from pipeline.inference.outdir import PredictionFolder
from pipeline.inference.reuse import ensemble_key, save_probs
from pipeline.inference.space import pseudo_expected
from pipeline.errors import ConfigError, DataError
from pipeline.io import read_json, save_png
from pipeline.pixels import class_counts

log = get_logger(__name__)


def pseudo_round(cfg: Config, members) -> int:
    """1 + the highest round of pseudo-labels any member was trained with."""
    rounds = [0]
    for m in members:
        used = m.path.parent / "pseudo.json"
        if used.exists():
            r = read_json(used).get("round")
            if isinstance(r, bool) or not isinstance(r, int):
                raise DataError(f"{used}: field 'round': expected an integer, got {r!r}")
            rounds.append(r)
    return max(rounds) + 1


def pseudo_label(cfg: Config, keep_probs: bool = False) -> dict:
    """Writes cfg.pseudo_dir() (masks and manifest, atomically); returns the manifest. `keep_probs`:
    also the ensemble's probabilities, for `infer` to reuse (inference/reuse.py)."""
    if cfg.competition.multilabel:
        raise ConfigError("make pseudo: pseudo-labels are built for the single-label task (one class per pixel)")
    rt = Runtime.create(cfg.runtime, DistInfo())
    _, members = find_members(cfg)
    images = open_split(cfg.data, cfg.pseudo.split, labelled=False)
    C, ign, thr = cfg.data.num_classes, cfg.data.ignore_index, cfg.pseudo.threshold
    kept, total, per_class = 0, 0, np.zeros(C, np.int64)
    expected = pseudo_expected(cfg, images.records, keep_probs)
    folder = PredictionFolder(cfg.pseudo_dir(), listed="masks", expected=expected)
    with folder as out:
        preds = Ensemble.from_config(cfg, members, rt).predict(
            images, list(range(len(images))), cfg.infer.batch_size, cfg.infer.num_workers)
        for i, p in tqdm(preds, total=len(images), desc="pseudo", disable=None if cfg.runtime.progress else True, leave=False):
            label, conf = top_class(p, with_conf=True)
            sure = conf >= thr
            label[~sure] = ign
            save_png(out / "masks" / f"{images.records[i].stem}.png", label)
            if keep_probs:
                save_probs(out, images.records[i].stem, p, cfg.infer.probs_dtype)
            kept += int(sure.sum())
            total += sure.size
            per_class += class_counts(label[sure], C)
        manifest = {"round": pseudo_round(cfg, members), "split": cfg.pseudo.split, "images": len(images),
                    "threshold": thr, "models": [str(m.path) for m in members], "tta": list(cfg.infer.tta),
                    "kept_pixel_share": kept / max(total, 1),
                    "kept_pixels": {c: int(n) for c, n in zip(cfg.data.classes, per_class)}}
        if keep_probs:
            manifest["probs_key"] = ensemble_key(cfg, members, rt, [r.stem for r in images.records])
        final = folder.commit(manifest)
    log.info("pseudo: round %d, %d %s images labelled by %d model(s), %.1f%% of pixels above %.2f -> %s",
             manifest["round"], len(images), cfg.pseudo.split, len(members), 100 * manifest["kept_pixel_share"], thr, final)
    return manifest
