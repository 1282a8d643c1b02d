"""Cross-field rules of a built config: each names the setting at fault and what it must be. Run
once by build_config, after every field has its type."""
from __future__ import annotations

import re

from pipeline.config.choices import CHOICES, LOSSES, TRACKERS, parse_tta
from pipeline.config.schema import Config
from pipeline.errors import ConfigError


def validate(cfg: Config) -> None:
    """Cross-field checks, so a mistake fails here and not an hour into training."""
    for key, allowed in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not one of {allowed}")
    d, t, f = cfg.data, cfg.train, cfg.folds
    for name in d.priority:
        if name not in d.classes:
            raise ConfigError(f"data.priority: {name!r} is not a class")
    if d.overlap == "priority" and not d.priority:
        raise ConfigError("data.priority: required when data.overlap is 'priority'")
    if not d.num_classes <= d.ignore_index <= 255:
        raise ConfigError(f"data.ignore_index: {d.ignore_index} must be in 0..255 (label maps are 8-bit) "
                          f"and not a class index (0..{d.num_classes - 1})")
    _check_value_maps(d)
    bg = cfg.competition.background
    if bg is not None and not 0 <= bg < d.num_classes:
        raise ConfigError(f"competition.background: {bg} is not a class index (0..{d.num_classes - 1})")
    s = cfg.submission
    if s.id_template is not None:
        try:
            s.id_template.format(image="i", class_name="c", class_id=0)
        except (KeyError, IndexError, ValueError) as e:
            raise ConfigError(f"submission.id_template: {s.id_template!r}: use {{image}}, {{class_name}}, {{class_id}} ({e})") from None
    if s.size is not None and not all(v > 0 for v in s.size):
        raise ConfigError(f"submission.size: expected [height, width] > 0, got {list(s.size)}")
    for c in cfg.submission.class_ids:
        if not 0 <= c < d.num_classes:
            raise ConfigError(f"submission.class_ids: {c} is outside 0..{d.num_classes - 1}")
    if f.k < 2:
        raise ConfigError("folds.k: at least 2 folds")
    for split in f.splits + ((f.holdout,) if f.holdout else ()):
        if split not in ("train", "val") or getattr(d, split) is None and split != "train":
            raise ConfigError(f"folds: split {split!r} is not a labelled split of data {d.name} (train, val)")
    if f.holdout in f.splits:
        raise ConfigError(f"folds.holdout: {f.holdout!r} is also in folds.splits")
    if f.group_regex is not None:
        try:
            re.compile(f.group_regex)
        except re.error as e:
            raise ConfigError(f"folds.group_regex: {f.group_regex!r} is not a regular expression ({e})") from None
    _check_fold_scheme(f)
    if t.epochs < 1 or t.batch_size < 1 or t.accum_steps < 1 or t.val_every < 1:
        raise ConfigError("train.epochs, train.batch_size, train.accum_steps and train.val_every must be >= 1")
    if t.max_steps_per_epoch is not None and t.max_steps_per_epoch < 1:
        raise ConfigError(f"train.max_steps_per_epoch: {t.max_steps_per_epoch} trains nothing; use null or >= 1")
    if not 0 <= t.rare_crop <= 1 or (t.rare_crop and not t.crop):
        raise ConfigError(f"train.rare_crop: {t.rare_crop} must be in 0..1 and needs train.crop")
    for key, names in (("rare_classes", t.rare_classes), ("paste_classes", t.paste_classes)):
        for name in names:
            if name not in d.classes:
                raise ConfigError(f"train.{key}: {name!r} is not a class (classes: {', '.join(d.classes)})")
    if not 0 < cfg.pseudo.threshold <= 1:
        raise ConfigError(f"pseudo.threshold: {cfg.pseudo.threshold} must be in (0, 1]")
    _validate_refit(cfg)
    if not 0 <= t.swa_epochs <= min(t.epochs, t.refit_epochs or t.epochs):
        raise ConfigError(f"train.swa_epochs: {t.swa_epochs} must be in 0..train.epochs ({t.epochs}) "
                          f"and 0..train.refit_epochs ({t.refit_epochs})")
    if t.num_workers < 0 or cfg.infer.num_workers < 0 or cfg.infer.batch_size < 1:
        raise ConfigError("train.num_workers and infer.num_workers must be >= 0, infer.batch_size >= 1")
    _validate_windows(cfg)
    if t.losses and sum(term.weight for term in t.losses) <= 0:
        raise ConfigError("train.losses: every weight is 0: nothing would be trained")
    for term in t.losses:
        if term.name not in LOSSES:
            raise ConfigError(f"train.losses: unknown loss {term.name!r} ({', '.join(LOSSES)})")
    _validate_task(cfg)
    for name in t.trackers:
        if name not in TRACKERS:
            raise ConfigError(f"train.trackers: unknown tracker {name!r} ({', '.join(TRACKERS)})")
    for name in cfg.infer.tta:
        parse_tta(name)


def _validate_refit(cfg: Config) -> None:
    """The full-data refit's own settings; those that shape the refit need one (infer.refit)."""
    t = cfg.train
    if t.refit_epochs is not None and t.refit_epochs < 1:
        raise ConfigError(f"train.refit_epochs: {t.refit_epochs} trains nothing; use null (train.epochs) or >= 1")
    if t.refit_init is not None and not re.fullmatch(r"largest_fold|fold[0-9]+", t.refit_init):
        raise ConfigError(f"train.refit_init: {t.refit_init!r} must be largest_fold or fold<k> (one of this "
                          "experiment's fold models), or null (the pretrained encoder)")
    for key, on, what in (("refit_pseudo", t.refit_pseudo, "the pseudo-labels train"),
                          ("refit_init", t.refit_init is not None, "it starts")):
        if on and cfg.infer.refit == "off":
            raise ConfigError(f"train.{key}: {what} the full-data refit, which infer.refit=off leaves out; "
                              "set infer.refit to with or only")


