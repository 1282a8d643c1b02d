"""Training of one fold: resumable after any kill, mIoU-validated every epoch, DDP under torchrun."""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as tdist
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from pipeline import checkpoint
from pipeline.config import Config, config_to_yaml
from pipeline.data.coco import DataError
from pipeline.data.dataset import EpochSampler, SegDataset, eval_transform, train_transform
from pipeline.data.sources import Source, open_split
from pipeline.io import save_figure, write_text
from pipeline.losses import build_loss
from pipeline.metrics import confusion_matrix_torch, iou_from_confusion, mean_iou
from pipeline.models import build_model
from pipeline.optim import build_optimizer, build_scheduler

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    pass


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


class ConcatSource(Source):
    """The labelled pool of the folds: the train split, plus a holdout split when folds use one."""

    def __init__(self, sources: list[Source]):
        self.parts = [(s, i) for s in sources for i in range(len(s))]
        self.records = [s.records[i] for s, i in self.parts]
        self.num_classes, self.ignore_index = sources[0].num_classes, sources[0].ignore_index
        self.labelled, self.skipped = True, []

    def image(self, i):
        s, j = self.parts[i]
        return s.image(j)

    def mask(self, i):
        s, j = self.parts[i]
        return s.mask(j)


def labelled_pool(cfg: Config) -> tuple[Source, pd.DataFrame]:
    """The images named in folds.csv, in its order, and the table itself."""
    if not cfg.folds_csv.exists():
        raise DataError(f"{cfg.folds_csv}: not found; run `make folds DATA={cfg.data.name}` first")
    folds = pd.read_csv(cfg.folds_csv, dtype={"image_id": str})
    cache = cfg.out_dir / "cache"
    sources, rows = [], []
    for split in folds["split"].unique():
        src = open_split(cfg.data, split, cache_dir=cache)
        pos = {r.stem: k for k, r in enumerate(src.records)}
        part = folds[folds["split"] == split]
        missing = [s for s in part["image_id"] if s not in pos]
        if missing:
            raise DataError(f"{cfg.folds_csv}: image {missing[0]!r} (split {split}) is not in the data; "
                            "the folds are stale: re-run `make folds`")
        sources.append(src)
        rows.append(part.assign(_src=len(sources) - 1, _pos=part["image_id"].map(pos)))
    pool = ConcatSource(sources)
    offsets = np.cumsum([0] + [len(s) for s in sources])
    table = pd.concat(rows, ignore_index=True)
    table["index"] = offsets[table["_src"].to_numpy()] + table["_pos"].to_numpy()
    return pool, table.drop(columns=["_src", "_pos"])


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resolve_device(name: str, dist: DistInfo) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise TrainingError("train.device=cuda but no CUDA device is available")
        return torch.device("cuda", dist.local_rank)
    return torch.device("cpu")


def amp_dtype(mode: str, device: torch.device):
    if device.type != "cuda" or mode == "off":
        return None
    if mode == "bf16" or (mode == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def _plots(history: pd.DataFrame, cm: np.ndarray, classes, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    a.plot(history["epoch"], history["train_loss"], label="train")
    a.plot(history["epoch"], history["val_loss"], label="val")
    a.set_xlabel("epoch")
    a.set_ylabel("loss")
    a.legend()
    b.plot(history["epoch"], history["val_miou"], marker="o")
    b.set_xlabel("epoch")
    b.set_ylabel("val mIoU")
    save_figure(out / "curves.png", fig)
    plt.close(fig)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1 + 0.5 * len(classes), 0.5 * len(classes) + 0.5))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=90)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("truth")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=6)
    save_figure(out / "confusion.png", fig)
    plt.close(fig)


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise TrainingError("train.tensorboard=true needs the tensorboard package: "
                            "pip install 'segpipe[tensorboard]'") from None
    return SummaryWriter(str(run_dir / "tensorboard"))


