"""`make lb`, `make lb-add`, `make pick`: the public leaderboard score beside CV, and the final pick.

    segpipe lb data=camvid                          the table and submissions/<data>/cv_vs_public.png
    segpipe lb add <submission.csv> public=0.812    record the public score read off the competition page
    segpipe pick data=camvid k=2                    propose the final K submissions, by CV
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.competition.leaderboard import (add_public, history, pick, plot_cv_vs_public, read_leaderboard,
                                              read_submission_meta)
from pipeline.config import Config, StageArgs
from pipeline.engine.runtime import get_logger
from pipeline.errors import ConfigError
from pipeline.inference.outdir import Preds
from pipeline.io import write_json

log = get_logger(__name__)


def _board(cfg: Config) -> Path:
    return Path(cfg.submissions) / "leaderboard.csv"


def _number(value: str | None, key: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value}: expected a number") from None


def add(cfg: Config, sub: str | None, public: str | None, replace: bool) -> pd.DataFrame:
    if not sub:
        raise ConfigError("lb add: name the submission: segpipe lb add <file.csv> public=<score>")
    board = add_public(_board(cfg), sub, _number(public, "public"), replace)
    log.info("lb: public score %s recorded for %s", public, sub)
    return board


def show(cfg: Config) -> pd.DataFrame:
    hist = history(read_leaderboard(_board(cfg)), cfg.data.name)
    plot = Path(cfg.submissions) / cfg.data.name / "cv_vs_public.png"
    r = plot_cv_vs_public(hist, plot) if len(hist) else None
    with pd.option_context("display.width", 200, "display.max_colwidth", 40):
        table = hist.drop(columns=["file"]).to_string(index=False, float_format=lambda v: f"{v:.4f}")
    flagged = hist[hist["disagrees"]]
    notes = "".join(f"\n  ! {s}: public {p:.4f} vs CV {c:.4f}: {g:+.4f} off the usual public-CV gap, more than twice "
                    "the folds' spread (public-LB noise on a small share of the test set, or a leak)" for s, p, c, g in
                    zip(flagged["submission"], flagged["public"], flagged["cv"], flagged["gap_vs_usual"]))
    corr = f"; CV vs public correlation {r:.2f}" if r is not None else ""
    log.info("lb: %s, %d submission(s)%s -> %s\n%s%s", cfg.data.name, len(hist), corr, plot, table, notes)
    return hist


def choose(cfg: Config, k: int) -> list[dict]:
    hist = history(read_leaderboard(_board(cfg)), cfg.data.name)
    oof = {}
    for f in hist["file"]:
        meta = read_submission_meta(Path(f))
        oof[f] = Preds(Path(meta["preds"])).oof.labels if meta.get("preds") else None
    picked = pick(hist, k, oof)
    write_json(Path(cfg.submissions) / cfg.data.name / "pick.json", {"k": k, "picked": picked})
    lines = [f"  {i + 1}. {p['submission']} (CV {p['cv']:.4f}"
             + (f", public {p['public']:.4f}" if p["public"] is not None else "") + f"): {p['why']}"
             + ("; note: its public score disagrees with CV" if p["public_disagrees"] else "")
             for i, p in enumerate(picked)]
    log.info("pick: the final %d by CV (never by public score alone):\n%s", len(picked), "\n".join(lines))
    return picked


def run(cfg: Config, args: StageArgs = StageArgs()) -> object:
    words = args.words
    action = words[0] if words else "show"
    if action == "add":
        return add(cfg, words[1] if len(words) > 1 else args.sub, args.public, args.replace)
    if action == "show" and len(words) <= 1:
        return show(cfg)
    raise ConfigError(f"lb: unknown action {' '.join(words)!r} (segpipe lb | segpipe lb add <file.csv> public=<score>)")


def run_pick(cfg: Config, args: StageArgs = StageArgs()) -> list[dict]:
    return choose(cfg, args.k)

