"""Trackers are hooks: MLflow (local file store, no server) gets the config, every metric per epoch
and the plots; a resumed run logs into the same MLflow run."""
import pytest

from pipeline import folds, train
from helpers import TINY


def test_mlflow_logs_config_metrics_and_plots(make_cfg, tmp_path):
    mlflow = pytest.importorskip("mlflow")
    uri = (tmp_path / "mlruns").as_uri()
    cfg = make_cfg(*TINY, "train.epochs=2", "train.max_steps_per_epoch=2", "train.trackers=[mlflow]",
                   f"train.mlflow_uri={uri}", name="tracked")
    folds.run(cfg)
    train.run(cfg)
    client = mlflow.tracking.MlflowClient(uri)
    exp = client.get_experiment_by_name("demo/tracked")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].info.run_name == "fold0" and runs[0].info.status == "FINISHED"
    run = runs[0]
    assert run.data.params["train.epochs"] == "2" and run.data.params["model.arch"] == "deconvnet"
    history = client.get_metric_history(run.info.run_id, "val_miou")
    assert [m.step for m in history] == [1, 2] and all(0 <= m.value <= 1 for m in history)
    assert {"train_loss", "lr_encoder", "lr_decoder", "iou_background", "iou_bottle"} <= set(run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "curves.png", "confusion.png"} <= artifacts


def test_mlflow_default_store_is_under_outputs(make_cfg, tmp_path):
    pytest.importorskip("mlflow")
    from pipeline.engine.trackers import MLflow

    cfg = make_cfg(*TINY, "train.trackers=[mlflow]")
    tracker = MLflow(cfg, cfg.run_dir())
    assert tracker.uri == (tmp_path / "outputs" / "mlruns").resolve().as_uri()
