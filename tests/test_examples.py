"""The example scripts run: examples/train_digits.py for a few steps on NumPy.

Needs the ``examples`` extra (scikit-learn, matplotlib, tqdm); without it the
tests skip and say so.
"""

from __future__ import annotations

import importlib.util
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


@pytest.fixture(scope="module")
def train_digits():
    spec = importlib.util.spec_from_file_location("train_digits", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
