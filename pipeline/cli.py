"""Command line: `segpipe <stage> [data=demo] [model=unet] [exp=NAME] [fold=0] [key=value ...]`.
Parses, resolves the configuration once, and calls one stage."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time

STAGES = ("demo-data", "eda", "folds", "train", "train-all", "infer", "submit", "score")


def _dist_info():
    from pipeline.train import DistInfo

    # torchrun's contract is its environment; it is read here, once, and passed down
    return DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                    int(os.environ.get("LOCAL_RANK", 0)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="segpipe", description=__doc__)
    p.add_argument("stage", choices=STAGES)
    p.add_argument("settings", nargs="*", help="data=NAME model=NAME exp=NAME fold=K sub=CSV, or dotted key=value overrides")
    p.add_argument("--configs", default="configs", help="config folder (default: ./configs)")
    args = p.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    named = {"data": "demo", "model": "unet", "exp": None, "fold": "0", "sub": None}
    overrides = []
    for s in args.settings:
        key = s.split("=", 1)[0]
        if key in named and "=" in s:
            named[key] = s.split("=", 1)[1] or named[key]
        else:
            overrides.append(s)

    from pipeline.config import ConfigError, load_config
    from pipeline.data.coco import DataError

    t0 = time.time()
    try:
        if args.stage == "demo-data":
            from pipeline.data.demo import generate

            cfg = load_config(named["data"], named["model"], named["exp"], overrides, config_dir=args.configs)
            generate(cfg.data.root)
            print(f"demo-data: written to {cfg.data.root}")
            return 0
        cfg = load_config(named["data"], named["model"], named["exp"], overrides, int(named["fold"]), args.configs)
        if args.stage == "eda":
            from pipeline import eda

            eda.run(cfg)
        elif args.stage == "folds":
            from pipeline import folds

            folds.run(cfg)
        elif args.stage == "train":
            from pipeline import train

            train.run(cfg, _dist_info())
        elif args.stage == "train-all":
            import dataclasses

            import pandas as pd

            from pipeline import train

            if not cfg.folds_csv.exists():
                raise DataError(f"{cfg.folds_csv}: not found; run `make folds` first")
            for k in sorted(pd.read_csv(cfg.folds_csv)["fold"].unique()):
                train.run(dataclasses.replace(cfg, fold=int(k)), _dist_info())
        elif args.stage == "infer":
            from pipeline import infer

            infer.run(cfg)
        elif args.stage == "submit":
            from pipeline import submit

            submit.run(cfg)
        elif args.stage == "score":
            from pipeline import score

            score.run(cfg, named["sub"])
    except (ConfigError, DataError, FileNotFoundError, ValueError) as e:
        print(f"segpipe {args.stage}: error: {e}", file=sys.stderr)
        return 2
    print(f"segpipe {args.stage}: done in {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
