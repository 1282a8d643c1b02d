"""Parameter groups (encoder vs decoder + head, each with its own LR and weight decay), optimisers
and schedulers. The group builder proves every trainable parameter is in exactly one group."""
from __future__ import annotations

import math

import torch
from torch import nn

from pipeline.config import TrainConfig
from pipeline.engine.runtime import get_logger
from pipeline.errors import ParamGroupError

log = get_logger("pipeline.train")


def param_groups(model: nn.Module, tc: TrainConfig) -> list[dict]:
    encoder_ids = {id(p) for p in model.encoder.parameters()}
    groups = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part = "encoder" if id(p) in encoder_ids else "decoder"
        no_decay = tc.no_decay_norm_bias and p.ndim <= 1  # biases and norm scales/shifts
        key = f"{part}{'_no_decay' if no_decay else ''}"
        if key not in groups:
            lr = tc.lr_encoder if part == "encoder" else tc.lr_decoder
            wd = 0.0 if no_decay else (tc.wd_encoder if part == "encoder" else tc.wd_decoder)
            groups[key] = {"name": key, "params": [], "param_names": [], "lr": lr, "weight_decay": wd}
        groups[key]["params"].append(p)
        groups[key]["param_names"].append(name)
    out = list(groups.values())
    check_param_groups(model, out)
    return out


def check_param_groups(model: nn.Module, groups: list[dict]) -> None:
    """Raise unless every trainable parameter is in exactly one group (and nothing else is)."""
    names = {id(p): n for n, p in model.named_parameters()}
    seen: dict[int, int] = {}
    for g in groups:
        for p in g["params"]:
            seen[id(p)] = seen.get(id(p), 0) + 1
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    missing = [names[i] for i in trainable if i not in seen]
    twice = [names.get(i, "?") for i, n in seen.items() if n > 1]
    foreign = [i for i in seen if i not in trainable]
    if missing or twice or foreign:
        raise ParamGroupError(
            f"optimiser parameter groups are wrong: {len(missing)} trainable parameter(s) in no group "
            f"(e.g. {missing[:3]}), {len(twice)} in several (e.g. {twice[:3]}), "
            f"{len(foreign)} not trainable in this model")


def build_optimizer(model: nn.Module, tc: TrainConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, tc)
    for g in groups:
        n = sum(p.numel() for p in g["params"])
        log.info("  param group %-18s %12s params  lr %.2e  wd %.1e", g["name"], f"{n:,d}", g["lr"], g["weight_decay"])
    plain = [{k: v for k, v in g.items() if k != "param_names"} for g in groups]
    if tc.optimizer == "sgd":
        return torch.optim.SGD(plain, momentum=tc.momentum, nesterov=True)
    return torch.optim.AdamW(plain)


def build_scheduler(opt: torch.optim.Optimizer, tc: TrainConfig, steps_per_epoch: int):
    """(scheduler, step_per_batch). Cosine and poly step every optimiser step; plateau every epoch."""
    total = max(1, tc.epochs * steps_per_epoch)
    warm = int(tc.warmup_epochs * steps_per_epoch)
    floor = tc.min_lr_ratio
    if tc.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5,
                                                          patience=tc.plateau_patience), False
    if tc.scheduler == "none":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), True

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = min(1.0, (step - warm) / max(1, total - warm))
        if tc.scheduler == "cosine":
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))
        return floor + (1 - floor) * (1 - t) ** tc.poly_power

    return torch.optim.lr_scheduler.LambdaLR(opt, factor), True
