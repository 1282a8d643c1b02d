"""Training-loop overhead: img/s of segpipe's training stage (make train) vs a bare PyTorch loop
with the same model, batch, optimiser groups, loss and data loader, measured side by side.

    python bench/train_overhead.py [--epochs 3]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from common import REPO, save
from torch.utils.data import DataLoader

from pipeline import folds, train
from pipeline.config import load_config
from pipeline.data.dataset import SegDataset, train_transform
from pipeline.data.demo import generate
from pipeline.data.pool import labelled_pool
from pipeline.engine.losses import build_loss
from pipeline.models import build_model
from pipeline.engine.optim import build_optimizer


def bare_loop(cfg, epochs):
    pool, table = labelled_pool(cfg)
    idx = table.loc[table["fold"] != cfg.fold, "index"].tolist()
    ds = SegDataset(pool, idx, train_transform(cfg.train, cfg.data.ignore_index), seed=0)
    loader = DataLoader(ds, cfg.train.batch_size, shuffle=True, drop_last=True, num_workers=cfg.train.num_workers)
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.data.num_classes)
    opt = build_optimizer(model, cfg.train)
    loss_fn = build_loss(cfg.train.losses, cfg.data.num_classes, cfg.data.ignore_index)
    rates = []
    for _ in range(epochs):
        model.train()
        n, t = 0, time.perf_counter()
        for x, y in loader:
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            n += len(x)
        rates.append(n / (time.perf_counter() - t))
    return rates


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=3)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = generate(Path(tmp) / "demo", seed=0, n_train=100, n_test=1)
        cfg = load_config("demo", "unet", "demo", [f"data.root={root}", f"outputs={tmp}/out", "runtime.progress=false",
                                                   f"train.epochs={a.epochs}", "runtime.device=cpu"],
                          0, REPO / "configs")
        folds.run(cfg)
        train.run(cfg)
        ours = pd.read_csv(cfg.run_dir() / "metrics.csv")["train_img_per_s"].tolist()
        bare = bare_loop(cfg, a.epochs)
    # first epochs include warm-up; compare the best epoch of each
    save("train_overhead", {"model": f"{cfg.model.arch}-{cfg.model.encoder_name}", "batch": cfg.train.batch_size,
                            "image": [120, 152], "epochs": a.epochs, "segpipe_img_per_s": ours, "bare_img_per_s": [round(r, 2) for r in bare],
                            "overhead_pct": round(100 * (max(bare) / max(ours) - 1), 1)})


if __name__ == "__main__":
    main()