def median_frequency_weights(pool: Source, indices, num_classes: int, ignore_index: int) -> list[float]:
    """SegNet's median frequency balancing: w_c = median(f) / f_c, where f_c is class c's pixel share
    in the images that contain it. Classes never seen get the largest weight."""
    pixels = np.zeros(num_classes, np.float64)
    image_pixels = np.zeros(num_classes, np.float64)
    for i in indices:
        m = pool.mask(i)
        counts = np.bincount(m[m != ignore_index].ravel(), minlength=num_classes)[:num_classes]
        pixels += counts
        image_pixels += (counts > 0) * m.size
    seen = pixels > 0
    freq = np.where(seen, pixels / np.maximum(image_pixels, 1), np.nan)
    w = np.nanmedian(freq) / freq
    return [float(x) for x in np.where(seen, w, np.nanmax(w))]


def _resolve_class_weights(terms, pool, train_idx, C, ign, dist):
    out = []
    for t in terms:
        if t.params.get("class_weights") == "median_frequency":
            w = median_frequency_weights(pool, train_idx, C, ign)
            if dist.main:
                print("  class weights (median frequency): " + ", ".join(f"{x:.2f}" for x in w))
            t = dataclasses.replace(t, params={**t.params, "class_weights": w})
        out.append(t)
    return tuple(out)


def _val_batch_size(pool: Source, idx, tc) -> int:
    sizes = {(pool.records[i].height, pool.records[i].width) for i in idx}
    return tc.batch_size if (tc.resize or len(sizes) == 1) else 1


@torch.no_grad()
def evaluate(model, loader, loss_fn, num_classes, ignore_index, device, dtype, channels_last):
    model.eval()
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    loss_sum = torch.zeros(2, dtype=torch.float64, device=device)
    for x, y in loader:
        x = x.to(device, non_blocking=True, memory_format=torch.channels_last if channels_last else torch.preserve_format)
        y = y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(x)
        loss_sum[0] += loss_fn(logits.float(), y).double() * len(x)
        loss_sum[1] += len(x)
        cm += confusion_matrix_torch(y, logits.argmax(1), num_classes, ignore_index)
    return cm, loss_sum


