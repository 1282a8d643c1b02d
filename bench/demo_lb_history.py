"""A leaderboard history on the demo, for `make lb` / `make pick` and the README's plot.

After `make demo` (one trained experiment, `demo`), this writes a few more submissions of the
same models (TTA variants, a weaker single fold), scores each with `make score`, and records a
"public" score for each: the competition metric on a fixed third of the demo's hidden test
images (the demo has no public leaderboard; a third of the test set is what Kaggle-style public
boards show). Then it runs `segpipe lb` and `segpipe pick k=2` and copies the plot to
bench/results/cv_vs_public_demo.png.

    python bench/demo_lb_history.py
"""
from __future__ import annotations

import shutil
import subprocess
import sys

from common import REPO

VARIANTS = [("hflip", ["infer.tta=[hflip]"]), ("no_tta", ["infer.tta=[none]"]), ("d4", ["infer.tta=[d4]"]),
            ("fold0_only", ["infer.folds=[0]", "infer.tta=[none]"])]


def segpipe(*args: str) -> str:
    p = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=REPO, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(p.stderr)
    return p.stdout


def public_score(sub: str) -> float:
    """The metric on every third test image (sorted by name): the demo's stand-in public board."""
    sys.path.insert(0, str(REPO))
    from pipeline.competition.metrics import competition_metric
    from pipeline.competition.submission import prediction_masks, read_submission, validate
    from pipeline.config import load_config
    from pipeline.data.sources import open_split

    cfg = load_config("demo", "unet", "demo", [], 0, REPO / "configs")
    truth = open_split(cfg.data, "truth")
    keys = sorted(r.stem for r in truth.records)[::3]
    df = read_submission(sub, cfg.submission)
    maps = {r.stem: truth.mask(k) for k, r in enumerate(truth.records)}
    parsed = validate(df, {k: m.shape for k, m in maps.items()}, list(range(cfg.data.num_classes)), cfg.submission,
                      sub, cfg.data.classes)
    meter = competition_metric(cfg)
    for k in keys:
        meter.update_masks(prediction_masks(parsed, k, list(range(cfg.data.num_classes)), maps[k].shape,
                                            cfg.submission), maps[k])
    return meter.compute()["score"]


def main():
    subs = []
    for name, args in VARIANTS:
        segpipe("infer", "data=demo", "exp=demo", f"name=demo_{name}", "infer.experiments=[demo]", *args)
        out = segpipe("submit", "data=demo", "exp=demo", f"name=demo_{name}")
        sub = out.strip().split("-> ")[-1].split()[0]
        segpipe("score", "data=demo", f"sub={sub}")
        subs.append(sub)
    for sub in subs:
        segpipe("lb", "add", sub, f"public={public_score(sub):.4f}", "data=demo", "replace=true")
    print(segpipe("lb", "data=demo"))
    print(segpipe("pick", "data=demo", "k=2"))
    shutil.copy(REPO / "submissions" / "demo" / "cv_vs_public.png", REPO / "bench" / "results" / "cv_vs_public_demo.png")


if __name__ == "__main__":
    main()
