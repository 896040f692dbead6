"""Many processes, one decision: a signal at any process or at the launcher, and a non-finite loss
in one process's micro-batch, end every process of a 2-process launch (gloo) at the same step, with
one checkpoint and the same exit code, which `bigmodel launch` returns; the rerun resumes to the
uninterrupted run. The faults come from tests/faults/sitecustomize.py, inside one worker only."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, finished_run, run_cli
from safetensors.torch import load_file

FAULTS = ROOT / "tests" / "faults"
SECONDS = 120  # a stop the processes did not agree on hangs until ddp_timeout: far longer than this


@pytest.fixture(scope="module")
def args(pretrained) -> list[str]:
    return ["launch", "-n", "2", "pretrain", "-r", "pretrain/tiny-debug", "-q", "--set", "training.max_steps=30",
            "--set", "training.save_steps=10", "--set", f"tokenizer.name_or_path={pretrained}",
            "--set", "training.ddp_timeout=300"]


def fault_env(fault: str) -> dict:
    path = os.pathsep.join([str(FAULTS), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {"PYTHONPATH": path, "BIGMODEL_TEST_FAULT": fault}


@pytest.fixture(scope="module")
def straight(tmp_path_factory, args) -> Path:
    return finished_run(tmp_path_factory, "straight", *args)[0]


def assert_same_run(a: Path, b: Path) -> None:
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert mb["eval_loss"] == pytest.approx(ma["eval_loss"], abs=1e-6)
    assert mb["train_loss"] == pytest.approx(ma["train_loss"], abs=1e-6)
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    worst = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    assert worst < 1e-6, worst


def stopped_checkpoint(run_dir: Path, stderr: str) -> int:
    """The one checkpoint of a stopped run, named in the one message the launch printed."""
    assert stderr.count("error: stopped by SIGTERM") == 1, stderr[-3000:]
    steps = sorted(int(p.name.split("-")[1]) for p in run_dir.glob("checkpoint-*"))
    assert len(steps) == 1 and f"checkpoint-{steps[0]} saved" in stderr, (steps, stderr[-2000:])
    assert not (run_dir / "metrics.json").exists()
    return steps[0]


@pytest.mark.smoke
@pytest.mark.parametrize("rank", [0, 1])
def test_sigterm_to_one_process_stops_both_at_one_step_with_75(tmp_path, args, straight, rank):
    run_dir = tmp_path / "run"
    start = time.monotonic()
    result = run_cli(*args, "-o", run_dir, env=fault_env(f"sigterm:{rank}:5"), timeout=SECONDS)
    assert result.returncode == 75, result.stderr[-3000:]
    assert time.monotonic() - start < SECONDS
    step = stopped_checkpoint(run_dir, result.stderr)
    assert 5 <= step <= 6  # the step the signal arrived in, or the next: the vote is one step behind
    assert ("another process" in result.stderr) == (rank == 1)  # rank 0 speaks for both
    rerun = run_cli(*args, "-o", run_dir)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert_same_run(straight, run_dir)


@pytest.mark.smoke
def test_sigterm_to_the_launcher_reaches_the_workers_which_save_and_exit_75(tmp_path, args, straight):
    run_dir, marker = tmp_path / "run", tmp_path / "at-step"
    launch = subprocess.Popen([sys.executable, "-m", "bigmodel_cli", *args, "-o", str(run_dir)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, **fault_env(f"slow:0:8:{marker}")})
    deadline = time.monotonic() + SECONDS
    while not marker.exists() and launch.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker.exists(), launch.communicate()[1][-3000:]
    launch.send_signal(signal.SIGTERM)
    _, stderr = launch.communicate(timeout=60)
    assert launch.returncode == 75, stderr[-3000:]
    stopped_checkpoint(run_dir, stderr)
    rerun = run_cli(*args, "-o", run_dir)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert_same_run(straight, run_dir)


@pytest.mark.smoke
def test_a_nan_in_one_process_stops_both_with_3(tmp_path, args):
    run_dir = tmp_path / "run"
    result = run_cli(*args, "-o", run_dir, env=fault_env("nan:1:14"), timeout=SECONDS)
    assert result.returncode == 3, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "at step 14: training diverged" in lines[0], result.stderr[-3000:]
    assert "another process" in lines[0]  # rank 0 says it, and the NaN was rank 1's
    assert lines[0].endswith(f"the last good checkpoint is {run_dir / 'checkpoint-10'}")
    # No checkpoint holds the weights after the NaN, and nothing is marked finished.
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-10"]
    assert not (run_dir / "metrics.json").exists()


@pytest.mark.unit
@pytest.mark.parametrize("recorded, launcher, expected", [
    ({0: 75, 1: 75}, 1, 75),  # torchrun's 1 for any failure: the workers' own code wins
    ({0: 0, 1: 3}, 1, 3),
    ({0: 2, 1: 75}, 1, 2),  # the first by rank
    ({0: 0, 1: 0}, 0, 0),
    ({0: 0}, 1, 1),  # a worker died without a word (killed, crashed): the launcher's code
    ({}, -9, 137),  # the launcher itself killed by SIGKILL
])
def test_launch_returns_the_workers_code(tmp_path, recorded, launcher, expected):
    from bigmodel_cli.commands.launch import worker_code

    for rank, code in recorded.items():
        (tmp_path / f"rank-{rank}").write_text(str(code))
    assert worker_code(tmp_path, launcher) == expected


@pytest.mark.smoke
def test_a_config_accelerate_cannot_apply_is_one_line_not_plain_ddp(tmp_path, pretrained):
    """FSDP1 on a machine without a GPU: Accelerate would train it as plain DDP (FSDP2 runs there:
    tests/test_fsdp.py)."""
    config = tmp_path / "fsdp1.yaml"
    config.write_text((ROOT / "recipes" / "accelerate" / "fsdp.yaml").read_text().replace("fsdp_version: 2",
                                                                                          "fsdp_version: 1"))
    result = run_cli("launch", "-c", config, "-n", "2", "pretrain", "-r", "pretrain/tiny-debug",
                     "-o", tmp_path / "run", "--set", f"tokenizer.name_or_path={pretrained}", timeout=SECONDS)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("[transformers]")
             and "warn" not in line.lower()]
    assert len(lines) == 1 and lines[0].startswith("error: the launch config asks for FSDP"), result.stderr[-3000:]
    assert "MULTI_CPU" in lines[0] and "fsdp_version: 2" in lines[0]


REPORT = (b"E1205 08:50:11.585000 3284 .venv/lib/python3.11/site-packages/torch/distributed/elastic/multiprocessing/"
          b"api.py:1002] failed (exitcode: 75) local_rank: 0\n\n"
          b"=====\nbigmodel_cli FAILED\n-----\nFailures:\n  exitcode  : 75\n=====\n")


@pytest.mark.unit
@pytest.mark.parametrize("recorded", [True, False])
def test_torchruns_failure_report_is_dropped_only_where_the_workers_spoke(tmp_path, recorded):
    import io

    from bigmodel_cli.commands.launch import relay_stderr

    if recorded:
        (tmp_path / "rank-0").write_text("75")
    own = b"error: stopped by SIGTERM at step 6\n"
    bar = b"\rtraining:  10%|#  | 3/30\rtraining:  20%|## | 6/30"
    out = io.BytesIO()
    relay_stderr(io.BufferedReader(io.BytesIO(own + bar + b"\n" + REPORT + b"===== a line of the user's\n")),
                 tmp_path, out)
    kept = out.getvalue()
    assert kept.startswith(own + bar) and kept.endswith(b"===== a line of the user's\n")
    assert (b"FAILED" in kept) == (not recorded) and (b"elastic" in kept) == (not recorded)


FAKE_SRUN = """#!/bin/bash
# srun on one host: each "machine" a task of its own, SLURM_NODEID 0 and 1; signals reach both
while [[ $1 == --* ]]; do shift; done
pids=()
for node in $(seq 0 $((SLURM_NNODES - 1))); do SLURM_NODEID=$node "$@" & pids+=($!); done
trap 'kill -TERM ${pids[@]}' TERM
code=0
for pid in ${pids[@]}; do
  while true; do wait $pid; c=$?; kill -0 $pid 2>/dev/null || break; done
  [ $c -gt $code ] && code=$c
