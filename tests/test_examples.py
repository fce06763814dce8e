"""The example scripts run: examples/train_digits.py for a few steps on NumPy.

Every optimizer the script knows trains for an epoch (those this neural_arch
lacks are skipped, naming the missing module), ``--compare`` trains a list of
them into one plot, and a checkpoint resumes exactly, also for L-BFGS's
full-batch closure steps.

Needs the ``examples`` extra (scikit-learn, matplotlib, tqdm); without it the
tests skip and say so.
"""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import neural_arch as na

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "train_digits.py"

for _module in ("sklearn", "matplotlib", "tqdm"):
    pytest.importorskip(_module, reason=f"train_digits.py needs {_module} (the examples extra)")


def _load_script():
    spec = importlib.util.spec_from_file_location("train_digits", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_SCRIPT = _load_script()  # at collection: its OPTIMIZERS parametrize the tests below


@pytest.fixture(scope="module")
def train_digits():
    return _SCRIPT


def _require(train_digits, name):
    """Skip (naming what is missing) when this neural_arch lacks the optimizer ``name``."""
    cls, why = train_digits.find_optimizer(name)
    if cls is None:
        pytest.skip(why)


def test_one_short_epoch_learns_and_writes_plot_and_checkpoint(train_digits, tmp_path, capsys):
    (res,) = train_digits.main(["--epochs", "1", "--max-steps", "20", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert res["steps"] == 20
    # history["test_loss"][0] is the untrained model's; the final loss is after 20 steps
    assert res["test_loss"] < 0.8 * res["history"]["test_loss"][0]
    checkpoint, plot = tmp_path / "adam.safetensors", tmp_path / "adam.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    state = na.load(checkpoint)
    assert state["step"] == 20
    assert state["run"]["optimizer"] == "adam"
    assert f"checkpoint: {checkpoint}" in out
    assert f"plot:       {plot}" in out


def test_resume_continues_exactly(train_digits, tmp_path):
    """Interrupted (max-steps) and resumed equals uninterrupted, bit for bit on NumPy."""
    whole, split = tmp_path / "whole", tmp_path / "split"
    common = ["--epochs", "2", "--hidden", "32", "--no-progress"]
    train_digits.main([*common, "--out", str(whole)])
    train_digits.main([*common, "--out", str(split), "--max-steps", "50"])  # stops mid-epoch 2
    (res,) = train_digits.main(["--out", str(split), "--resume", "--no-progress"])
    assert res["steps"] == res["total_steps"] == 2 * 45
    a, b = na.load(whole / "adam.safetensors"), na.load(split / "adam.safetensors")
    assert a["model"].keys() == b["model"].keys()
    for name in a["model"]:
        np.testing.assert_array_equal(a["model"][name], b["model"][name], err_msg=name)
    assert a["history"] == b["history"]


def test_resume_refuses_other_settings(train_digits, tmp_path):
    train_digits.main(["--epochs", "1", "--max-steps", "2", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"trained with --lr 0\.003, not 0\.1"):
        train_digits.main(["--lr", "0.1", "--resume", "--out", str(tmp_path)])


def test_missing_checkpoint_is_a_message(train_digits, tmp_path):
    with pytest.raises(SystemExit, match="no checkpoint to resume from"):
        train_digits.main(["--resume", "--out", str(tmp_path)])


def test_missing_backend_is_a_message_not_a_traceback(tmp_path):
    """Run as a script: one error line on stderr, exit status 1, no traceback."""
    if importlib.util.find_spec("cupy") is not None:
        pytest.skip("CuPy is installed here; the missing-backend message cannot be shown")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--backend", "cupy", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (
        "train_digits.py: error: backend 'cupy' is not installed; "
        "install neural_arch[cupy] (cupy-cuda12x)"
    )


@pytest.mark.parametrize("name", _SCRIPT.OPTIMIZERS)
def test_every_optimizer_learns_in_one_epoch_with_its_default_lr(train_digits, tmp_path, name):
    """45 steps (one epoch of batch 32; the full-batch ones: their whole 40-step run)."""
    _require(train_digits, name)
    argv = ["--optimizer", name, "--hidden", "64", "--max-steps", "45", "--no-progress"]
    (res,) = train_digits.main([*argv, "--out", str(tmp_path)])
    assert res["optimizer"] == name
    assert res["steps"] == min(45, res["total_steps"])
    full_batch = train_digits.DEFAULT_BATCH_SIZE.get(name) == train_digits.FULL_BATCH
    assert res["total_steps"] == 40 * (1 if full_batch else 45)
    before, after = res["history"]["test_loss"][0], res["test_loss"]
    assert math.isfinite(after)
    assert after < 0.97 * before, (name, before, after)
    for value in res["model"].state_dict().values():
        assert np.all(np.isfinite(np.asarray(value)))
    state = na.load(tmp_path / f"{name}.safetensors")
    assert state["run"]["optimizer"] == name
    assert state["run"]["lr"] == train_digits.DEFAULT_LR[name]


def test_every_optimizer_has_a_default_lr_and_a_module(train_digits):
    assert set(train_digits.DEFAULT_LR) == set(train_digits.OPTIMIZERS)
    assert set(train_digits.OPTIMIZER_KWARGS) <= set(train_digits.OPTIMIZERS)
    assert set(train_digits.CLASSIC) <= set(train_digits.OPTIMIZERS)
    for name in train_digits.OPTIMIZERS:
        assert name == name.lower()


def test_an_optimizer_not_exported_is_imported_from_its_module(train_digits, monkeypatch):
    """Before ``na.Lion`` exists the script finds neural_arch.optim.lion.Lion."""
    _require(train_digits, "lion")
    from neural_arch.optim.lion import Lion

    monkeypatch.delattr(na, "Lion", raising=False)
    monkeypatch.setattr(train_digits, "_FOUND", {})
    assert train_digits.find_optimizer("lion") == (Lion, "")


def test_a_missing_optimizer_is_skipped_by_compare_all_and_refused_by_name(
    train_digits, monkeypatch, capsys, tmp_path
):
    classes = {**train_digits.OPTIMIZER_CLASSES, "nosuch": ("nosuch", "NoSuch")}
    monkeypatch.setattr(train_digits, "OPTIMIZER_CLASSES", classes)
    monkeypatch.setattr(train_digits, "OPTIMIZERS", tuple(classes))
    monkeypatch.setattr(train_digits, "DEFAULT_LR", {**train_digits.DEFAULT_LR, "nosuch": 0.1})
    monkeypatch.setattr(train_digits, "_FOUND", {})
    names = train_digits.compare_names(["all"])
    assert "nosuch" not in names
    assert names == train_digits.available_optimizers()
    assert names[:3] == ["sgd", "adam", "adamw"]
    err = capsys.readouterr().err
    assert (
        "note: --compare all: skipping nosuch: this neural_arch has no neural_arch.optim.nosuch"
        in err
    )
    with pytest.raises(SystemExit, match="optimizer 'nosuch' is not available"):
        train_digits.main(["--optimizer", "nosuch", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="optimizer 'nosuch' is not available"):
        train_digits.main(["--compare", "adam", "nosuch", "--out", str(tmp_path)])
    assert not any(tmp_path.iterdir())  # refused before training anything


def test_compare_names(train_digits):
    assert train_digits.compare_names([]) == ["adam", "adamw", "sgd"]
    assert train_digits.compare_names(["lion", "adam", "lion"]) == ["lion", "adam"]
    assert train_digits.compare_names(["all"]) == train_digits.available_optimizers()
    with pytest.raises(SystemExit, match="unknown optimizer 'adamm'; choose from all, sgd"):
        train_digits.compare_names(["adam", "adamm"])


def test_compare_with_a_list_writes_one_plot(train_digits, tmp_path, capsys):
    names = ["adam", "rmsprop", "lion"]
    for name in names:
        _require(train_digits, name)
    argv = ["--compare", *names, "--max-steps", "3", "--hidden", "16", "--no-progress"]
    results = train_digits.main([*argv, "--out", str(tmp_path)])
    assert [res["optimizer"] for res in results] == names
    assert [p.name for p in tmp_path.glob("*.png")] == ["compare.png"]
    assert (tmp_path / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == sorted(
        f"{name}.safetensors" for name in names
    )
    out = capsys.readouterr().out
    assert "rmsprop: test accuracy" in out and "(lr 0.01, " in out


def test_compare_alone_trains_adam_adamw_sgd(train_digits, tmp_path):
    argv = ["--compare", "--max-steps", "1", "--hidden", "16", "--no-progress"]
    results = train_digits.main([*argv, "--out", str(tmp_path)])
    assert [res["optimizer"] for res in results] == ["adam", "adamw", "sgd"]
    assert [p.name for p in tmp_path.glob("*.png")] == ["compare.png"]


def test_compare_and_optimizer_together_are_refused(train_digits, tmp_path):
    with pytest.raises(SystemExit, match="leave out --optimizer"):
        train_digits.main(["--compare", "adam", "--optimizer", "sgd", "--out", str(tmp_path)])


def test_lbfgs_takes_full_batch_closure_steps_and_resumes_exactly(train_digits, tmp_path):
    """One ``step(closure)`` per epoch over the whole training set; resumed bit for bit."""
    _require(train_digits, "lbfgs")
    whole, split = tmp_path / "whole", tmp_path / "split"
    common = ["--optimizer", "lbfgs", "--epochs", "3", "--hidden", "16", "--no-progress"]
    (res,) = train_digits.main([*common, "--out", str(whole)])
    assert res["steps"] == res["total_steps"] == 3
    assert res["test_loss"] < 0.5 * res["history"]["test_loss"][0]
    train_digits.main([*common, "--out", str(split), "--max-steps", "1"])
    train_digits.main(["--optimizer", "lbfgs", "--out", str(split), "--resume", "--no-progress"])
    a, b = na.load(whole / "lbfgs.safetensors"), na.load(split / "lbfgs.safetensors")
    assert a["run"]["batch_size"] == b["run"]["batch_size"] == train_digits.FULL_BATCH
    for name in a["model"]:
        np.testing.assert_array_equal(a["model"][name], b["model"][name], err_msg=name)
    assert a["history"] == b["history"]


def test_a_step_may_call_the_closure_several_times(train_digits, tmp_path, monkeypatch):
    """What L-BFGS does; the progress bar and curves report the first evaluation."""
    calls = []

    class ThriceSGD(na.SGD):
        def step(self, closure=None):
            for _ in range(3):
                loss = closure()
                calls.append(loss.item())
            return super().step()

    monkeypatch.setattr(train_digits, "_FOUND", {"sgd": (ThriceSGD, "")})
    argv = ["--optimizer", "sgd", "--epochs", "1", "--hidden", "16", "--no-progress"]
    (res,) = train_digits.main([*argv, "--max-steps", "4", "--out", str(tmp_path)])
    assert res["steps"] == 4 and len(calls) == 12
    assert calls[0] == calls[1] == calls[2]  # no step between a step's evaluations


def test_help_states_each_default_once(train_digits, capsys):
    with pytest.raises(SystemExit) as exc:
        train_digits.parse_args(["--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # undo the line wrapping
    assert "default: None" not in text and "default: False" not in text
    assert "(default: None)" not in text
    defaults = train_digits.DEFAULTS
    for expected in [
        f"--epochs EPOCHS default: {defaults['epochs']} ",
        f"(default: {defaults['batch_size']}; lbfgs, rprop: 0)",
        "(default: adam)",
        "(default: numpy)",
        f"(default: {defaults['scheduler']})",
        f"--seed SEED default: {defaults['seed']} ",
        "(default: runs/digits)",
        "alone adam adamw sgd",
    ]:
        assert text.count(expected) == 1, expected
    # once for each of --optimizer --backend --device --epochs --lr --batch-size --hidden
    # --scheduler --seed --out --max-steps (the argparse formatter added a second one)
    assert text.count("default:") == 11
    for name, lr in train_digits.DEFAULT_LR.items():
        assert f" {name} {lr:g}," in text or f" {name} {lr:g}." in text, name
