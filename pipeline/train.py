"""Training of one fold: resumable after any kill, validated on the fold's images, DDP under torchrun."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from torch.utils.data import DataLoader, DistributedSampler

from pipeline.competition.metrics import competition_metric
from pipeline.config import Config, StageArgs
from pipeline.config.choices import CLASS_WEIGHTS
from pipeline.config.schema import REFIT
from pipeline.data.dataset import EpochSampler, PadCollate, SegDataset, eval_transform, train_transform
from pipeline.data.pool import add_pseudo_labels, fold_indices, labelled_pool, read_folds
from pipeline.data.sources import open_split
from pipeline.data.stats import check_label_share, label_stats, median_frequency_weights, rarest_classes
from pipeline.data.tiles import DecodedCache, GridTiles, TileDataset
from pipeline.engine import checkpoint
from pipeline.engine.hooks import (Checkpoint, ConsoleLog, EarlyStopping, Hook, MetricsCSV, Plots, WeightAveraging,
                                   checkpoint_meta)
from pipeline.engine.losses import build_loss
from pipeline.engine.optim import build_optimizer, build_scheduler
from pipeline.engine.rundir import RunFolder
from pipeline.engine.runtime import DistInfo, Runtime, describe_precision, get_logger
from pipeline.engine.trackers import TRACKERS
from pipeline.engine.trainer import Trainer, steps_per_epoch
from pipeline.errors import ConfigError, TrainingError
from pipeline.inference.pseudo_labels import pseudo_label
from pipeline.inference.space import outputs_space
from pipeline.io import write_json
from pipeline.models import build_model, input_norm

log = get_logger(__name__)


def run(cfg: Config, args: StageArgs = StageArgs(), hooks: list[Hook] = (), image_epochs_after: int = 0) -> dict:
    """Train cfg.fold; `hooks` are added after the built-in ones (tests inject faults this way);
    `image_epochs_after`: the work train-all has left after this run, for the time-left estimate."""
    if cfg.fold == REFIT and cfg.train.refit_pseudo and not cfg.train.pseudo:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, pseudo=cfg.exp))
    if cfg.fold == REFIT and cfg.train.refit_epochs:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=cfg.train.refit_epochs))
    dist = args.dist
    pool, table = labelled_pool(cfg)
    if cfg.fold == REFIT and cfg.train.refit_init:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, init_from=refit_start(cfg, table)))
    tc, rt = cfg.train, Runtime.create(cfg.runtime, dist)
    train_idx, val_idx = fold_indices(table, cfg.fold, str(cfg.folds_csv))
    pseudo = None
    if cfg.train.pseudo:
        pool, train_idx, pseudo = add_pseudo_labels(cfg, pool, train_idx)
    stats = label_stats(pool, train_idx, cfg.data.num_classes, cfg.data.ignore_index)
    check_label_share(stats, cfg.data.classes, cfg.data.ignore_index, f"fold {cfg.fold} training images")
    with RunFolder(cfg, dist.main) as run_dir:
        rt.barrier()
        _describe(cfg, rt, len(train_idx), len(val_idx))
        if pseudo is not None:
            write_json(run_dir / "pseudo.json", pseudo)  # which round and which ensemble labelled them
            log.info("  of which %d pseudo-labelled %s images (round %d, threshold %.2f)", pseudo["images"], pseudo["split"],
                     pseudo["round"], pseudo["threshold"])
        model = rt.prepare(build_model(cfg.model, cfg.data.num_classes))
        if tc.init_from:
            _init_from(model, cfg)
        optimizer = build_optimizer(model, tc)
        train_loader, val_loader = _loaders(
            cfg, pool, train_idx, val_idx, rt,
            rare=_chosen_classes(cfg, stats, "rare-class crops", tc.rare_crop, tc.rare_classes),
            pasted=_chosen_classes(cfg, stats, "class paste", tc.class_paste, tc.paste_classes or tc.rare_classes))
        loss_fn = build_loss(_class_weights(cfg, stats), cfg.data.num_classes, cfg.data.ignore_index,
                             cfg.competition.multilabel).to(rt.device)
        scheduler, per_step = build_scheduler(optimizer, tc, steps_per_epoch(len(train_loader), tc))
        hooks = _hooks(cfg, run_dir, dist, len(train_idx), image_epochs_after) + list(hooks)
        trainer = Trainer(model, optimizer, scheduler, per_step, loss_fn, train_loader, val_loader, rt, tc,
                          cfg.data.classes, competition_metric(cfg, rt.device), hooks)
        state = checkpoint.load_latest(run_dir)
        if state is not None:
            trainer.load_state_dict(state)
            done = " (complete: nothing to train)" if trainer.epoch >= tc.epochs else ""
            log.info("train: resuming %s after epoch %d (best val %s %.4f)%s", run_dir, trainer.epoch,
                     cfg.competition.metric, trainer.best, done)
        result = trainer.fit()
    rt.barrier()
    return {"best_score": trainer.best, "metric": cfg.competition.metric, "epochs": trainer.epoch, "run_dir": str(run_dir),
            "early_stopped_at": trainer.epoch if result["stop_reason"] else None}


def _init_from(model, cfg: Config) -> None:
    """Another run's full model weights (its best.pt), e.g. to fine-tune at a higher resolution."""
    src = cfg.train.init_from
    path = Path(src) if src.endswith((".pt", ".pth")) else cfg.out_dir / "runs" / src / "best.pt"
    state = checkpoint.load_weights(path)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise TrainingError(f"train.init_from={src}: {path} does not fit this model: {str(e).splitlines()[0]}") from None
    log.info("  initialised from %s (epoch %s, val score %s)", path, state.get("epoch"), state.get("val_score"))


