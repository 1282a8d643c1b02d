"""Fold/experiment ensembles: the best checkpoint of each member, batched TTA, softmax (multilabel:
sigmoid) probabilities averaged over views and members (weighted), resized back to each image's own
size. Images are decoded once per batch in DataLoader workers and transformed once per distinct input size of the members, so the
model is not left waiting on JPEG decoding."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from pipeline.config import Config, ModelConfig, TrainConfig
from pipeline.config.schema import REFIT
from pipeline.data.dataset import eval_transform, to_tensor
from pipeline.data.sources import Source
from pipeline.engine import checkpoint
from pipeline.engine.runtime import Runtime
from pipeline.errors import ConfigError
from pipeline.io import save_png, write_with
from pipeline.pixels import threshold_bits
from pipeline.inference.outdir import Preds, encode_probs
from pipeline.inference.tta import build_tta, predict_probs
from pipeline.inference.window import assemble, sliding_window
from pipeline.models import build_model, input_norm


@dataclass(frozen=True)
class Member:
    exp: str
    fold: int
    path: Path
    weight: float


def find_members(cfg: Config) -> tuple[dict[int, list[Member]], list[Member]]:
    """(fold -> that fold's model of every requested experiment, for OOF; the test-set members).
    The test set gets the fold models, plus or instead of each experiment's full-data refit
    (`infer.refit: with | only`). `infer.checkpoint` picks best.pt or swa.pt of every run."""
    exps = cfg.infer.experiments or (cfg.exp,)
    weights = cfg.infer.weights or (1.0,) * len(exps)
    if len(weights) != len(exps):
        raise ConfigError(f"infer.weights: {len(weights)} weight(s) for {len(exps)} experiment(s)")
    name = f"{cfg.infer.checkpoint}.pt"
    by_fold: dict[int, list[Member]] = {}
    refits: list[Member] = []
    for exp, w in zip(exps, weights):
        runs = cfg.out_dir / "runs" / exp
        folds = sorted(int(p.name[4:]) for p in runs.glob("fold*") if p.name[4:].isdigit() and (p / name).exists())
        if cfg.infer.folds:
            missing = sorted(set(cfg.infer.folds) - set(folds))
            if missing:
                raise FileNotFoundError(f"{runs}: no {name} for fold(s) {missing}; train them first")
            folds = list(cfg.infer.folds)
        if not folds and cfg.infer.refit != "only":
            raise FileNotFoundError(f"{runs}: no trained fold ({name}); run `make train` first")
        for k in folds:
            by_fold.setdefault(k, []).append(Member(exp, k, runs / f"fold{k}" / name, w))
        if cfg.infer.refit != "off":
            path = cfg.run_dir(fold=REFIT, exp=exp) / name
            if not path.exists():
                raise FileNotFoundError(f"{path}: no full-data refit of {exp}; run `make train FOLD=all` first")
            refits.append(Member(exp, REFIT, path, w))
    folds_members = [m for ms in by_fold.values() for m in ms]
    return by_fold, (refits if cfg.infer.refit == "only" else folds_members + refits)


def load_model(path: Path, device: torch.device):
    """The network built bare (no pretrained encoder file: the checkpoint holds every weight), then
    the checkpoint's weights."""
    state = checkpoint.load_weights(path)
    model = build_model(ModelConfig(**state["model_cfg"]), len(state["classes"]), pretrained=False)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), state


class _Images(Dataset):
    """(one tensor per input size, or the raw uint8 image for windows; source index[, label map])."""

    def __init__(self, source: Source, indices, transforms: dict | None, with_mask: bool):
        self.source, self.indices, self.transforms, self.with_mask = source, list(indices), transforms, with_mask

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int):
        i = self.indices[k]
        image = self.source.image(i)
        if self.transforms is not None:
            image = {key: to_tensor(t(image=image)["image"]) for key, t in self.transforms.items()}
        if not self.with_mask:
            return image, i
        mask = self.source.mask(i)
        return image, i, torch.from_numpy(mask if mask.flags.writeable else mask.copy())  # PIL arrays are read-only


def _one_image(items):
    """Collates one raw image for windows: the uint8 array as it is (no tensor copy of a slide)."""
    (item,) = items
    return (item[0], torch.tensor([item[1]]), *((item[2][None],) if len(item) > 2 else ()))


