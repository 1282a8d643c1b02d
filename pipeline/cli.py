"""Command line: `segpipe <stage> [data=demo] [model=unet] [exp=FILE] [name=RUN] [fold=K|all] [key=value ...]`,
or `segpipe train config=outputs/.../config.yaml` to run a saved config again. Parses, resolves the
configuration once, calls one stage's `run(cfg, args)`; a user's error is one line on stderr and exit
code 2."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from pipeline import check, eda, export, folds, infer, lb, pseudo, score, submit, train, tune
from pipeline.config import DistInfo, StageArgs, load_config, load_config_file
from pipeline.config.schema import REFIT
from pipeline.data import demo, demo_defects, demo_slides
from pipeline.errors import ConfigError, SegpipeError

NAMED = ("data", "model", "exp", "name", "fold", "sub", "config", "public", "replace", "k", "out")
WORDS = ("lb", "export")  # stages that take bare words: `segpipe lb add <file> public=0.8`
DEMOS = {"trash": demo.generate, "defects": demo_defects.generate,
         "defects_overlap": lambda root: demo_defects.generate(root, overlapping=True), "slides": demo_slides.generate}


def demo_data(cfg, args: StageArgs) -> None:
    if cfg.data.demo not in DEMOS:
        raise ConfigError(f"data.demo: {cfg.data.demo!r}: data {cfg.data.name} has no built-in generator "
                          f"({', '.join(DEMOS)})")
    DEMOS[cfg.data.demo](cfg.data.root)
    logging.getLogger("pipeline").info("demo-data: written to %s", cfg.data.root)


STAGES = {"demo-data": demo_data, "check": check.run, "eda": eda.run, "folds": folds.run, "train": train.run,
          "train-all": train.run_all, "infer": infer.run, "pseudo": pseudo.run, "tune": tune.run, "submit": submit.run,
          "score": score.run, "lb": lb.run, "pick": lb.run_pick, "export": export.run}


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = super().format(record)
        return msg if record.levelno == logging.INFO else f"{record.levelname.lower()}: {msg}"


def _stage_args(named: dict, dist: DistInfo) -> StageArgs:
    k = named["k"] or "2"
    if not k.isdigit() or int(k) < 1:
        raise ConfigError(f"k={k}: expected a positive integer")
    replace = (named["replace"] or "false").lower()
    if replace not in ("true", "false"):
        raise ConfigError(f"replace={named['replace']}: expected true or false")
    return StageArgs(dist, named["sub"], named["out"], named["public"], replace == "true", int(k), tuple(named["words"]))


def parse(argv: list[str] | None = None, dist: DistInfo = DistInfo()):
    """(stage, Config, StageArgs) from the command line."""
    p = argparse.ArgumentParser(prog="segpipe", description=__doc__)
    p.add_argument("stage", choices=list(STAGES))
    p.add_argument("settings", nargs="*", help="data=NAME model=NAME exp=FILE name=RUN fold=K sub=CSV config=YAML, "
                                               "or dotted key=value overrides")
    p.add_argument("--configs", default="configs", help="config folder (default: ./configs)")
    args = p.parse_intermixed_args(argv)
    named: dict = {**dict.fromkeys(NAMED), "data": "demo", "model": "unet", "words": []}
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
    return args.stage, cfg, _stage_args(named, dist)


def main(argv: list[str] | None = None) -> int:
    dist = DistInfo.from_env(os.environ)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_Format("%(message)s"))
    logging.basicConfig(level=logging.INFO if dist.main else logging.WARNING, handlers=[handler], force=True)
    t0 = time.time()
    stage = (argv if argv is not None else sys.argv[1:] or ["?"])[0]
    try:
        stage, cfg, args = parse(argv, dist)
        STAGES[stage](cfg, args)
    except (SegpipeError, OSError) as e:  # OSError: missing files, read-only folders, a full disk
        print(f"segpipe {stage}: error: {e}", file=sys.stderr)
        return 2
    logging.getLogger("pipeline").info("segpipe %s: done in %.1fs", stage, time.time() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
