"""Experiment trackers are hooks, switched on by `train.trackers`. Each is built as
`Tracker(cfg, run_dir)`; a new one (W&B, ...) is one class here, keyed in TRACKERS by its name in config/choices.py."""
from __future__ import annotations

import importlib
import math
import os
import time
from pathlib import Path

from pipeline.config import Config, config_to_dict, config_to_yaml, flatten
from pipeline.engine.hooks import Hook
from pipeline.errors import TrainingError


def _scalars(row: dict) -> dict[str, float]:
    return {k: float(v) for k, v in row.items() if k != "epoch" and isinstance(v, (int, float)) and math.isfinite(v)}


def _require(module: str, tracker: str, extra: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise TrainingError(f"train.trackers has {tracker} but the package is missing: "
                            f"pip install 'segpipe[{extra}]'") from None


class TensorBoard(Hook):
    name = "tensorboard"

    def __init__(self, cfg: Config, run_dir: Path):
        tensorboard = _require("torch.utils.tensorboard", "tensorboard", "tensorboard")
        self.writer = tensorboard.SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def after_epoch(self, trainer) -> None:
        row = trainer.history[-1]
        for key, value in _scalars(row).items():
            self.writer.add_scalar(key, value, row["epoch"])
        self.writer.flush()

    def after_train(self, trainer) -> None:
        self.writer.close()


class MLflow(Hook):
    """One MLflow run per training run: the flattened config as parameters, config.yaml as an
    artifact, every metrics.csv column (losses, val score and mIoU, per-class IoU, LRs) as a metric per epoch,
    and the plots at the end. A resumed run logs into the same MLflow run. Without `train.mlflow_uri`
    the store is the local file store <outputs>/mlruns: `mlflow ui --backend-store-uri <that>`."""
    name = "mlflow"

    def __init__(self, cfg: Config, run_dir: Path):
        mlflow = _require("mlflow", "mlflow", "mlflow")
        self.mlflow, self.cfg, self.run_dir, self.run_id = mlflow, cfg, Path(run_dir), None
        self.uri = cfg.train.mlflow_uri or (Path(cfg.outputs).resolve() / "mlruns").as_uri()
        if self.uri.startswith("file:"):
            # MLflow 3 keeps the file store (no server, no database) only behind this opt-in
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = mlflow.tracking.MlflowClient(self.uri)

    def before_train(self, trainer) -> None:
        if self.run_id is None:  # not resumed
            name = f"{self.cfg.data.name}/{self.cfg.exp}"
            exp = self.client.get_experiment_by_name(name)
            exp_id = exp.experiment_id if exp else self.client.create_experiment(name)
            run = self.client.create_run(exp_id, run_name=f"fold{self.cfg.fold}",
                                         tags={"data": self.cfg.data.name, "exp": self.cfg.exp, "fold": str(self.cfg.fold)})
            self.run_id = run.info.run_id
            params = flatten(config_to_dict(self.cfg))
            # MLflow caps a parameter value's length
            items = [self.mlflow.entities.Param(k, str(v)[:500]) for k, v in params.items()]
            for i in range(0, len(items), 100):  # MLflow's batch limit
                self.client.log_batch(self.run_id, params=items[i:i + 100])
            self.client.log_text(self.run_id, config_to_yaml(self.cfg), "config.yaml")

    def after_epoch(self, trainer) -> None:
        row = trainer.history[-1]
        now = int(time.time() * 1000)
        metrics = [self.mlflow.entities.Metric(k, v, now, row["epoch"]) for k, v in _scalars(row).items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def after_train(self, trainer) -> None:
        for name in ("curves.png", "confusion.png"):
            if (self.run_dir / name).exists():
                self.client.log_artifact(self.run_id, str(self.run_dir / name))
        self.client.set_terminated(self.run_id)

    def state_dict(self) -> dict:
        return {"run_id": self.run_id}

    def load_state_dict(self, state: dict) -> None:
        self.run_id = state["run_id"]


TRACKERS = {"tensorboard": TensorBoard, "mlflow": MLflow}
