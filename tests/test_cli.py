"""The command line: a user's mistake is one line on stderr with exit code 2, never a traceback."""
import pytest
import torch

from pipeline import folds
from pipeline.cli import main
from pipeline.config import load_config
from helpers import REPO, TINY


@pytest.fixture
def run_cli(demo_root, tmp_path, capsys):
    base = [f"data.root={demo_root}", f"outputs={tmp_path / 'outputs'}", "runtime.progress=false", *TINY]

    def run(stage, *extra, folds_first=True):
        if folds_first:
            folds.run(load_config("demo", "unet", None, base, 0, REPO / "configs"))
        capsys.readouterr()
        rc = main([stage, "--configs", str(REPO / "configs"), *base, *extra])
        out = capsys.readouterr()
        return rc, out.out, out.err

    return run


def _one_line(rc, err, stage, match):
    assert rc == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"segpipe {stage}: error: "), err
    assert match in lines[0], lines[0]


@pytest.mark.parametrize("extra,match", [
    (["fold=abc"], "fold=abc: expected an integer"),
    (["exp=nosuch"], "exp=nosuch: no file"),
    (["runtime.channels_last=1"], "expected true or false"),
    (["fold=9"], "fold 9 is not in"),  # DataError
])
def test_user_errors_are_one_line(run_cli, extra, match):
    rc, _, err = run_cli("train", *extra)
    _one_line(rc, err, "train", match)


def test_missing_data_is_one_line(run_cli):
    rc, _, err = run_cli("folds", "data.root=/nonexistent/place", folds_first=False)
    _one_line(rc, err, "folds", "/nonexistent/place")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_missing_cuda_is_one_line(run_cli):
    rc, _, err = run_cli("train", "runtime.device=cuda")
    _one_line(rc, err, "train", "no CUDA device")


def test_parameter_group_error_is_one_line(run_cli, monkeypatch):
    from pipeline.engine import optim
    from pipeline.errors import ParamGroupError

    def broken(model, groups):
        raise ParamGroupError("optimiser parameter groups are wrong: 1 trainable parameter(s) in no group")

    monkeypatch.setattr(optim, "check_param_groups", broken)
    rc, _, err = run_cli("train")
    _one_line(rc, err, "train", "parameter groups are wrong")


def test_saved_config_reruns_the_same_run(run_cli, tmp_path, capsys):
    rc, out, _ = run_cli("train", "name=saved", "train.epochs=1")
    assert rc == 0
    saved = tmp_path / "outputs" / "demo" / "runs" / "saved" / "fold0" / "config.yaml"
    assert main(["train", f"config={saved}"]) == 0  # nothing else on the command line
    out = capsys.readouterr().out
    assert "resuming" in out and "after epoch 1" in out and "complete: nothing to train" in out
    # a changed hyper-parameter on a finished run is refused, naming the key, instead of "resuming"
    assert main(["train", f"config={saved}", "train.lr_decoder=0.5"]) == 2
    err = capsys.readouterr().err
    assert "train.lr_decoder" in err and "on_change=restart" in err


def test_an_unwritable_output_is_one_line(run_cli, monkeypatch):
    from pipeline import folds as folds_stage

    def read_only(path, *a, **k):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(folds_stage, "write_text", read_only)
    rc, _, err = run_cli("folds", folds_first=False)
    _one_line(rc, err, "folds", "Permission denied")