def refit_start(cfg: Config, table) -> str:
    """The fold run (`<exp>/fold<k>`) that `train.refit_init` names; largest_fold: the one trained
    on the most images (the lowest fold number among equals)."""
    choice = cfg.train.refit_init
    if choice == "largest_fold":
        folds = sorted(int(k) for k in set(table["fold"]) if k >= 0)
        k = max(folds, key=lambda f: (len(fold_indices(table, f)[0]), -f))
    else:
        k = int(choice.removeprefix("fold"))
        fold_indices(table, k, str(cfg.folds_csv))  # names the folds there are
    if not (cfg.run_dir(fold=k) / "best.pt").exists():
        raise TrainingError(f"train.refit_init={choice}: {cfg.run_dir(fold=k) / 'best.pt'} does not exist; "
                            f"train fold {k} first (`make train-all` trains the folds before the refit)")
    return f"{cfg.exp}/fold{k}"


def run_all(cfg: Config, args: StageArgs = StageArgs()) -> dict[int, dict]:
    """Every fold of folds.csv in turn (fold -1 holds the images that train in every fold), then the
    full-data refit (key REFIT) when the recipe's inference uses one (`infer.refit: with | only`),
    after the fold ensemble has pseudo-labelled the test images if `train.refit_pseudo`."""
    table = read_folds(cfg)
    folds = sorted(int(k) for k in table["fold"].unique() if k >= 0)
    if args.dist.main and cfg.data.test is not None:
        problem = outputs_space(cfg)[2]
        if problem:  # a warning: the training itself fits, and space may be freed while it runs
            log.warning("%s (said now: the predictions are written after the training)", problem)
    plan = list(_image_epochs(cfg, table, folds).items())  # the runs in the order they train
    out = {k: run(dataclasses.replace(cfg, fold=k), args, image_epochs_after=sum(w for _, w in plan[i + 1:]))
           for i, k in enumerate(folds)}
    if cfg.infer.refit != "off":
        if cfg.train.refit_pseudo:  # one writer under torchrun; the other ranks wait for its labels
            if args.dist.main:
                pseudo_label(dataclasses.replace(cfg, infer=dataclasses.replace(cfg.infer, refit="off")),
                             keep_probs=cfg.infer.refit == "with")  # infer then runs only the refit on the test
            Runtime.create(cfg.runtime, args.dist).barrier()
        out[REFIT] = run(dataclasses.replace(cfg, fold=REFIT), args)
    return out


def _image_epochs(cfg: Config, table, folds: list[int]) -> dict[int, int]:
    """Training images x epochs still to train in each run train-all makes, pseudo-labelled images
    included; the epochs a run's checkpoint holds (a resumed or finished run) are done."""
    tc = cfg.train
    pseudo = len(open_split(cfg.data, cfg.pseudo.split, labelled=False)) if (tc.pseudo or tc.refit_pseudo) else 0
    fold_pseudo = pseudo if tc.pseudo else 0
    table = table.assign(index=range(len(table)))  # only the counts matter: positions stand in for pool indices

    def epochs_left(k: int, epochs: int) -> int:
        state = checkpoint.load_latest(cfg.run_dir(fold=k))
        return max(0, epochs - (state["epoch"] + 1 if state else 0))  # the checkpoint's epoch counts from 0

    plan = {k: (len(fold_indices(table, k)[0]) + fold_pseudo) * epochs_left(k, tc.epochs) for k in folds}
    if cfg.infer.refit != "off":
        plan[REFIT] = (len(fold_indices(table, REFIT)[0]) + pseudo) * epochs_left(REFIT, tc.refit_epochs or tc.epochs)
    return plan


def _hooks(cfg: Config, run_dir, dist: DistInfo, images: int, image_epochs_after: int) -> list[Hook]:
    hooks: list[Hook] = [EarlyStopping(cfg.train.patience)]  # every rank: the stop decision must agree
    if dist.main:
        hooks += [MetricsCSV(run_dir / "metrics.csv"), *(TRACKERS[n](cfg, run_dir) for n in cfg.train.trackers)]
        if cfg.train.swa_epochs:
            hooks.append(WeightAveraging(cfg.train.swa_epochs, run_dir, checkpoint_meta(cfg)))
        hooks += [Checkpoint(run_dir, checkpoint_meta(cfg)), Plots(run_dir), ConsoleLog(images, image_epochs_after)]
    return hooks


