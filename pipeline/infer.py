"""Inference: best checkpoint of each fold (of one or more experiments), batched TTA, softmax
averaging over views, folds and experiments, label maps at each image's original size. Streams
batch by batch. Out-of-fold: each fold predicts its own validation images, giving the CV mIoU."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from pipeline import checkpoint
from pipeline.config import Config, ModelConfig, TrainConfig
from pipeline.data.coco import DataError
from pipeline.data.dataset import SegDataset, eval_transform
from pipeline.data.sources import Source, open_split
from pipeline.io import save_png, write_json, write_with
from pipeline.metrics import confusion_matrix, iou_from_confusion, mean_iou
from pipeline.models import build_model
from pipeline.train import amp_dtype, labelled_pool, resolve_device, DistInfo
from pipeline.tta import build_tta, predict_probs


def find_checkpoints(cfg: Config) -> dict[int, list[tuple[str, Path, float]]]:
    """fold -> [(experiment, best.pt, weight)] for every requested experiment."""
    exps = cfg.infer.experiments or (cfg.exp,)
    weights = cfg.infer.weights or (1.0,) * len(exps)
    if len(weights) != len(exps):
        raise ValueError(f"infer.weights: {len(weights)} weight(s) for {len(exps)} experiment(s)")
    found: dict[int, list] = {}
    for exp, w in zip(exps, weights):
        runs = cfg.out_dir / "runs" / exp
        folds = sorted(int(p.name[4:]) for p in runs.glob("fold*") if (p / "best.pt").exists())
        if cfg.infer.folds:
            missing = sorted(set(cfg.infer.folds) - set(folds))
            if missing:
                raise FileNotFoundError(f"{runs}: no best.pt for fold(s) {missing}; train them first")
            folds = list(cfg.infer.folds)
        if not folds:
            raise FileNotFoundError(f"{runs}: no trained fold (best.pt); run `make train` first")
        for k in folds:
            found.setdefault(k, []).append((exp, runs / f"fold{k}" / "best.pt", w))
    return found


def load_model(path: Path, device: torch.device):
    state = checkpoint.load_weights(path)
    model = build_model(ModelConfig(**state["model_cfg"]), len(state["classes"]))
    model.load_state_dict(state["model"])
    return model.to(device).eval(), state


class Ensemble:
    def __init__(self, members: list[tuple[str, Path, float]], device, tta, dtype):
        self.members = []
        for exp, path, w in members:
            model, state = load_model(path, device)
            tc = TrainConfig(resize=tuple(state["resize"]) if state.get("resize") else None)
            self.members.append((model, eval_transform(tc), w))
        self.device, self.tta, self.dtype = device, tta, dtype
        self.total_weight = sum(w for _, _, w in self.members)

    def probs(self, source: Source, indices: list[int], batch_size: int):
        """Yields (source index, probabilities C x H x W at the original size), batch by batch."""
        sizes = {(source.records[i].height, source.records[i].width) for i in indices}
        bs = batch_size if len(sizes) == 1 else 1
        for start in range(0, len(indices), bs):
            chunk = indices[start:start + bs]
            acc = None
            for model, transform, w in self.members:
                x = torch.stack([SegDataset(source, [i], transform, with_mask=False)[0][0] for i in chunk])
                p = predict_probs(model, x.to(self.device), self.tta, self.dtype)
                h, w_ = source.records[chunk[0]].height, source.records[chunk[0]].width
                if p.shape[-2:] != (h, w_):
                    p = F.interpolate(p, size=(h, w_), mode="bilinear", align_corners=False)
                acc = p * w if acc is None else acc + p * w
            acc = (acc / self.total_weight).cpu()
            for i, p in zip(chunk, acc):
                yield i, p


def _write(out: Path, stem: str, probs: torch.Tensor, save_probs: bool) -> np.ndarray:
    label = probs.argmax(0).numpy().astype(np.uint8)
    save_png(out / "labels" / f"{stem}.png", label)
    if save_probs:
        write_with(out / "probs" / f"{stem}.npz",
                   lambda f: np.savez_compressed(f, probs=probs.numpy().astype(np.float16)))
    return label


def run(cfg: Config) -> dict:
    device = resolve_device(cfg.train.device, DistInfo())
    dtype = amp_dtype(cfg.train.amp, device)
    tta = build_tta(cfg.infer.tta)
    by_fold = find_checkpoints(cfg)
    out = cfg.preds_dir()
    test = open_split(cfg.data, "test", labelled=False)
    members = [m for ms in by_fold.values() for m in ms]
    ens = Ensemble(members, device, tta, dtype)
    for i, p in tqdm(ens.probs(test, list(range(len(test))), cfg.infer.batch_size), total=len(test),
                     desc="infer", disable=None if cfg.train.progress else True, leave=False):
        _write(out, test.records[i].stem, p, cfg.infer.save_probs)
    del ens
    manifest = {"experiments": list(cfg.infer.experiments or (cfg.exp,)), "folds": sorted(by_fold),
                "tta": list(cfg.infer.tta), "tta_views": len(tta), "weights": list(cfg.infer.weights),
                "test_images": len(test), "cv_miou": None}
    if cfg.infer.oof:
        manifest.update(_oof(cfg, by_fold, device, tta, dtype, out))
    write_json(out / "manifest.json", manifest)
    cv = f", CV mIoU {manifest['cv_miou']:.4f} (OOF)" if manifest["cv_miou"] is not None else ""
    print(f"infer: {len(test)} test images x {len(members)} model(s) x {len(tta)} TTA view(s) -> {out}{cv}")
    return manifest


def _oof(cfg: Config, by_fold, device, tta, dtype, out: Path) -> dict:
    pool, table = labelled_pool(cfg)
    C, ign = cfg.data.num_classes, cfg.data.ignore_index
    cm = np.zeros((C, C), np.int64)
    n = 0
    for fold, members in sorted(by_fold.items()):
        idx = table.loc[table["fold"] == fold, "index"].tolist()
        ens = Ensemble(members, device, tta, dtype)
        for i, p in ens.probs(pool, idx, cfg.infer.batch_size):
            label = _write(out / "oof", pool.records[i].stem, p, False)
            cm += confusion_matrix(pool.mask(i), label, C, ign)
            n += 1
    if n == 0:
        raise DataError("OOF: no validation images in the trained folds")
    iou = iou_from_confusion(cm)
    result = {"cv_miou": mean_iou(iou), "oof_images": n,
              "cv_iou": {c: (None if np.isnan(v) else float(v)) for c, v in zip(cfg.data.classes, iou)}}
    write_json(out / "oof" / "score.json", result)
    return result
