"""The training loop. `train_one_epoch()` and `validate()` return metric dicts; `fit()` runs epochs
and calls the hooks; `state_dict()` gathers the state of every part that owns some (model,
optimiser, scheduler, AMP scaler, EMA, RNG, hooks), so a checkpoint is one call and a resumed run
continues bit for bit."""
from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.distributed as tdist
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from pipeline.competition.metrics import IoUMeter
from pipeline.config import TrainConfig
from pipeline.engine.hooks import Hook
from pipeline.engine.runtime import Runtime, rng_state, set_rng_state
from pipeline.errors import TrainingError
from pipeline.pixels import masks_to_bits


class Trainer:
    def __init__(self, model: torch.nn.Module, optimizer, scheduler, per_step_scheduler: bool, loss_fn,
                 train_loader, val_loader, rt: Runtime, tc: TrainConfig, class_names, meter: IoUMeter,
                 hooks: list[Hook] = ()):
        """`meter` is the competition's metric; its score chooses the best checkpoint."""
        self.model, self.optimizer, self.scheduler, self.per_step = model, optimizer, scheduler, per_step_scheduler
        self.loss_fn, self.train_loader, self.val_loader = loss_fn, train_loader, val_loader
        self.rt, self.tc, self.class_names, self.hooks = rt, tc, list(class_names), list(hooks)
        self.net = model
        if rt.dist.world > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
        self.forward = torch.compile(self.net) if rt.compile else self.net
        self.scaler = torch.amp.GradScaler("cuda", enabled=rt.dtype == torch.float16)
        self.ema = (AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(tc.ema_decay), use_buffers=True)
                    if tc.ema_decay else None)
        self.batches = epoch_batches(len(train_loader), tc)
        self.meter = meter
        # progress, read and written by hooks
        self.epoch = 0  # epochs completed
        self.global_step = 0
        self.history: list[dict] = []
        self.best = -1.0
        self.improved = self.validated = False
        self.confusion: np.ndarray | None = None
        self.stop_reason: str | None = None

    @property
    def eval_model(self) -> torch.nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def stop(self, reason: str) -> None:
        self.stop_reason = reason

    def _call(self, event: str) -> None:
        for h in self.hooks:
            getattr(h, event)(self)

    def train_one_epoch(self) -> dict:
        tc, rt = self.tc, self.rt
        sampler = getattr(self.train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.epoch)
        self.model.train()
        t0 = time.time()
        stats = torch.zeros(3, dtype=torch.float64, device=rt.device)  # loss sum, images, skipped steps
        consecutive_bad = 0
        self.optimizer.zero_grad(set_to_none=True)
        bar = tqdm(self.train_loader, total=self.batches, desc=f"epoch {self.epoch + 1}/{tc.epochs}",
                   disable=None if (rt.progress and rt.dist.main) else True, leave=False)
        for b, (x, y) in enumerate(bar):
            if b >= self.batches:
                break
            x, y = rt.to_device(x, image=True), rt.to_device(y)
            last_micro = (b + 1) % tc.accum_steps == 0 or b + 1 == self.batches
            with rt.autocast():
                loss = self.loss_fn(self.forward(x), y)
            if not self._all_finite(loss):
                stats[2] += 1
                consecutive_bad += 1
                self.optimizer.zero_grad(set_to_none=True)
                if consecutive_bad >= tc.max_bad_steps:
                    raise TrainingError(f"{consecutive_bad} consecutive non-finite losses at epoch {self.epoch + 1}, "
                                        f"batch {b + 1}: stopping (lower the LR, check the data, or try amp=bf16)")
                continue
            consecutive_bad = 0
            with rt.no_sync(self.net, skip=not last_micro):
                self.scaler.scale(loss / tc.accum_steps).backward()
            if last_micro:
                self._optimizer_step()
            stats[0] += loss.detach().double() * len(x)
            stats[1] += len(x)
            if b % 10 == 0 and bar.disable is False:
                bar.set_postfix(loss=f"{float(stats[0] / max(float(stats[1]), 1)):.4f}")
        bar.close()
        seconds = time.time() - t0
        rt.all_reduce(stats)
        loss_sum, seen, bad = (float(v) for v in stats)
        return {"train_loss": loss_sum / seen if seen else float("nan"), "bad_steps": int(bad),
                "train_img_per_s": round(seen / max(seconds, 1e-9), 2)}

    def _all_finite(self, loss: torch.Tensor) -> bool:
        finite = torch.isfinite(loss.detach()).float().reshape(1)
        self.rt.all_reduce(finite, op=tdist.ReduceOp.MIN)  # every rank must skip together or DDP hangs
        return bool(finite[0] > 0)

    def _optimizer_step(self) -> None:
        tc = self.tc
        if tc.clip_grad:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        if self.per_step:
            self.scheduler.step()
        self.global_step += 1
        self._call("after_step")

    @torch.no_grad()
    def validate(self, model: torch.nn.Module | None = None) -> dict:
        """Loss and metrics of `model` (default: the eval model) on the validation loader."""
        rt, model = self.rt, model if model is not None else self.eval_model
        model.eval()
        self.meter.reset()
        loss = torch.zeros(2, dtype=torch.float64, device=rt.device)
        for x, y in self.val_loader:
            x, y = rt.to_device(x, image=True), rt.to_device(y)
            with rt.autocast():
                logits = model(x)
            loss[0] += self.loss_fn(logits, y).double() * len(x)  # the loss casts the logits to fp32 once
            loss[1] += len(x)
            self.meter.update(masks_to_bits(logits > 0) if self.meter.multilabel else logits.argmax(1), y)
        rt.all_reduce(loss)
        self.meter.all_reduce()
        m = self.meter.compute()
        self.confusion = self.meter.confusion.cpu().numpy()
        scored = [self.class_names[c] for c in self.meter.classes]
        row = {"val_loss": float(loss[0] / loss[1]) if loss[1] else float("nan"), "val_score": m["score"],
               "val_miou": m["miou"], "pixel_acc": m["pixel_acc"], **{f"iou_{n}": float(v) for n, v in zip(scored, m["iou"])}}
        if self.meter.per_image:
            row.update({f"{self.meter.name}_{n}": float(v) for n, v in zip(scored, m["per_class"])})
        return row

    def fit(self) -> dict:
        tc = self.tc
        self._call("before_train")
        while self.epoch < tc.epochs and self.stop_reason is None:
            t0 = time.time()
            row = {"epoch": self.epoch + 1, **self.train_one_epoch()}
            self.validated = self.val_loader is not None and ((self.epoch + 1) % tc.val_every == 0 or
                                                              self.epoch + 1 == tc.epochs)
            if self.validated:
                row.update(self.validate())
                if not self.per_step:
                    self.scheduler.step(row["val_score"])
            else:
                row.update({k: float("nan") for k in ("val_loss", "val_score", "val_miou", "pixel_acc")})
            self.improved = self.validated and row["val_score"] > self.best
            if self.improved:
                self.best = row["val_score"]
            row.update({"lr_encoder": self.optimizer.param_groups[0]["lr"],
                        "lr_decoder": self.optimizer.param_groups[-1]["lr"], "seconds": round(time.time() - t0, 2)})
            self.history.append(row)
            self.epoch += 1
            self._call("after_epoch")
        self._call("after_train")
        return {"best_score": self.best, "epochs": self.epoch, "stop_reason": self.stop_reason}

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None, "rng": rng_state(),
                "epoch": self.epoch - 1, "global_step": self.global_step, "history": self.history, "best": self.best,
                "hooks": {h.name: h.state_dict() for h in self.hooks if h.state_dict()}}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        set_rng_state(state["rng"])
        self.epoch, self.global_step = state["epoch"] + 1, state["global_step"]
        self.history, self.best = state["history"], state["best"]
        for h in self.hooks:
            if h.name in state.get("hooks", {}):
                h.load_state_dict(state["hooks"][h.name])


def epoch_batches(loader_batches: int, tc: TrainConfig) -> int:
    """Micro-batches per epoch: the loader's, or fewer under train.max_steps_per_epoch."""
    if tc.max_steps_per_epoch is None:
        return loader_batches
    return min(loader_batches, tc.max_steps_per_epoch * tc.accum_steps)


def steps_per_epoch(loader_batches: int, tc: TrainConfig) -> int:
    """Optimiser steps per epoch (what a per-step LR schedule counts)."""
    return max(1, math.ceil(epoch_batches(loader_batches, tc) / tc.accum_steps))
