"""Which CV predicts the leaderboard? The competition simulated on CamVid's labelled frames.

The real test set is 171 frames of a drive no labelled split holds (Seq05VD) and 62 frames that
continue a training drive (0001TP). Here a pseudo-test of the same make-up is held out of the
labelled frames: drive 0006R0 whole (101 frames, a new drive) and the last 35 frames of 0016E5 (a
continuation of a training drive): 74% / 26%, as the real test's 73% / 27%. The whole recipe then
runs on the rest (0001TP and the first 270 frames of 0016E5) with the same kind of folds as
configs/data/camvid.yaml (0001TP held out whole; the later half of the remaining 0016E5), its
submission is scored on the pseudo-test's labels, and each CV figure is compared with that score.

    python bench/camvid_simulation.py [--exp camvid_lite0] [--args "train.epochs=12"]

Another draw of the same make-up: `--new-drive 0001TP --continued 0006R0 --later 23 --hold-whole
0006R0 --tail-of 0016E5 --name camvid_simulation_0001TP` holds out the dusk drive 0001TP whole
and the last 23 frames of 0006R0 (73% / 27%), and folds what is left as the rest of 0006R0 whole
against the later half of 0016E5, as configs/data/camvid.yaml does.

`--reuse` keeps a draw's trained models (train-all resumes them, training only what the recipe
still lacks) and runs its folds, inference, tuning, submission and scoring again (results under
<name>_reused). `--reuse --refit with` (or `only`) adds the draw's
full-data refit to the submitted ensemble (or submits it alone), training it first if the draw has
none (results under <name>_refit_<mode>): the CV cannot score a refit, the pseudo-test can.
`--pseudo` trains that refit on the pseudo-test images too, labelled by the fold ensemble where it is
confident (`make pseudo`; the fold models and the CV are untouched; results under
<name>_refit_<mode>_pseudo).

The layout is built under data/<name>/ as symbolic links to ../shared/datasets/camvid (nothing
copied). Results: bench/results/<name>.json and the stage logs in bench/results/<name>/.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from common import FOLDS_ONLY, REPO, SHARED, invocation, machine

CAMVID = SHARED / "camvid"
DRIVES = ("0001TP", "0006R0", "0016E5")  # the labelled drives (train and val splits together)


def frames(drive: str) -> list[Path]:
    found = [p for split in ("train", "val") for p in (CAMVID / split / "images").glob(f"{drive}_*.jpg")]
    return sorted(found, key=lambda p: int(p.stem.split("_")[1].lstrip("f")))


def build_layout(root: Path, new_drive: str, continued: str, later: int) -> dict:
    """train/ (the labelled frames left), test/ (the pseudo-test images), test_masks/ (its labels)."""
    cont = frames(continued)
    pseudo_test = frames(new_drive) + cont[-later:]
    labelled = [p for d in DRIVES if d not in (new_drive, continued) for p in frames(d)] + cont[:-later]
    for sub in ("train/images", "train/masks", "test/images", "test_masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)

    def link(src: Path, dst: Path):
        if not dst.exists():
            dst.symlink_to(src.resolve())

    for img in labelled:
        link(img, root / "train/images" / img.name)
        link(img.parent.parent / "masks" / f"{img.stem}.png", root / "train/masks" / f"{img.stem}.png")
    images = []
    for k, img in enumerate(pseudo_test):
        link(img, root / "test/images" / img.name)
        link(img.parent.parent / "masks" / f"{img.stem}.png", root / "test_masks" / f"{img.stem}.png")
        images.append({"id": k + 1, "file_name": f"test/images/{img.name}", "height": 360, "width": 480})
    (root / "test.json").write_text(json.dumps({"images": images, "annotations": [], "categories": []}))
    return {"labelled": len(labelled), "pseudo_test": len(pseudo_test), "pseudo_test_new_drive": len(pseudo_test) - later,
            "pseudo_test_later_frames": later, "new_drive": new_drive, "continued": continued}


def stage(name: str, exp: str, extra: list[str], log_dir: Path) -> float:
    cmd = [sys.executable, "-m", "pipeline", name, "data=camvid_sim", f"exp={exp}", *extra]
    t = time.time()
    with open(log_dir / f"{name}.log", "w") as log:
        subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=True)
    return round(time.time() - t, 1)


def draw_config(exp: str, extra: list[str]):
    """The resolved config of a draw's runs, from the overrides its stages ran with."""
    from pipeline.config import load_config

    overrides = [e for e in extra if "=" in e and not e.startswith("name=")]
    name = next((e.split("=", 1)[1] for e in extra if e.startswith("name=")), None)
    return load_config("camvid_sim", "unet", exp, overrides, 0, REPO / "configs", name)


