"""A run folder holds one run: one process trains in it at a time (a lock beside it), and it
remembers the config it was started with, so a changed config never silently continues old weights."""
from __future__ import annotations

import time
from pathlib import Path

from filelock import FileLock, Timeout
from omegaconf import OmegaConf

from pipeline.config import Config, config_to_dict, config_to_yaml, flatten
from pipeline.config.load import build_config, migrate_saved
from pipeline.engine.runtime import get_logger
from pipeline.errors import ConfigError, RunFolderError
from pipeline.io import write_text

log = get_logger("pipeline.train")

# Settings that do not change what a run computes: they may differ when a run is resumed.
FREE_TO_CHANGE = ("runtime.progress", "train.num_workers", "train.trackers", "train.mlflow_uri", "train.on_change",
                  "runtime.device", "runtime.compile", "data.root", "data.strict", "outputs", "submissions",
                  "infer.", "submission.", "pseudo.", "competition.bias_shrink",  # make tune's, after training
                  # the refit records these as train.pseudo, train.epochs and train.init_from, which are compared
                  "train.refit_pseudo", "train.refit_epochs", "train.refit_init")


def config_changes(old: dict, new: dict) -> list[tuple[str, object, object]]:
    """(key, old, new) for every setting that differs and matters."""
    a, b = flatten(old), flatten(new)
    keys = sorted(set(a) | set(b))
    return [(k, a.get(k), b.get(k)) for k in keys
            if a.get(k) != b.get(k) and not any(k == f or (f.endswith(".") and k.startswith(f)) for f in FREE_TO_CHANGE)]


def _as_today(saved: Path) -> dict:
    """A run's config.yaml read by today's schema: a setting added since the run started takes its
    default (what the run computed with), so a new feature that is off does not block a resume."""
    old = migrate_saved(OmegaConf.to_container(OmegaConf.load(saved)))
    try:
        return config_to_dict(build_config(old, str(saved)))
    except ConfigError:  # a setting since removed: compared as written, so the change is named
        return old


class RunFolder:
    """`with RunFolder(cfg, main) as run_dir:` holds the lock (rank zero only) and settles what an
    existing folder means: the same config resumes, another refuses or, with train.on_change=restart,
    moves the old run aside to <folder>.replaced-<time> and starts afresh."""

    def __init__(self, cfg: Config, main: bool = True):
        self.cfg, self.main, self.path = cfg, main, cfg.run_dir()
        self.lock = FileLock(str(self.path.parent / f".{self.path.name}.lock"))

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.main:
            try:
                self.lock.acquire(timeout=0)
            except Timeout:
                raise RunFolderError(f"{self.path}: another process is training this run (lock {self.lock.lock_file}); "
                                     "wait for it, or train under another name=") from None
        try:
            self._settle()
        except BaseException:
            self.__exit__()
            raise
        return self.path

    def __exit__(self, *exc) -> None:
        if self.lock.is_locked:
            self.lock.release()

    def _settle(self) -> None:
        saved = self.path / "config.yaml"
        has_run = (self.path / "last.pt").exists() or (self.path / "last.prev.pt").exists()
        if has_run and saved.exists():
            changes = config_changes(_as_today(saved), config_to_dict(self.cfg))
            if changes and self.cfg.train.on_change == "restart":
                if self.main:
                    aside = self.path.with_name(f"{self.path.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
                    self.path.rename(aside)
                    log.info("train: config changed; the old run is kept as %s, starting a new one", aside)
                has_run = False
            elif changes:
                shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in changes[:8])
                more = f" (+{len(changes) - 8} more)" if len(changes) > 8 else ""
                raise RunFolderError(f"{self.path} was started with another config: {shown}{more}. "
                                     "Use train.on_change=restart to keep the old run aside and start a new one, "
                                     "or another name=")
        if not has_run and self.main:
            self.path.mkdir(parents=True, exist_ok=True)
            write_text(self.path / "config.yaml", config_to_yaml(self.cfg))
