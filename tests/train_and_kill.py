"""`python tests/train_and_kill.py STEP <segpipe train settings...>`: trains like `segpipe train`
and SIGKILLs itself after optimiser step STEP (fault injection stays out of the user's config)."""
import sys

from pipeline import train
from pipeline.cli import parse
from pipeline.engine.hooks import KillAtStep

if __name__ == "__main__":
    _, cfg, _ = parse(["train", *sys.argv[2:]])
    train.run(cfg, hooks=[KillAtStep(int(sys.argv[1]))])