def _chosen_classes(cfg: Config, stats, what: str, share: float, names) -> list[int]:
    """The classes a sampling option aims at (rare-class crops, class paste): those named, else the
    rarest third of this fold's training pixels; none where the option is off."""
    if not share:
        return []
    chosen = [cfg.data.classes.index(n) for n in names] or rarest_classes(stats)
    log.info("  %s (p=%.2f): %s", what, share, ", ".join(cfg.data.classes[c] for c in chosen))
    return chosen


CROPS = ("RandomCrop", "CenterCrop", "Crop", "RandomSizedCrop", "RandomResizedCrop", "CropNonEmptyMaskIfExists",
         "RandomCropNearBBox", "BBoxSafeRandomCrop", "AtLeastOneBBoxRandomCrop")


def check_augment_sizes(tc, records, where: str) -> None:
    """A crop in train.augment larger than the smallest training image (after train.resize) fails
    inside a loader worker an epoch in; refuse it before training."""
    if tc.tile or not records:
        return
    h, w = tc.resize or (min(r.height for r in records), min(r.width for r in records))
    for spec in tc.augment:
        size = spec.get("size") if isinstance(spec.get("size"), (list, tuple)) else (spec.get("height"), spec.get("width"))
        if spec.get("name") in CROPS and None not in size and (size[0] > h or size[1] > w):
            raise ConfigError(f"train.augment: {spec['name']} {list(size)} is larger than the smallest {where} image "
                              f"({h}x{w} after train.resize): use train.crop (it pads) or a smaller crop")


def _loaders(cfg: Config, pool, train_idx, val_idx, rt: Runtime, rare: list[int], pasted: list[int]):
    tc, dist = cfg.train, rt.dist
    check_augment_sizes(tc, [pool.records[i] for i in train_idx], "training")
    norm = input_norm(cfg.model.encoder_name, cfg.model.arch)
    transform = train_transform(tc, cfg.data.ignore_index, rare, cfg.data.num_classes, norm)
    if tc.tile:
        bg = cfg.competition.background  # its value in a label map (multilabel: the background's bit alone)
        bg = 1 << bg if cfg.competition.multilabel else bg
        cache = DecodedCache(pool, cfg.out_dir / "cache" / "decoded", bg, cfg.data.ignore_index)
        train_ds = TileDataset(cache, train_idx, tc.tile, tc.tiles_per_image, tc.tile_fg, transform, seed=cfg.runtime.seed)
    else:
        train_ds = SegDataset(pool, train_idx, transform, seed=cfg.runtime.seed, paste=tc.class_paste, paste_classes=pasted)
    sampler = EpochSampler(DistributedSampler(train_ds, num_replicas=dist.world, rank=dist.rank, shuffle=True,
                                              seed=cfg.runtime.seed, drop_last=dist.world > 1), len(train_ds))
    drop_last = len(train_ds) // dist.world > tc.batch_size  # a batch of one breaks batch norm
    cuda = rt.device.type == "cuda"
    collate = PadCollate(cfg.data.ignore_index)  # images of different sizes batch together
    train_loader = DataLoader(train_ds, tc.batch_size, sampler=sampler, num_workers=tc.num_workers, collate_fn=collate,
                              drop_last=drop_last, pin_memory=cuda, persistent_workers=tc.num_workers > 0)
    if not val_idx:  # the full-data refit
        return train_loader, None
    if tc.tile:
        val_ds = GridTiles(cache, val_idx[dist.rank::dist.world], tc.tile, eval_transform(tc, norm))
    else:
        val_ds = SegDataset(pool, val_idx[dist.rank::dist.world], eval_transform(tc, norm))
    return train_loader, DataLoader(val_ds, tc.batch_size, num_workers=tc.num_workers, collate_fn=collate, pin_memory=cuda)


def _class_weights(cfg: Config, stats):
    """Loss terms with `class_weights: median_frequency` (or another CLASS_WEIGHTS name) resolved
    from this fold's training images."""
    out = []
    for t in cfg.train.losses:
        name = t.params.get("class_weights")
        if isinstance(name, str):
            if name not in CLASS_WEIGHTS:
                raise ConfigError(f"train.losses {t.name}.class_weights: {name!r} is not one of "
                                  f"{', '.join(CLASS_WEIGHTS)} (or a list of one weight per class)")
            w = median_frequency_weights(stats, CLASS_WEIGHTS[name])
            log.info("  class weights (%s): %s", name.replace("_", " "), ", ".join(f"{x:.2f}" for x in w))
            t = dataclasses.replace(t, params={**t.params, "class_weights": w})
        out.append(t)
    return tuple(out)


def _describe(cfg: Config, rt: Runtime, n_train: int, n_val: int) -> None:
    world = f" x{rt.dist.world}" if rt.dist.world > 1 else ""
    fold = "all (full-data refit)" if cfg.fold == REFIT else str(cfg.fold)
    log.info("train: %s fold %s: %d train / %d val images, %s on %s%s, %s, channels_last %s", cfg.exp, fold,
             n_train, n_val, cfg.model.arch, rt.device, world, describe_precision(rt.dtype, rt.device), rt.channels_last)

