"""Exact means exact: a run killed in any phase resumes or starts cleanly with the same command and
ends as the uninterrupted run; the same command and seed give the same tokenizer and model; a time
budget is spent once over a killed and resumed run; a killed finetune ends as the uninterrupted one."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from conftest import TINY, finished_run, run_cli
from safetensors.torch import load_file

from bigmodel_cli.trainer.checkpoints import state_file

pytestmark = pytest.mark.smoke

PRETRAIN = ["pretrain", "-r", "pretrain/tiny-debug", "-q", "--set", "training.report_to=[none]"]

# Runs the CLI with `owner.name` replaced by a function that SIGKILLs the process when `condition`
# (on the call's args) holds, and otherwise calls the original.
DIE_WHEN = """
import importlib, os, signal, sys
module = importlib.import_module({module!r})
owner = getattr(module, {owner!r}) if {owner!r} else module
original = getattr(owner, {name!r})
def dying(*args, **kwargs):
    if {condition}:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(*args, **kwargs)
setattr(owner, {name!r}, dying)
sys.argv = ["bigmodel", *{argv!r}]
from bigmodel_cli.cli import main
main()
"""


def killed_in(argv: list[str], module: str, owner: str | None, name: str, condition: str) -> subprocess.CompletedProcess:
    code = DIE_WHEN.format(module=module, owner=owner, name=name, condition=condition, argv=[str(a) for a in argv])
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == -signal.SIGKILL, f"the run was not killed where meant: {result.stderr[-1500:]}"
    return result


def figures(run_dir) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {k: v for k, v in metrics.items() if not k.endswith(("_runtime", "_per_second", "_seconds"))}  # not the clocks


def assert_same_result(a, b, keys=("eval_loss", "train_loss")):
    fa, fb = figures(a), figures(b)
    for key in keys:
        assert fb[key] == pytest.approx(fa[key], abs=1e-6), key
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    worst = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    assert worst < 1e-6, worst


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """pretrain/tiny-debug from scratch, tokenizer training included, never interrupted."""
    return finished_run(tmp_path_factory, "straight", *PRETRAIN)[0]


def test_same_command_same_seed_same_tokenizer_and_model(tmp_path, straight):
    """A second from-scratch run in a fresh folder (a fresh process, so another hash-map order in
    `tokenizers`) trains the same tokenizer file and ends with the same figures and weights."""
    again = tmp_path / "again"
    result = run_cli(*PRETRAIN, "-o", again)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (again / "tokenizer.json").read_bytes() == (straight / "tokenizer.json").read_bytes()
    assert figures(again) == figures(straight)
    assert_same_result(straight, again)


# Where the process dies: (module, owner, function, condition on its arguments).
PHASES = {
    "tokenizer-training": ("bigmodel_cli.mlm.tokenizer", None, "train_wordpiece", "True"),
    "tokenizer-save": ("os", None, "replace", "'tmp-tokenizer' in str(args[0])"),
    "tokenizing": ("bigmodel_cli.mlm.text", None, "tokenize_lines", "True"),
    # the second split's rows, the first's written: a half-made cache
    "writing-rows": ("bigmodel_cli.mlm.text", None, "row_batches", "len(dying.__dict__.setdefault('calls', [0])) == 2 "
                     "or dying.calls.append(1)"),
    "before-first-checkpoint": ("bigmodel_cli.trainer.trainer", "CountingTrainer", "training_step",
                                "args[0].state.global_step >= 3"),
    "final-save": ("bigmodel_cli.rundir", None, "write_json", "str(args[0]).endswith('metrics.json')"),
}


@pytest.mark.parametrize("phase", list(PHASES))
def test_a_kill_in_any_phase_resumes_or_starts_cleanly_and_ends_as_the_uninterrupted_run(tmp_path, straight, phase,
                                                                                         monkeypatch):
    monkeypatch.setenv("BIGMODEL_CACHE", str(tmp_path / "cache"))  # the rows are prepared again, and can be killed
    run_dir = tmp_path / "run"
    killed_in([*PRETRAIN, "-o", run_dir], *PHASES[phase])
    assert not (run_dir / "metrics.json").exists()
    result = run_cli(*PRETRAIN, "-o", run_dir)  # the same command again, the same folder
    assert result.returncode == 0, result.stderr[-2000:]
    if phase == "final-save":
        assert f"resuming from {run_dir / 'checkpoint-30'}" in result.stderr
    assert not list(run_dir.glob("tmp-tokenizer*"))  # the killed process's staging folder is cleared
    assert (run_dir / "tokenizer.json").read_bytes() == (straight / "tokenizer.json").read_bytes()
    assert_same_result(straight, run_dir)


BUDGET = 12.0
BUDGETED = [*PRETRAIN, "--set", "training.max_steps=-1", "--set", f"training.time_budget={BUDGET}",
            "--set", "training.save_steps=5", "--set", "training.logging_steps=5", "--set", "training.warmup_steps=0.2",
            "--set", "training.save_total_limit=1"]


def newest_checkpoint(run_dir):
    found = [p for p in run_dir.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return max(found, key=lambda p: int(p.name.split("-")[1]), default=None)


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_a_time_budget_is_spent_once_over_a_killed_and_resumed_run(tmp_path, how):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "bigmodel_cli", *BUDGETED, "-o", str(run_dir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    # past the warm-up and a checkpoint (one every 5 steps: one past 40 % comes before the end on a loaded machine too)
    while proc.poll() is None and time.time() < deadline:
        state = newest_checkpoint(run_dir)
        if state and json.loads(state_file(state, 0).read_text())["budget_seconds_spent"] > 0.4 * BUDGET:
            break
        time.sleep(0.05)
    proc.send_signal(getattr(signal, how))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == (-signal.SIGKILL if how == "SIGKILL" else 75), err[-1500:]
    kept = newest_checkpoint(run_dir)
    first_part = json.loads(state_file(kept, 0).read_text())["budget_seconds_spent"]
    assert first_part < BUDGET
    result = run_cli(*BUDGETED, "-o", run_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # The resumed part trains for the rest of the budget: its runtime adds the resume's own seconds
    # (loading the checkpoint, skipping the batches already trained; up to 1.6 s seen on a loaded
    # machine), never a second budget (a restarted clock would give more than 1.4 x BUDGET here).
    assert BUDGET * 0.95 <= first_part + metrics["train_runtime"] <= BUDGET + 3.0
    assert metrics["train_budget_seconds_spent"] == pytest.approx(BUDGET, rel=0.05)
    history = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
    rates = [(e["step"], e["learning_rate"]) for e in history if "learning_rate" in e]
    resumed_at = int(kept.name.split("-")[1])
    before = [r for s, r in rates if s <= resumed_at]
    after = [r for s, r in rates if s > resumed_at]
    assert before and after, rates
    peak = max(range(len(rates)), key=lambda i: rates[i][1])
    assert rates[peak][0] <= resumed_at  # the warm-up ended before the kill ...
    decaying = [r for _, r in rates[peak:]]
    assert all(b <= a * (1 + 1e-6) for a, b in zip(decaying, decaying[1:])), rates  # ... and never came back
    assert after[0] > 0.5 * before[-1], rates  # the resumed part continues the schedule, not from zero


def test_a_killed_and_resumed_finetune_ends_as_the_uninterrupted_one(tmp_path, pretrained, finetuned):
    """Killed after the first epoch's checkpoint (mid second epoch, its length-grouped order and the
    best epoch so far restored from the checkpoint), resumed by the same command: the same weights
    and metrics as the uninterrupted `finetuned` run, the best epoch included."""
    argv = ["finetune", "--recipe", "finetune/mrpc-tiny-debug", "--model", pretrained, "--quiet", "-o", tmp_path / "run"]
    killed_in(argv, "bigmodel_cli.trainer.trainer", "CountingTrainer", "training_step", "args[0].state.global_step >= 13")
    assert (tmp_path / "run" / "checkpoint-10").is_dir()
    result = run_cli(*argv)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"resuming from {tmp_path / 'run' / 'checkpoint-10'}" in result.stderr
    straight, resumed = figures(finetuned), figures(tmp_path / "run")
    assert resumed["best_checkpoint"] == straight["best_checkpoint"]
    assert resumed["eval_confusion_matrix"] == straight["eval_confusion_matrix"]
    assert_same_result(finetuned, tmp_path / "run", keys=("eval_loss", "eval_accuracy", "eval_f1", "train_loss"))
    again = run_cli("eval", "--model", tmp_path / "run", "--data-dir", TINY / "mrpc-tiny", "--json")
    assert json.loads(again.stdout.strip().splitlines()[-1])["eval_f1"] == pytest.approx(straight["eval_f1"], abs=1e-6)
