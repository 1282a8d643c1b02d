"""Hooks: everything the training loop does besides training. Each is called at `before_train`,
`after_step` (every optimiser step), `after_epoch` and `after_train`, and saves its own state in the
trainer's checkpoint through `state_dict()`. Order matters after an epoch: hooks that decide
(early stopping) run before those that record, and `Checkpoint` after every hook whose state it saves."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pandas as pd
from torch.optim.swa_utils import AveragedModel, update_bn

from pipeline.engine import checkpoint
from pipeline.engine.eta import duration, seconds_left
from pipeline.engine.runtime import get_logger
from pipeline.io import save_figure, write_text

log = get_logger("pipeline.train")


class Hook:
    name = "hook"

    def before_train(self, trainer) -> None:
        pass

    def after_step(self, trainer) -> None:
        pass

    def after_epoch(self, trainer) -> None:
        pass

    def after_train(self, trainer) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class EarlyStopping(Hook):
    """Stops after `patience` validations without a better val score (None: never)."""
    name = "early_stopping"

    def __init__(self, patience: int | None):
        self.patience, self.bad = patience, 0

    def _check(self, trainer) -> None:
        if self.patience is not None and self.bad >= self.patience:
            trainer.stop(f"early stop after epoch {trainer.epoch}: no better val score for {self.patience} validations")

    def before_train(self, trainer) -> None:
        self._check(trainer)  # a resumed run that had already stopped

    def after_epoch(self, trainer) -> None:
        if trainer.validated:
            self.bad = 0 if trainer.improved else self.bad + 1
            self._check(trainer)

    def state_dict(self) -> dict:
        return {"bad": self.bad}

    def load_state_dict(self, state: dict) -> None:
        self.bad = state["bad"]


class MetricsCSV(Hook):
    name = "metrics_csv"

    def __init__(self, path: Path):
        self.path = Path(path)

    def after_epoch(self, trainer) -> None:
        write_text(self.path, pd.DataFrame(trainer.history).to_csv(index=False))


class Checkpoint(Hook):
    """last.pt every epoch (the previous one kept), best.pt when the val score improved: the eval model
    (EMA when on) with what inference needs to rebuild it. A run without validation (the
    full-data refit) writes best.pt from its final weights."""
    name = "checkpoint"

    def __init__(self, run_dir: Path, meta: dict):
        self.run_dir, self.meta = Path(run_dir), meta

    def after_epoch(self, trainer) -> None:
        row = trainer.history[-1]
        meta = {**self.meta, "epoch": trainer.epoch - 1, "val_score": row["val_score"], "val_miou": row["val_miou"]}
        final_unvalidated = trainer.val_loader is None and trainer.epoch == trainer.tc.epochs
        if trainer.improved or final_unvalidated:
            checkpoint.save(self.run_dir / "best.pt", {"model": trainer.eval_model.state_dict(), "optimizer": None,
                                                       **meta}, keep_previous=False)
        checkpoint.save(self.run_dir / "last.pt", {**trainer.state_dict(), **meta})


class WeightAveraging(Hook):
    """SWA over the tail of the schedule: the weights after each of the last `epochs` epochs are
    averaged, BN statistics recomputed on the training images, the result validated and saved
    as swa.pt (inference uses it with infer.checkpoint=swa)."""
    name = "swa"

    def __init__(self, epochs: int, run_dir: Path, meta: dict):
        self.epochs, self.run_dir, self.meta = epochs, Path(run_dir), meta
        self.average, self.saved, self._pending = None, False, None

    def before_train(self, trainer) -> None:
        if self.average is None:
            self.average = AveragedModel(trainer.model, use_buffers=False)
            if self._pending is not None:
                self.average.load_state_dict(self._pending)

    def after_epoch(self, trainer) -> None:
        if trainer.epoch > trainer.tc.epochs - self.epochs:
            self.average.update_parameters(trainer.model)
        if trainer.epoch == trainer.tc.epochs:  # before Checkpoint, so last.pt knows swa.pt is written
            self._finalise(trainer)

    def after_train(self, trainer) -> None:
        if trainer.stop_reason:  # early stopping inside (or before) the averaged tail
            self._finalise(trainer)

    def _finalise(self, trainer) -> None:
        n = int(self.average.n_averaged)
        if self.saved:
            return
        if n == 0:
            log.warning("train: no weights averaged (stopped before the last %d epochs); no swa.pt", self.epochs)
            return
        update_bn(_images(trainer.train_loader, trainer.rt), self.average.module)
        nan = float("nan")
        row = trainer.validate(self.average.module) if trainer.val_loader is not None else {"val_score": nan, "val_miou": nan}
        checkpoint.save(self.run_dir / "swa.pt", {"model": self.average.module.state_dict(), "optimizer": None,
                                                  **self.meta, "epoch": trainer.epoch - 1, "val_score": row["val_score"],
                                                  "val_miou": row["val_miou"], "averaged": n}, keep_previous=False)
        self.saved = True
        log.info("train: swa.pt: %d epochs averaged, val %s %.4f (best single epoch %.4f)", n, trainer.meter.name,
                 row["val_score"], trainer.best)

    def state_dict(self) -> dict:
        return {"average": self.average.state_dict() if self.average is not None else None, "saved": self.saved}

    def load_state_dict(self, state: dict) -> None:
        self._pending, self.saved = state["average"], state["saved"]


def _images(loader, rt):
    for x, _ in loader:
        yield rt.to_device(x, image=True)


class Plots(Hook):
    """Loss and mIoU curves and the normalised confusion matrix, on epochs that validated
    (matplotlib costs about a second: not worth it on the others)."""
    name = "plots"

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)

    def after_epoch(self, trainer) -> None:
        if trainer.validated:
            history = pd.DataFrame(trainer.history).dropna(subset=["val_score"])
            plot_curves(history, self.run_dir / "curves.png", trainer.meter.name)
            plot_confusion(trainer.confusion, trainer.class_names, self.run_dir / "confusion.png")


class ConsoleLog(Hook):
    """One line per epoch, with the time left: in this run, and under train-all in the runs after it
    (`image_epochs_after`: their training images x epochs; this run trains on `images`)."""
    name = "console"

    def __init__(self, images: int = 0, image_epochs_after: int = 0):
        self.images, self.image_epochs_after = images, image_epochs_after

    def after_epoch(self, trainer) -> None:
        r = trainer.history[-1]
        val = (f"val loss {r['val_loss']:.4f}  val {trainer.meter.name} {r['val_score']:.4f}{' *' if trainer.improved else ''}"
               if trainer.validated else "(no validation)")
        skipped = f", {r['bad_steps']} skipped steps" if r["bad_steps"] else ""
        left = seconds_left([h["seconds"] for h in trainer.history], trainer.tc.epochs - trainer.epoch, self.images,
                            self.image_epochs_after)
        left = "" if left is None else "".join((
            f"; ~{duration(left[0])} left in this run" if left[0] else "",
            f"{',' if left[0] else ';'} ~{duration(left[1])} in train-all" if self.image_epochs_after else ""))
        log.info("epoch %d/%d  train loss %.4f  %s  (%.1fs%s%s)", r["epoch"], trainer.tc.epochs, r["train_loss"],
                 val, r["seconds"], skipped, left)

    def after_train(self, trainer) -> None:
        if trainer.stop_reason:
            log.info("train: %s", trainer.stop_reason)


class KillAtStep(Hook):
    """Fault injection for tests: a real SIGKILL after the given optimiser step."""
    name = "kill_at_step"

    def __init__(self, step: int):
        self.step = step

    def after_step(self, trainer) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def plot_curves(history: pd.DataFrame, path: Path, metric: str = "miou") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    a.plot(history["epoch"], history["train_loss"], label="train")
    a.plot(history["epoch"], history["val_loss"], label="val")
    a.set_xlabel("epoch")
    a.set_ylabel("loss")
    a.legend()
    b.plot(history["epoch"], history["val_score"], marker="o")
    b.set_xlabel("epoch")
    b.set_ylabel(f"val {metric}")
    save_figure(path, fig)
    plt.close(fig)


def plot_confusion(cm: np.ndarray, classes, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    save_figure(path, fig)
    plt.close(fig)


def checkpoint_meta(cfg) -> dict:
    """What best.pt must carry for inference to rebuild the model without the run's config."""
    return checkpoint.model_meta(cfg.model, cfg.data.classes, cfg.train.resize, fold=cfg.fold, exp=cfg.exp)