def _validate_windows(cfg: Config) -> None:
    """Crops, resizes, training tiles and inference windows."""
    t = cfg.train
    for key, v in (("train.crop", t.crop), ("train.resize", t.resize), ("train.tile", t.tile),
                   ("infer.window", cfg.infer.window)):
        if v is not None and (len(v) != 2 or not all(x > 0 for x in v)):
            raise ConfigError(f"{key}: expected [height, width] > 0, got {list(v)}")
    if t.tile is not None and (t.crop or t.resize):
        raise ConfigError("train.tile replaces train.crop and train.resize: set only one of them")
    if t.tile is not None and cfg.competition.background is None:
        raise ConfigError("train.tile needs competition.background (the class that is not foreground for train.tile_fg)")
    if not 0 <= t.tile_fg <= 1 or t.tiles_per_image < 1:
        raise ConfigError(f"train.tile_fg: {t.tile_fg} must be in 0..1, train.tiles_per_image >= 1")
    if not 0 <= cfg.infer.overlap < 1:
        raise ConfigError(f"infer.overlap: {cfg.infer.overlap} must be in [0, 1)")
    if cfg.infer.window is not None and t.resize:
        raise ConfigError("infer.window: the models were trained on resized images (train.resize); "
                          "windows are cut at the image's own scale")


def _validate_task(cfg: Config) -> None:
    """The single-label or multilabel task against its labels and losses."""
    d, t = cfg.data, cfg.train
    multilabel = cfg.competition.multilabel
    if multilabel != (d.overlap == "multilabel"):
        raise ConfigError("competition.task: multilabel and data.overlap: multilabel go together (one sigmoid per "
                          f"class needs labels that may overlap); got task {cfg.competition.task}, overlap {d.overlap}")
    if multilabel and (d.num_classes > 7 or d.ignore_index != 255):
        raise ConfigError(f"competition.task: multilabel keeps one bit per class in 8-bit label maps: at most 7 classes "
                          f"(got {d.num_classes}) and data.ignore_index 255 (got {d.ignore_index})")
    if multilabel and t.rare_crop:
        raise ConfigError("train.rare_crop picks crops by class index, not class bits: not for the multilabel task "
                          "(train.tile with train.tile_fg centres windows on any class)")
    if t.class_paste and (multilabel or t.tile):
        raise ConfigError("train.class_paste copies single-label class pixels between whole images: not for the "
                          "multilabel task or train.tile")
    wrong = {"ce"} if multilabel else {"bce"}
    for term in t.losses:
        if term.name in wrong:
            raise ConfigError(f"train.losses: {term.name} is for the {'single-label' if multilabel else 'multilabel'} "
                              f"task; use {'bce' if multilabel else 'ce'} (dice, focal and lovasz serve both)")




def _check_fold_scheme(f) -> None:
    if f.order_regex is not None:
        try:
            re.compile(f.order_regex)
        except re.error as e:
            raise ConfigError(f"folds.order_regex: {f.order_regex!r} is not a regular expression ({e})") from None
    if (f.tail or f.assign) and f.group_regex is None:
        raise ConfigError("folds.tail and folds.assign need folds.group_regex (they name groups)")
    if f.tail and f.order_regex is None:
        raise ConfigError("folds.tail needs folds.order_regex (the frame order that says which frames are latest)")
    for g in (*f.tail, *f.assign):
        if not isinstance(g, str):
            raise ConfigError(f"folds.tail/assign: {g!r} is not a group name (YAML read it as a number: quote it)")
    for g, share in f.tail.items():
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share < 1:
            raise ConfigError(f"folds.tail: {g}: {share!r} must be a share of the group's frames, 0 < share < 1")
    for g, k in f.assign.items():
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < f.k:
            raise ConfigError(f"folds.assign: {g}: {k!r} must be a fold index 0..{f.k - 1}")
    if f.assign and sorted(set(f.assign.values())) != list(range(f.k)):
        raise ConfigError(f"folds.assign: every fold 0..{f.k - 1} needs a group (got {sorted(set(f.assign.values()))})")


def _check_value_maps(d) -> None:
    """data.category_map and data.mask_values point at a class index or the ignore index."""
    for k, c in d.category_map.items():
        if isinstance(k, bool) or not isinstance(k, int) or isinstance(c, bool) or not isinstance(c, int) \
                or not (0 <= c < d.num_classes or c == d.ignore_index):
            raise ConfigError(f"data.category_map: {k!r}: {c!r} must map a COCO category id (an integer) to a class "
                              f"index (0..{d.num_classes - 1}) or the ignore index {d.ignore_index}")
    for raw, c in d.mask_values.items():
        if not (isinstance(raw, int) and 0 <= raw <= 65535 and isinstance(c, int) and (0 <= c < d.num_classes or c == d.ignore_index)):
            raise ConfigError(f"data.mask_values: {raw!r}: {c!r} must map a PNG value (0..65535) to a class index "
                              f"(0..{d.num_classes - 1}) or the ignore index {d.ignore_index}")
