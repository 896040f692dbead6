"""`kill -9` at any moment loses at most the steps since the last complete checkpoint: running the
same command again resumes, and the finished run equals the uninterrupted one (same eval loss to
1e-6, same weights). CI runs a few trials; `make test-slow` runs many more."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
from conftest import finished_run, run_cli
from safetensors.torch import load_file

STEPS, SAVE_EVERY = 120, 10
ARGS = ["pretrain", "-r", "pretrain/tiny-debug", "-q", "--set", f"training.max_steps={STEPS}",
        "--set", f"training.save_steps={SAVE_EVERY}", "--set", "training.save_total_limit=2"]


@pytest.fixture(scope="module")
def args(pretrained) -> list[str]:
    # One tokenizer for every run: the `tokenizers` WordPiece trainer breaks ties between equally
    # frequent merges in a per-process order (a resumed run reuses its own saved tokenizer).
    return [*ARGS, "--set", f"tokenizer.name_or_path={pretrained}"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory, args):
    return finished_run(tmp_path_factory, "straight", *args)[0]


def assert_same_run(a, b):
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert mb["eval_loss"] == pytest.approx(ma["eval_loss"], abs=1e-6)
    assert mb["train_loss"] == pytest.approx(ma["train_loss"], abs=1e-6)
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    worst = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    assert worst < 1e-6, worst


def resume(args, run_dir):
    result = run_cli(*args, "-o", run_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stderr


def newest_step(run_dir) -> int:
    steps = [int(p.name.split("-")[1]) for p in run_dir.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return max(steps, default=0)


def started_past(args, run_dir, step: int) -> subprocess.Popen:
    """The command running in a subprocess, returned once it has saved checkpoint `step` or later."""
    proc = subprocess.Popen([sys.executable, "-m", "bigmodel_cli", *args, "-o", str(run_dir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while newest_step(run_dir) < step and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    return proc


RANDOM_TRIALS = [pytest.param(seed, marks=pytest.mark.smoke) for seed in range(2)]
RANDOM_TRIALS += [pytest.param(seed, marks=pytest.mark.slow) for seed in range(2, 12)]


@pytest.mark.parametrize("seed", RANDOM_TRIALS)
def test_kill9_at_a_random_step_then_resume_equals_the_uninterrupted_run(tmp_path, args, straight, seed):
    rng = random.Random(seed)
    after_checkpoint = rng.randrange(SAVE_EVERY, STEPS - 2 * SAVE_EVERY, SAVE_EVERY)
    run_dir = tmp_path / "run"
    proc = started_past(args, run_dir, after_checkpoint)
    time.sleep(rng.uniform(0.0, 0.3))  # somewhere between two checkpoints, or inside the next save
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"the run ended before the kill: {err[-1500:]}"
    killed_at = newest_step(run_dir)
    assert not (run_dir / "metrics.json").exists()
    said = resume(args, run_dir)
    assert f"resuming from {run_dir / f'checkpoint-{killed_at}'}" in said
    assert_same_run(straight, run_dir)


# Where in a save the process dies. Each patch SIGKILLs the process the moment the save at step 30
# reaches it: after the weights (optimizer not yet written), after the optimizer (RNG states not
# yet), with every file written but before the rename, and after the rename (before rotation).
SAVE_POINTS = {
    "after-weights": ("bigmodel_cli.trainer.trainer", "CountingTrainer", "_save_optimizer_and_scheduler"),
    "before-rng-states": ("bigmodel_cli.trainer.trainer", "CountingTrainer", "_save_rng_state"),
    "before-rename": ("bigmodel_cli.trainer.checkpoints", None, "sync_folder"),
    "after-rename": ("transformers.trainer_utils", None, "rotate_checkpoints"),
}
DYING = """
import importlib, os, signal, sys
module = importlib.import_module({module!r})
owner = getattr(module, {owner!r}) if {owner!r} else module
original = getattr(owner, {name!r})
def dying(*args, **kwargs):
    if any(os.path.isdir(os.path.join({run_dir!r}, f"{{p}}checkpoint-{step}")) for p in ("", "tmp-")):
        os.kill(os.getpid(), signal.SIGKILL)
    return original(*args, **kwargs)
setattr(owner, {name!r}, dying)
sys.argv = ["bigmodel", *{argv!r}]
from bigmodel_cli.cli import main
main()
"""


@pytest.mark.smoke
@pytest.mark.parametrize("point", list(SAVE_POINTS))
def test_kill9_inside_the_save_window_leaves_no_checkpoint_that_looks_complete(tmp_path, args, straight, point):
    module, owner, name = SAVE_POINTS[point]
    run_dir, step = tmp_path / "run", 30
    code = DYING.format(module=module, owner=owner, name=name, step=step, run_dir=str(run_dir),
                        argv=[*args, "-o", str(run_dir)])
    killed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={**os.environ})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    finished = point == "after-rename"
    assert (run_dir / f"checkpoint-{step}").is_dir() == finished
    assert (run_dir / f"tmp-checkpoint-{step}").is_dir() != finished  # the half-written save, under its temporary name
    said = resume(args, run_dir)
    expected = step if finished else step - SAVE_EVERY
    assert f"resuming from {run_dir / f'checkpoint-{expected}'}" in said
    if not finished:
        assert f"removed incomplete checkpoints left by an interrupted save: tmp-checkpoint-{step}" in said
    assert not list(run_dir.glob("tmp-checkpoint-*"))
    assert_same_run(straight, run_dir)


@pytest.mark.smoke
def test_ctrl_c_saves_says_how_to_resume_and_the_same_command_finishes_the_run(tmp_path, args, straight):
    run_dir = tmp_path / "run"
    proc = started_past(args, run_dir, SAVE_EVERY)
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, (proc.returncode, err[-1500:])  # EX_TEMPFAIL: requeue me
    assert "Traceback" not in err, err[-1500:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: stopped by SIGINT at step") and "run the same command again to resume" in last
    stopped_at = int(last.split("at step ")[1].split(";")[0])
    assert (run_dir / f"checkpoint-{stopped_at}" / "trainer_state.json").is_file()  # saved where it stopped
    assert not (run_dir / "metrics.json").exists()
    assert f"resuming from {run_dir / f'checkpoint-{stopped_at}'}" in resume(args, run_dir)
    assert_same_run(straight, run_dir)


@pytest.mark.unit
def test_a_second_ctrl_c_stops_at_once_with_one_line(monkeypatch, capsys):
    from bigmodel_cli import cli
    from bigmodel_cli.commands import pretrain

    def pressed(quiet):  # Ctrl-C while a command runs, after GracefulStop let the first one through
        raise KeyboardInterrupt

    monkeypatch.setattr(pretrain, "setup", pressed)
    monkeypatch.setattr(sys, "argv", ["bigmodel", "pretrain", "-r", "pretrain/tiny-debug", "-q"])
    with pytest.raises(SystemExit) as stopped:
        cli.main()
    assert stopped.value.code == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("interrupted: a training run resumes from its last complete checkpoint")