done
exit $code
"""
FAKE_SCONTROL = """#!/bin/bash
case $1 in show) echo 127.0.0.1 ;; requeue) echo "requeue $2" >> "$SCONTROL_LOG" ;; esac
"""


@pytest.mark.smoke
def test_the_slurm_script_launches_every_machine_and_requeues_after_the_warning(tmp_path, pretrained):
    """recipes/slurm/launch.sbatch under a fake srun and scontrol: two machines on 127.0.0.1, SLURM's
    warning to the batch shell, every process saves and exits 75, the job requeues itself."""
    from test_distributed import free_port

    bin_dir, marker, log = tmp_path / "bin", tmp_path / "at-step", tmp_path / "scontrol.log"
    bin_dir.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, **fault_env(f"slow:0:8:{marker}"), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "SLURM_NNODES": "2", "GPUS_PER_NODE": "1", "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "node[1-2]",
           "MAIN_PORT": str(free_port()), "SCONTROL_LOG": str(log), "OMP_NUM_THREADS": "1",
           "BIGMODEL": f"{sys.executable} -m bigmodel_cli"}
    run_dir = tmp_path / "run"
    job = subprocess.Popen(["bash", str(ROOT / "recipes" / "slurm" / "launch.sbatch"), "pretrain", "-r",
                            "pretrain/tiny-debug", "-q", "-o", str(run_dir), "--set", f"tokenizer.name_or_path={pretrained}"],
                           cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + SECONDS
    while not marker.exists() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker.exists(), job.communicate()[1][-3000:]
    job.send_signal(signal.SIGTERM)  # what SLURM's --signal=B:TERM@180 does
    out, err = job.communicate(timeout=90)
    assert job.returncode == 75, err[-3000:]
    assert log.read_text() == "requeue 4242\n" and "requeueing job 4242" in out
    assert len(list(run_dir.glob("checkpoint-*"))) == 1 and not (run_dir / "metrics.json").exists()