class Ensemble:
    """`window` (h, w): sliding-window inference with `overlap` (see window.py); the members must
    then take images at their own scale (no train.resize)."""

    def __init__(self, members: list[Member], rt: Runtime, tta, window: tuple[int, int] | None = None,
                 overlap: float = 0.25, multilabel: bool = False):
        self.rt, self.tta, self.window, self.overlap, self.models = rt, tta, window, overlap, []
        self.multilabel = multilabel
        for m in members:
            model, state = load_model(m.path, rt.device)
            model = rt.prepare(model)
            resize = tuple(state["resize"]) if state.get("resize") else None
            if window is not None and resize is not None:
                raise ConfigError(f"infer.window: {m.path} was trained on images resized to {list(resize)}; "
                                  "windows are cut at the image's own scale")
            mc = state["model_cfg"]
            norm = input_norm(mc["encoder_name"], mc["arch"])
            self.models.append((model, f"{resize}/{norm}", m.weight, eval_transform(TrainConfig(resize=resize), norm)))
        self.transforms = {key: t for _, key, _, t in self.models}
        self.total_weight = sum(w for _, _, w, _ in self.models)
        self.num_classes = len(state["classes"]) if members else 0

    @classmethod
    def from_config(cls, cfg: Config, members: list[Member], rt: Runtime, tta=None) -> "Ensemble":
        """The one way stages build an ensemble: windows, overlap and the task from the config, TTA
        from `infer.tta` unless given."""
        return cls(members, rt, build_tta(cfg.infer.tta) if tta is None else tta, cfg.infer.window, cfg.infer.overlap,
                   cfg.competition.multilabel)

    def _probs(self, views: dict, size: tuple[int, int]) -> torch.Tensor:
        """(B, C, H, W) weighted mean over members of their TTA-averaged probabilities, on the device."""
        acc = None
        for model, key, weight, _ in self.models:
            p = predict_probs(model, self.rt.to_device(views[key], image=True), self.tta, self.rt.dtype, self.multilabel)
            if p.shape[-2:] != size:
                p = F.interpolate(p, size=size, mode="bilinear", align_corners=False)
            acc = p * weight if acc is None else acc + p * weight
        return acc / self.total_weight

    def _windows(self, crops: list[np.ndarray]) -> torch.Tensor:
        (key, t), = self.transforms.items()
        x = torch.stack([to_tensor(t(image=c)["image"]) for c in crops])
        return self._probs({key: x}, tuple(x.shape[-2:]))

    def predict(self, source: Source, indices: list[int], batch_size: int, num_workers: int = 0,
                with_mask: bool = False):
        """Yields (source index, probabilities C x H x W at the original size on the CPU[, label map]),
        batch by batch, in the order of `indices`. With windows: one image at a time, float16
        probabilities, `batch_size` windows per forward pass."""
        sizes = {(source.records[i].height, source.records[i].width) for i in indices}
        windowed = self.window is not None
        loader = DataLoader(_Images(source, indices, None if windowed else self.transforms, with_mask),
                            batch_size=batch_size if len(sizes) == 1 and not windowed else 1,
                            num_workers=num_workers, pin_memory=self.rt.device.type == "cuda" and not windowed,
                            collate_fn=_one_image if windowed else None)
        for batch in loader:
            idx = batch[1].tolist()
            if windowed:
                image = batch[0]
                bands = sliding_window(image, self._windows, self.num_classes, self.window, self.overlap, batch_size)
                probs = [assemble(bands, self.num_classes, image.shape[:2])]
            else:
                h, w = source.records[idx[0]].height, source.records[idx[0]].width
                probs = self._probs(batch[0], (h, w)).cpu()
            if with_mask:
                yield from zip(idx, probs, batch[2])
            else:
                yield from zip(idx, probs)


def top_class(probs: torch.Tensor, with_conf: bool = False, rows: int = 256):
    """(argmax label map uint8, its probability float32 when asked, else None), a band of rows at a
    time: argmax over a whole large image would allocate an int64 map (8 bytes per pixel)."""
    C, H, W = probs.shape
    label = np.empty((H, W), np.uint8)
    conf = np.empty((H, W), np.float32) if with_conf else None
    for y in range(0, H, rows):
        c, k = probs[:, y:y + rows].float().max(0)
        label[y:y + rows] = k.numpy()
        if with_conf:
            conf[y:y + rows] = c.numpy()
    return label, conf


def save_prediction(preds: Preds, stem: str, probs: torch.Tensor, save_probs: bool, multilabel: bool = False,
                    dtype: str = "float16") -> np.ndarray:
    """labels/<stem>.png (argmax; multilabel: the map of class bits above 0.5, `make tune` may pick
    other thresholds, which `make submission` applies to the saved probabilities) and, when asked,
    probs/<stem>.npz (`dtype`: float16 or uint8, stored: zlib took ~0.14 s per CamVid frame to save 15%);
    returns the label map."""
    label = threshold_bits(probs.numpy(), [0.5] * len(probs)) if multilabel else top_class(probs)[0]
    save_png(preds.label(stem), label)
    if save_probs:
        write_with(preds.probs(stem),
                   lambda f: np.savez(f, probs=encode_probs(probs.numpy(), dtype)))
    return label