def run(cfg: Config, dist: DistInfo = DistInfo()) -> dict:
    tc, C, ign = cfg.train, cfg.data.num_classes, cfg.data.ignore_index
    device = resolve_device(tc.device, dist)
    if dist.world > 1 and not tdist.is_initialized():
        tdist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    run_dir = cfg.run_dir()
    torch.manual_seed(tc.seed)
    np.random.seed(tc.seed)
    random.seed(tc.seed)

    pool, table = labelled_pool(cfg)
    if cfg.fold not in set(table["fold"]):
        raise DataError(f"fold {cfg.fold} is not in {cfg.folds_csv} (folds: {sorted(set(table['fold']))})")
    train_idx = table.loc[table["fold"] != cfg.fold, "index"].tolist()
    val_idx = table.loc[table["fold"] == cfg.fold, "index"].tolist()

    model = build_model(cfg.model, C).to(device)
    channels_last = tc.channels_last and device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    dtype = amp_dtype(tc.amp, device)
    opt = build_optimizer(model, tc)

    train_ds = SegDataset(pool, train_idx, train_transform(tc, ign), seed=tc.seed)
    sampler = EpochSampler(DistributedSampler(train_ds, num_replicas=dist.world, rank=dist.rank, shuffle=True,
                                              seed=tc.seed, drop_last=dist.world > 1), len(train_ds))
    drop_last = len(train_ds) // dist.world > tc.batch_size  # a batch of one breaks batch norm
    train_loader = DataLoader(train_ds, tc.batch_size, sampler=sampler, num_workers=tc.num_workers,
                              drop_last=drop_last, pin_memory=device.type == "cuda",
                              persistent_workers=tc.num_workers > 0)
    val_ds = SegDataset(pool, val_idx[dist.rank::dist.world], eval_transform(tc))
    val_loader = DataLoader(val_ds, _val_batch_size(pool, val_idx, tc), num_workers=tc.num_workers,
                            pin_memory=device.type == "cuda")
    batches = len(train_loader) if tc.max_steps_per_epoch is None else min(len(train_loader), tc.max_steps_per_epoch * tc.accum_steps)
    steps_per_epoch = max(1, math.ceil(batches / tc.accum_steps))
    sched, per_step = build_scheduler(opt, tc, steps_per_epoch)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(tc.ema_decay), use_buffers=True) if tc.ema_decay else None
    loss_fn = build_loss(_resolve_class_weights(tc.losses, pool, train_idx, C, ign, dist), C, ign).to(device)

    net = model
    if dist.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    fwd = torch.compile(net) if tc.compile else net

    start_epoch, best, bad_epochs, history, global_step = 0, -1.0, 0, [], 0
    state = checkpoint.load_latest(run_dir)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        _set_rng_state(state["rng"])
        start_epoch, best, bad_epochs = state["epoch"] + 1, state["best"], state["bad_epochs"]
        history, global_step = state["history"], state["global_step"]
        if dist.main:
            print(f"train: resuming {run_dir} after epoch {state['epoch']} (best val mIoU {best:.4f})")
    if dist.main:
        write_text(run_dir / "config.yaml", config_to_yaml(cfg))
        print(f"train: {cfg.exp} fold {cfg.fold}: {len(train_idx)} train / {len(val_idx)} val images, "
              f"{cfg.model.arch} on {device}{' x' + str(dist.world) if dist.world > 1 else ''}, "
              f"amp {dtype}, channels_last {channels_last}")
        for g in opt.param_groups:
            print(f"  param group {g['name']:<18} {sum(p.numel() for p in g['params']):>10,d} params  "
                  f"lr {g.get('initial_lr', g['lr']):.2e}  wd {g['weight_decay']:.1e}")

    cm_np = np.zeros((C, C), np.int64)
    stopped = None
    writer = _tensorboard(run_dir) if (tc.tensorboard and dist.main) else None
    for epoch in range(start_epoch, tc.epochs):
        if bad_epochs and tc.patience is not None and bad_epochs >= tc.patience:
            break
        t0 = time.time()
        sampler.set_epoch(epoch)
        model.train()
        loss_sum, n_seen, bad_steps, consecutive_bad = 0.0, 0, 0, 0
        opt.zero_grad(set_to_none=True)
        bar = tqdm(train_loader, total=batches, desc=f"epoch {epoch + 1}/{tc.epochs}",
                   disable=None if (tc.progress and dist.main) else True, leave=False)
        for b, (x, y) in enumerate(bar):
            if b >= batches:
                break
            x = x.to(device, non_blocking=True, memory_format=torch.channels_last if channels_last else torch.preserve_format)
            y = y.to(device, non_blocking=True)
            last_micro = (b + 1) % tc.accum_steps == 0 or b + 1 == batches
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                logits = fwd(x)
                loss = loss_fn(logits, y)
            finite = torch.isfinite(loss.detach())
            if dist.world > 1:  # every rank must skip together or DDP hangs
                flag = finite.float().reshape(1)
                tdist.all_reduce(flag, op=tdist.ReduceOp.MIN)
                finite = flag[0] > 0
            if not bool(finite):
                bad_steps += 1
                consecutive_bad += 1
                opt.zero_grad(set_to_none=True)
                if consecutive_bad >= tc.max_bad_steps:
                    raise TrainingError(f"{consecutive_bad} consecutive non-finite losses at epoch {epoch + 1}, "
                                        f"batch {b + 1}: stopping (lower the LR, check the data, or try amp=bf16)")
                continue
            consecutive_bad = 0
            ctx = net.no_sync() if (dist.world > 1 and not last_micro) else contextlib.nullcontext()
            with ctx:
                scaler.scale(loss / tc.accum_steps).backward()
            if last_micro:
                if tc.clip_grad:
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), tc.clip_grad)
                scaler.step(opt)
                scaler.update()
                opt.zero_grad(set_to_none=True)
                if ema is not None:
                    ema.update_parameters(model)
                if per_step:
                    sched.step()
                global_step += 1
                if tc.fault_kill_at_step is not None and global_step == tc.fault_kill_at_step:
                    os.kill(os.getpid(), signal.SIGKILL)  # test hook: a real kill -9 mid-epoch
            loss_sum += float(loss.detach()) * len(x)
            n_seen += len(x)
            bar.set_postfix(loss=f"{loss_sum / max(n_seen, 1):.4f}")
        bar.close()
        train_seconds = time.time() - t0

        eval_model = ema.module if ema is not None else model
        validate = (epoch + 1) % tc.val_every == 0 or epoch + 1 == tc.epochs
        train_stats = torch.tensor([loss_sum, n_seen, bad_steps], dtype=torch.float64, device=device)
        cm = torch.zeros(C, C, dtype=torch.int64, device=device)
        vloss = torch.zeros(2, dtype=torch.float64, device=device)
        if validate:
            cm, vloss = evaluate(eval_model, val_loader, loss_fn, C, ign, device, dtype, channels_last)
        if dist.world > 1:
            for t in (cm, vloss, train_stats):
                tdist.all_reduce(t)
        improved = False
        iou, miou = np.full(C, np.nan), float("nan")
        if validate:
            cm_np = cm.cpu().numpy()
            iou = iou_from_confusion(cm_np)
            miou = mean_iou(iou)
            if not per_step:
                sched.step(miou)
            improved = miou > best
            best = max(best, miou)
            bad_epochs = 0 if improved else bad_epochs + 1
        row = {"epoch": epoch + 1, "train_loss": float(train_stats[0] / max(train_stats[1], 1)),
               "val_loss": float(vloss[0] / vloss[1]) if validate else float("nan"), "val_miou": miou,
               "pixel_acc": float(np.trace(cm_np) / max(cm_np.sum(), 1)) if validate else float("nan"),
               **{f"iou_{n}": float(v) for n, v in zip(cfg.data.classes, iou)},
               "lr_encoder": opt.param_groups[0]["lr"], "lr_decoder": opt.param_groups[-1]["lr"],
               "bad_steps": int(train_stats[2]), "train_img_per_s": round(float(train_stats[1]) / max(train_seconds, 1e-9), 2),
               "seconds": round(time.time() - t0, 2)}
        history.append(row)
        if dist.main:
            df = pd.DataFrame(history)
            write_text(run_dir / "metrics.csv", df.to_csv(index=False))
            if writer is not None:
                for key, value in row.items():
                    if key != "epoch" and np.isfinite(value):
                        writer.add_scalar(key, value, epoch + 1)
                writer.flush()
            meta = {"epoch": epoch, "val_miou": miou, "model_cfg": dataclasses.asdict(cfg.model),
                    "classes": list(cfg.data.classes), "resize": tc.resize, "fold": cfg.fold, "exp": cfg.exp}
            if improved:
                checkpoint.save(run_dir / "best.pt", {"model": eval_model.state_dict(), "optimizer": None, **meta},
                                keep_previous=False)
            checkpoint.save(run_dir / "last.pt", {
                "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "scaler": scaler.state_dict(), "ema": ema.state_dict() if ema is not None else None,
                "rng": _rng_state(), "best": best, "bad_epochs": bad_epochs, "history": history,
                "global_step": global_step, **meta})
            if validate:  # matplotlib costs about a second: not worth it on epochs without new figures
                _plots(df.dropna(subset=["val_miou"]), cm_np, cfg.data.classes, run_dir)
            val = f"val loss {row['val_loss']:.4f}  val mIoU {miou:.4f}{' *' if improved else ''}" if validate else "(no validation)"
            print(f"epoch {epoch + 1}/{tc.epochs}  train loss {row['train_loss']:.4f}  {val}  ({row['seconds']:.1f}s"
                  f"{', ' + str(row['bad_steps']) + ' skipped steps' if row['bad_steps'] else ''})")
        if validate and tc.patience is not None and bad_epochs >= tc.patience:
            stopped = epoch + 1
            if dist.main:
                print(f"train: early stop after epoch {epoch + 1}: no better val mIoU for {tc.patience} epochs")
            break
    if writer is not None:
        writer.close()
    if dist.world > 1:
        tdist.barrier()
    return {"best_val_miou": best, "epochs": len(history), "early_stopped_at": stopped, "run_dir": str(run_dir)}