def score_by_kind(exp: str, extra: list[str], new_drive: str) -> dict:
    """The pseudo-test score of each kind of frame, from the predicted label maps."""
    sys.path.insert(0, str(REPO))
    from pipeline.competition.metrics import competition_metric
    from pipeline.data.sources import open_split
    from pipeline.inference.outdir import Preds

    cfg = draw_config(exp, extra)
    truth = open_split(cfg.data, "truth")
    meters = {"new_drive": competition_metric(cfg), "later_frames": competition_metric(cfg)}
    for k, r in enumerate(truth.records):
        kind = "new_drive" if r.stem.startswith(new_drive) else "later_frames"
        meters[kind].update(Preds.of(cfg).read_label(r.stem), truth.mask(k))
    return {k: m.compute()["score"] for k, m in meters.items()}


def pseudo_labelled_refit(exp: str, extra: list[str], out: Path) -> tuple[list[str], dict]:
    """Pseudo-labels of the pseudo-test images by the draw's fold ensemble, and a full-data refit
    trained on them besides the labelled frames, in a run <run>_pl whose folds are the draw's
    (linked, not copied). Returns the overrides that name that run, and the stages' seconds."""
    cfg = draw_config(exp, extra)
    run = REPO / cfg.out_dir / "runs" / cfg.exp
    pl = run.parent / f"{cfg.exp}_pl"
    for fold in sorted(run.glob("fold*")):
        (pl / fold.name).parent.mkdir(parents=True, exist_ok=True)
        if not (pl / fold.name).exists():
            (pl / fold.name).symlink_to(fold.resolve(), target_is_directory=True)
    seconds = {"pseudo": stage("pseudo", exp, [*extra, *FOLDS_ONLY], out)}
    named = [e for e in extra if not e.startswith("name=")] + [f"name={cfg.exp}_pl"]
    if not (pl / "all" / "best.pt").exists():
        seconds["train_refit"] = stage("train", exp, ["fold=all", f"train.pseudo={cfg.exp}", *named], out)
    return named, seconds


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--exp", default="camvid_lite0")
    p.add_argument("--args", default="", help="key=value overrides for every stage")
    p.add_argument("--new-drive", default="0006R0", help="the drive held out whole (the test's unseen drive)")
    p.add_argument("--continued", default="0016E5", help="the drive whose last frames join the pseudo-test")
    p.add_argument("--later", type=int, default=35, help="how many of its last frames")
    p.add_argument("--name", default="camvid_simulation", help="results name (and data/<name>/ for the layout)")
    p.add_argument("--hold-whole", default=None, help="folds: the drive held out whole (default: the drive left)")
    p.add_argument("--tail-of", default=None, help="folds: the drive whose later half is held out (default: --continued)")
    p.add_argument("--reuse", action="store_true", help="keep the draw's trained models: folds (its own), infer, tune, submit, score again")
    p.add_argument("--refit", choices=("with", "only"), default=None,
                   help="with --reuse: the full-data refit joins (with) or replaces (only) the fold models on the pseudo-test")
    p.add_argument("--pseudo", action="store_true", help="with --refit: the refit also trains on the fold ensemble's "
                                                          "confident labels of the pseudo-test images")
    p.add_argument("--tag", default="", help="appended to the results name: a --reuse run with other --args beside the plain one")
    a = p.parse_args()
    os.chdir(REPO)  # the configs' relative paths (data/<name>, outputs/) are the stages' (cwd=REPO), wherever this runs from
    if a.refit and not a.reuse:
        p.error("--refit needs --reuse (the draw's fold models)")
    if a.pseudo and not a.refit:
        p.error("--pseudo needs --refit (the model that trains on the pseudo-labels)")
    extra = ["infer.cv_offset=0.0", *shlex.split(a.args)]  # the raw CV: the offset is what this measures
    if a.name != "camvid_simulation":  # another draw: its own layout, runs and folds
        whole = a.hold_whole or next(d for d in DRIVES if d not in (a.new_drive, a.continued))
        tail = a.tail_of or a.continued
        extra = [f"data.root=data/{a.name}", f"name={a.exp}_{a.name}", "folds.tail=null", "folds.assign=null",
                 f"folds.tail={{'{tail}': 0.5}}", f"folds.assign={{'{whole}': 0, '{tail}@tail': 1}}", *extra]
    tag = a.name + (f"_refit_{a.refit}" if a.refit else "_reused" if a.reuse else "")  # beside the draw's first results
    tag += "_pseudo" if a.pseudo else ""
    tag += f"_{a.tag}" if a.tag else ""
    out = REPO / "bench" / "results" / tag
    out.mkdir(parents=True, exist_ok=True)
    layout = build_layout(REPO / "data" / (a.name if a.name != "camvid_simulation" else "camvid_sim"),
                          a.new_drive, a.continued, a.later)
    seconds = {}
    if a.pseudo:
        extra, seconds = pseudo_labelled_refit(a.exp, extra, out)
    elif a.refit:  # the plain refit, whatever the recipe says
        extra.append("train.refit_pseudo=false")
    if a.refit:
        extra.append(f"infer.refit={a.refit}")
    # train-all resumes the draw's finished fold runs in seconds and trains what the recipe still
    # lacks (a refit, its pseudo-labels); --pseudo trained its own refit above
    stages = ("folds", "infer", "tune", "submit", "score") if a.pseudo else ("folds", "train-all", "infer", "tune", "submit", "score")
    for s in stages:
        seconds[s] = stage(s, a.exp, extra, out)
    run_name = next((e.split("=", 1)[1] for e in extra if e.startswith("name=")), a.exp)
    preds = REPO / "outputs" / "camvid_sim" / "preds" / run_name
    manifest = json.loads((preds / "manifest.json").read_text())
    import pandas as pd

    board = pd.read_csv(REPO / "submissions" / "leaderboard.csv")
    local = board[board["file"].astype(str).str.contains("camvid_sim")].iloc[-1]
    score_json = json.loads((preds / "oof" / "score.json").read_text())
    tuned = json.loads((preds / "postprocess.json").read_text())
    cv_tuned = tuned.get("cv") or {}
    result = {"command": invocation(), "exp": a.exp, "args": extra, "layout": layout, "seconds": seconds,
              "pseudo_test_score": float(local["local_score"]),
              "pseudo_test_score_before_postprocess": None if pd.isna(local.get("local_score_raw")) else float(local["local_score_raw"]),
              "pseudo_test_score_by_kind_before_postprocess": score_by_kind(a.exp, extra, a.new_drive),
              "submission": str(local["file"]),
              "cv": {"pooled_oof": manifest["cv_pooled"], "fold_mean": manifest["cv_fold_mean"],
                     "fold_std": manifest["cv_fold_std"], "folds": manifest["cv_folds"],
                     "test_matched": manifest["cv_score"] if manifest["cv_score_kind"] == "test_matched" else None,
                     "test_matched_interval": manifest["cv_interval"]},
              "cv_test_matched": score_json.get("cv_test_matched"),
              "postprocess": {"rules": tuned["rules"], "holdout_gain_mean": tuned["holdout_gain_mean"],
                              "cv_test_matched": cv_tuned.get("cv_score") if cv_tuned.get("cv_score_kind") == "test_matched" else None,
                              "cv_interval": cv_tuned.get("cv_interval"), "cv_pooled": cv_tuned.get("cv_pooled"),
                              "per_class": (cv_tuned.get("cv_test_matched") or {}).get("per_class")},
              "machine": machine(),
              "when": time.strftime("%Y-%m-%d %H:%M")}
    (REPO / "bench" / "results" / f"{tag}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
