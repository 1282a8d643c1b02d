"""Command line: `segpipe <stage> [data=demo] [model=unet] [exp=FILE] [name=RUN] [fold=K|all] [key=value ...]`,
or `segpipe train config=outputs/.../config.yaml` to run a saved config again. Parses, resolves the
configuration once, calls one stage; a user's error is one line on stderr and exit code 2."""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import os
import sys
import time

from pipeline.errors import ConfigError, SegpipeError

NAMED = ("data", "model", "exp", "name", "fold", "sub", "config", "public", "replace", "k", "out")
WORDS = ("lb", "export")  # stages that take bare words: `segpipe lb add <file> public=0.8`


def _demo_data(cfg, named, dist):
    modules = {"trash": "pipeline.data.demo", "defects": "pipeline.data.demo_defects",
               "defects_overlap": "pipeline.data.demo_defects", "slides": "pipeline.data.demo_slides"}
    if cfg.data.demo not in modules:
        raise ConfigError(f"data.demo: {cfg.data.demo!r}: data {cfg.data.name} has no built-in generator "
                          f"({', '.join(modules)})")
    module = modules[cfg.data.demo]
    extra = {"overlapping": True} if cfg.data.demo == "defects_overlap" else {}
    importlib.import_module(module).generate(cfg.data.root, **extra)
    logging.getLogger("pipeline").info("demo-data: written to %s", cfg.data.root)


def _stage(module: str):
    """A stage whose whole interface is run(cfg)."""
    def call(cfg, named, dist):
        importlib.import_module(f"pipeline.{module}").run(cfg)

    return call


def _train(cfg, named, dist):
    from pipeline import train

    train.run(cfg, dist)


def _train_all(cfg, named, dist):
    from pipeline import train
    from pipeline.data.pool import read_folds

    for k in sorted(k for k in read_folds(cfg)["fold"].unique() if k >= 0):  # -1: train-only images
        train.run(dataclasses.replace(cfg, fold=int(k)), dist)


def _score(cfg, named, dist):
    from pipeline import score

    score.run(cfg, named["sub"])


def _lb(cfg, named, dist):
    from pipeline import lb

    lb.run(cfg, named["words"], named)


def _pick(cfg, named, dist):
    from pipeline import lb

    lb.run_pick(cfg, named)


def _export(cfg, named, dist):
    from pipeline import export

    export.run(cfg, named["out"], half="half" in named["words"])


STAGES = {"demo-data": _demo_data, "check": _stage("check"), "eda": _stage("eda"), "folds": _stage("folds"),
          "train": _train, "train-all": _train_all, "infer": _stage("infer"), "pseudo": _stage("pseudo"), "tune": _stage("tune"),
          "submit": _stage("submit"), "score": _score, "lb": _lb, "pick": _pick, "export": _export}


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = super().format(record)
        return msg if record.levelno == logging.INFO else f"{record.levelname.lower()}: {msg}"


def parse(argv: list[str] | None = None):
    """(stage, Config, named settings) from the command line."""
    from pipeline.config import load_config, load_config_file
    from pipeline.config.schema import REFIT

    p = argparse.ArgumentParser(prog="segpipe", description=__doc__)
    p.add_argument("stage", choices=list(STAGES))
    p.add_argument("settings", nargs="*", help="data=NAME model=NAME exp=FILE name=RUN fold=K sub=CSV config=YAML, "
                                               "or dotted key=value overrides")
    p.add_argument("--configs", default="configs", help="config folder (default: ./configs)")
    args = p.parse_intermixed_args(argv)
    named: dict = {"data": "demo", "model": "unet", "exp": None, "name": None, "fold": None, "sub": None, "config": None,
                   "public": None, "replace": None, "k": None, "out": None, "words": []}
    overrides = []
    for s in args.settings:
        key, eq, value = s.partition("=")
        if key in NAMED and eq:
            named[key] = value or named[key]
        elif not eq and args.stage in WORDS:
            named["words"].append(s)
        else:
            overrides.append(s)
    fold = None
    if named["fold"] == "all":
        fold = REFIT
    elif named["fold"] is not None:
        try:
            fold = int(named["fold"])
        except ValueError:
            raise ConfigError(f"fold={named['fold']}: expected an integer or all (the full-data refit)") from None
    if named["config"]:
        cfg = load_config_file(named["config"], overrides, fold)
    else:
        cfg = load_config(named["data"], named["model"], named["exp"], overrides, 0 if fold is None else fold,
                          args.configs, named["name"])
    return args.stage, cfg, named


def main(argv: list[str] | None = None) -> int:
    from pipeline.engine.runtime import DistInfo

    dist = DistInfo.from_env(os.environ)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_Format("%(message)s"))
    logging.basicConfig(level=logging.INFO if dist.main else logging.WARNING, handlers=[handler], force=True)
    t0 = time.time()
    stage = (argv if argv is not None else sys.argv[1:] or ["?"])[0]
    try:
        stage, cfg, named = parse(argv)
        STAGES[stage](cfg, named, dist)
    except (SegpipeError, OSError) as e:  # OSError: missing files, read-only folders, a full disk
        print(f"segpipe {stage}: error: {e}", file=sys.stderr)
        return 2
    logging.getLogger("pipeline").info("segpipe %s: done in %.1fs", stage, time.time() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
