"""`make export EXP=...`: an offline inference bundle for code competitions (see
inference/bundle.py for its layout): the test-set ensemble of `make infer-tta` (fold models and/or
refits, `infer.checkpoint`), weights only (optionally float16: `segpipe export ... half`),
the resolved config, the tuned post-processing rules, and a wheel of segpipe. Every member is
rebuilt from the bundle's own files before the bundle is declared complete."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import torch

import pipeline
from pipeline.config import Config, ModelConfig, StageArgs, config_to_yaml
from pipeline.engine import checkpoint
from pipeline.engine.runtime import get_logger
from pipeline.errors import ConfigError, DataError, WeightsError
from pipeline.inference.bundle import BUNDLE, PREDICT_PY, REQUIREMENTS
from pipeline.inference.ensemble import find_members
from pipeline.inference.outdir import Preds
from pipeline.io import write_json, write_text
from pipeline.models import build_model

log = get_logger(__name__)


def _rebuilds(path: Path) -> None:
    """The member must load into a network built from its own model config, with no pretrained file."""
    state = checkpoint.load_weights(path)
    try:
        model = build_model(ModelConfig(**state["model_cfg"]), len(state["classes"]), pretrained=False)
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state["model"].items()})
    except (WeightsError, RuntimeError, TypeError, KeyError) as e:
        raise DataError(f"{path}: this member cannot be rebuilt from the bundle ({str(e).splitlines()[0][:200]})") from None


def _wheel(out: Path) -> Path:
    src = Path(pipeline.__file__).resolve().parents[1]
    if not (src / "pyproject.toml").exists():
        raise DataError(f"{src}: segpipe's source tree (pyproject.toml) is needed to build its wheel; "
                        "run export from a checkout (pip install -e .)")
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
           "-w", str(out), str(src)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(out.glob("segpipe-*.whl"))
    if p.returncode != 0 or not wheels:
        raise DataError(f"building segpipe's wheel failed: {(p.stderr or p.stdout).strip().splitlines()[-1:]}")
    shutil.rmtree(src / "build", ignore_errors=True)
    return wheels[-1]


def run(cfg: Config, args: StageArgs = StageArgs()) -> Path:
    """`args.out`: the bundle folder; the word `half` stores fp16 weights."""
    out, half = args.out, "half" in args.words
    if not out:
        raise ConfigError("export: name the bundle folder: segpipe export exp=<EXP> out=<dir>")
    folder = Path(out)
    if folder.exists() and any(folder.iterdir()):
        raise DataError(f"{folder}: exists and is not empty; export writes a new folder")
    _, members = find_members(cfg)
    tuned = Preds.of(cfg).read_rules(cfg.data.classes)[0] if cfg.submission.postprocess else None
    rules_doc = tuned["rules"] if tuned else None
    partial = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    (partial / "models").mkdir(parents=True)
    try:
        _write(cfg, partial, members, rules_doc, half)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if folder.exists():
        folder.rmdir()
    partial.rename(folder)
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20
    wheel = next((folder / "wheels").glob("segpipe-*.whl")).name
    log.info("export: %d model(s), TTA %s, %s post-processing rule(s), %.1f MiB -> %s\n  offline: pip install --no-index "
             "--no-deps %s/wheels/%s; python %s/predict.py <test images> submission.csv", len(members),
             list(cfg.infer.tta), len(rules_doc or {}), size, folder, folder, wheel, folder)
    return folder


def _probs_dtype(cfg: Config) -> str:
    """The form make submission read the probabilities in: the bundle rounds its own to it, so that
    tuned rules decide the same pixels."""
    preds = Preds.of(cfg)
    kept = preds.read_manifest().get("probs_dtype") if preds.manifest.exists() else None
    return kept or cfg.infer.probs_dtype


def _write(cfg: Config, partial: Path, members, rules_doc, half: bool) -> None:
    listed = []
    for m in members:
        name = f"{m.exp}_{'all' if m.fold < 0 else f'fold{m.fold}'}_{m.path.stem}.pt"
        checkpoint.save(partial / "models" / name, checkpoint.model_only(checkpoint.load_weights(m.path), half),
                        keep_previous=False)
        _rebuilds(partial / "models" / name)
        listed.append({"exp": m.exp, "fold": m.fold, "file": f"models/{name}", "weight": m.weight})
    write_text(partial / "config.yaml", config_to_yaml(cfg))
    write_text(partial / "predict.py", PREDICT_PY)
    write_text(partial / "requirements.txt", "\n".join(REQUIREMENTS) + "\n")
    wheel = _wheel(partial / "wheels")
    write_json(partial / BUNDLE, {"exp": cfg.exp, "data": cfg.data.name, "members": listed,
                                  "tta": list(cfg.infer.tta), "window": list(cfg.infer.window) if cfg.infer.window else None,
                                  "overlap": cfg.infer.overlap, "postprocess": rules_doc, "half": half,
                                  "probs_dtype": _probs_dtype(cfg),
                                  "requirements": list(REQUIREMENTS), "wheel": f"wheels/{wheel.name}",
                                  "torch_trained_with": torch.__version__})
