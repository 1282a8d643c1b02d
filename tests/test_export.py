"""The offline bundle: exported from the demo ensemble, installed into a fresh virtual environment
with no index, run with networking disabled, it writes the submission `make submission` writes."""
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pandas as pd
import pytest

from pipeline.config import StageArgs
from pipeline import export, infer, submit
from pipeline.competition.submission import read_submission
from pipeline.data.sources import open_split
from pipeline.errors import DataError
from pipeline.inference.outdir import Preds
from pipeline.io import write_json
from helpers import TINY, fake_runs


@pytest.mark.slow
def test_bundle_predicts_offline_what_make_submission_writes(make_cfg, tmp_path):
    cfg = make_cfg(*TINY, "infer.tta=[hflip]", "infer.save_probs=true")
    fake_runs(cfg)
    infer.run(cfg)
    untuned = read_submission(submit.run(cfg), cfg.submission)
    # a tuned class bias (make tune's rule for single-label probabilities) travels in the bundle
    write_json(Preds.of(cfg).postprocess, {"rules": {cfg.data.classes[1]: {"bias": 2.0}}})
    expected = read_submission(submit.run(cfg), cfg.submission)
    assert not expected.equals(untuned)
    bundle = export.run(cfg, StageArgs(out=str(tmp_path / "bundle")))
    assert (bundle / "predict.py").exists() and list((bundle / "wheels").glob("segpipe-*.whl"))
    with pytest.raises(DataError, match="not empty"):
        export.run(cfg, StageArgs(out=str(bundle)))

    images = tmp_path / "test_images"  # the competition's test folder: the test images, nothing else
    images.mkdir()
    for r in open_split(cfg.data, "test", labelled=False).records:
        shutil.copy(r.path, images / r.path.name)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    offline = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",) and "PROXY" not in k.upper()}
    offline.update(PIP_INDEX_URL="http://127.0.0.1:9/simple", PIP_NO_INDEX="1", HTTP_PROXY="http://127.0.0.1:9",
                   HTTPS_PROXY="http://127.0.0.1:9", HF_HUB_OFFLINE="1", NO_ALBUMENTATIONS_UPDATE="1")
    wheel = next((bundle / "wheels").glob("*.whl"))
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-index", "--no-deps", str(wheel)], check=True, env=offline)
    # the rest of this environment's packages (torch, smp, ...), but not its editable segpipe
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    where = subprocess.run([str(py), "-c", "import pipeline; print(pipeline.__file__)"], cwd=tmp_path,
                           capture_output=True, text=True, env=offline, check=True).stdout
    assert str(venv) in where, where  # the bundle's segpipe, not the checkout

    out = tmp_path / "bundle_submission.csv"
    p = subprocess.run([str(py), str(bundle / "predict.py"), str(images), str(out), "cpu"], cwd=tmp_path,
                       capture_output=True, text=True, env=offline, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    got = read_submission(out, cfg.submission)
    key = list(expected.columns)
    pd.testing.assert_frame_equal(got.sort_values(key).reset_index(drop=True),
                                  expected.sort_values(key).reset_index(drop=True))


def test_a_member_that_cannot_be_rebuilt_is_refused(make_cfg, tmp_path):
    import torch

    cfg = make_cfg(*TINY)
    fake_runs(cfg)
    best = cfg.run_dir(fold=0) / "best.pt"
    state = torch.load(best, weights_only=False)
    state["model"] = {k: v for k, v in list(state["model"].items())[:-2]}  # weights of another network
    torch.save(state, best)
    with pytest.raises(DataError, match="cannot be rebuilt from the bundle"):
        export.run(cfg, StageArgs(out=str(tmp_path / "bundle")))
    assert not (tmp_path / "bundle").exists()
