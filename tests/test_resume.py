"""A run stopped by SIGTERM exits 75, and the same command resumes it to the uninterrupted result."""

import json
import signal
import subprocess
import sys
import time

import pytest
from conftest import run_cli
from safetensors.torch import load_file

pytestmark = pytest.mark.smoke
ARGS = ["pretrain", "-r", "pretrain/tiny-debug", "-q", "--set", "training.max_steps=400", "--set", "training.save_steps=25"]


def test_sigterm_exits_75_and_the_resumed_run_equals_the_uninterrupted_one(tmp_path, pretrained):
    # One tokenizer for both runs: the `tokenizers` WordPiece trainer breaks ties between equally
    # frequent merges in a per-process order, so two trainings can differ (a resume reuses its own).
    args = [*ARGS, "--set", f"tokenizer.name_or_path={pretrained}"]
    straight = tmp_path / "straight"
    assert run_cli(*args, "-o", straight).returncode == 0
    stopped = tmp_path / "stopped"
    proc = subprocess.Popen([sys.executable, "-m", "bigmodel_cli", *args, "-o", str(stopped)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list(stopped.glob("checkpoint-25/trainer_state.json")) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-2000:]
    assert "run the same command again to resume" in err
    assert not (stopped / "metrics.json").exists()
    resumed = run_cli(*args, "-o", stopped)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stderr
    a = json.loads((straight / "metrics.json").read_text())
    b = json.loads((stopped / "metrics.json").read_text())
    assert b["eval_loss"] == pytest.approx(a["eval_loss"], abs=1e-6)
    wa, wb = load_file(straight / "model.safetensors"), load_file(stopped / "model.safetensors")
    assert all((wa[k] - wb[k]).abs().max() < 1e-6 for k in wa)
