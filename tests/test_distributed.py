"""Scale-out under Accelerate, proven on this CPU machine: 2 processes (gloo) and the two-machine
path on one host give one run directory, metrics over every eval example exactly once, and the
loss curve of a 1-process run with the same global batch.

Dropout is off in these runs (it draws from each process's own RNG stream), so the two curves see
the same examples, masks and learning rates per step and differ only by the order of float sums:
they must agree to TOLERANCE (relative; they agree to about 2e-7 here). A global batch assembled
from other examples (an epoch's last, partial batch filled up per process missed by 6e-4), a loss
scaled by the process count or a schedule of another length misses by far more."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, TINY, finished_run, run_cli

GLOBAL_BATCH = 16
TOLERANCE = 1e-4
NO_DROPOUT = ["--set", "model.hidden_dropout_prob=0", "--set", "model.attention_probs_dropout_prob=0"]


def losses(run_dir: Path) -> list[float]:
    history = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


def assert_same_curve(one: Path, two: Path) -> None:
    a, b = losses(one), losses(two)
    assert len(a) == len(b) >= 3
    assert b == pytest.approx(a, rel=TOLERANCE)
    steps = [json.loads((d / "trainer_state.json").read_text())["global_step"] for d in (one, two)]
    assert steps[0] == steps[1]


def assert_single_run_dir(parent: Path, run_dir: Path) -> None:
    """Only the main process wrote: one run folder, one set of logs, one model."""
    assert [p.name for p in parent.iterdir()] == [run_dir.name]
    events = list((run_dir / "runs").rglob("events.out.tfevents.*"))  # events.out.tfevents.TIME.HOST.PID.N
    assert events and len({p.name.split(".")[-2] for p in events}) == 1, events
    assert (run_dir / "model.safetensors").is_file() and (run_dir / "metrics.json").is_file()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def pretrain_args(pretrained) -> list[str]:
    return ["pretrain", "-r", "pretrain/tiny-debug", "-q", "--set", f"training.global_batch_size={GLOBAL_BATCH}",
            "--set", f"tokenizer.name_or_path={pretrained}", *NO_DROPOUT]


@pytest.fixture(scope="module")
def pretrain_one(tmp_path_factory, pretrain_args) -> Path:
    return finished_run(tmp_path_factory, "one", *pretrain_args)[0]


@pytest.mark.smoke
def test_two_processes_pretrain_like_one_with_the_same_global_batch(tmp_path, pretrain_args, pretrain_one):
    out = tmp_path / "out"
    out.mkdir()
    result = run_cli("launch", "--num-processes", "2", *[a for a in pretrain_args if a != "-q"], "-o", out / "run")
    assert result.returncode == 0, result.stderr[-3000:]
    # The per-device batch and accumulation are derived from the global batch, and said.
    assert f"effective batch {GLOBAL_BATCH} (8 x 1 accumulation x 2 processes, DDP over gloo)" in result.stderr
    assert result.stderr.count("bigmodel pretrain:") == 1  # the header comes from the main process only
    assert_single_run_dir(out, out / "run")
    assert_same_curve(pretrain_one, out / "run")
    one, two = (json.loads((d / "metrics.json").read_text()) for d in (pretrain_one, out / "run"))
    assert two["train_samples"] == one["train_samples"] and two["eval_samples"] == one["eval_samples"]
    # Every eval row counted once: a duplicated or lost batch would move the loss by far more.
    assert two["eval_masked_tokens"] == one["eval_masked_tokens"]
    assert two["eval_loss"] == pytest.approx(one["eval_loss"], rel=TOLERANCE)


@pytest.mark.smoke
def test_two_processes_finetune_score_every_dev_example_exactly_once(tmp_path, pretrain_one):
    # pretrain_one was trained without dropout, and its config carries that into the classifier.
    args = ["finetune", "-r", "finetune/mrpc-tiny-debug", "--model", pretrain_one, "-q",
            "--set", f"training.global_batch_size={GLOBAL_BATCH}", "--set", "training.num_train_epochs=3"]
    one = tmp_path / "one"
    assert run_cli(*args, "-o", one).returncode == 0
    out = tmp_path / "out"
    out.mkdir()
    result = run_cli("launch", "-n", "2", *args, "-o", out / "run")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_single_run_dir(out, out / "run")
    assert_same_curve(one, out / "run")
    dev_examples = sum(1 for _ in (TINY / "mrpc-tiny" / "dev.tsv").open(encoding="utf-8-sig")) - 1
    for run_dir in (one, out / "run"):
        history = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
        counts = [entry["eval_examples"] for entry in history if "eval_examples" in entry]
        assert counts == [dev_examples] * 3, counts  # each epoch's evaluation, gathered from both processes
        assert json.loads((run_dir / "metrics.json").read_text())["eval_samples"] == dev_examples


@pytest.mark.smoke
def test_two_machines_on_one_host(tmp_path, pretrain_args, pretrain_one):
    """Two launches, machine ranks 0 and 1, one process each, meeting on 127.0.0.1."""
    out, port = tmp_path / "out", free_port()
    out.mkdir()
    launches = [
        subprocess.Popen([sys.executable, "-m", "bigmodel_cli", "launch", "--num-processes", "2", "--num-machines", "2",
                          "--machine-rank", str(rank), "--main-process-ip", "127.0.0.1", "--main-process-port", str(port),
                          *pretrain_args, "-o", str(out / "run")],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})  # two "machines" sharing this host's cores
        for rank in (0, 1)
    ]
    for proc in launches:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    assert_single_run_dir(out, out / "run")
    assert_same_curve(pretrain_one, out / "run")
    one, two = (json.loads((d / "metrics.json").read_text()) for d in (pretrain_one, out / "run"))
    assert two["eval_loss"] == pytest.approx(one["eval_loss"], rel=TOLERANCE)


@pytest.mark.unit
@pytest.mark.parametrize("path", sorted((ROOT / "recipes" / "accelerate").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_accelerate_configs_parse_with_accelerates_own_parser(path):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file

    config = load_config_from_file(str(path))
    assert isinstance(config, ClusterConfig)
    assert config.mixed_precision == "bf16"
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# bigmodel launch --config recipes/accelerate/") or first.startswith("# On machine 0:")
    expected = {"single-gpu-bf16": "NO", "multi-gpu-ddp": "MULTI_GPU", "fsdp": "FSDP",
                "deepspeed-zero2": "DEEPSPEED", "two-machines": "MULTI_GPU", "tpu-vm": "XLA"}[path.stem]
    assert str(config.distributed_type).split(".")[-1] == expected
    if path.stem == "two-machines":
        assert config.num_machines == 2 and config.num_processes == 16


@pytest.mark.unit
def test_launch_builds_accelerates_own_command():
    from bigmodel_cli.commands.launch import launch_arguments

    argv = launch_arguments(["pretrain", "-r", "x"], 2, None, None, None, None, None)
    assert argv[:1] == ["--multi_gpu"] and argv[-5:] == ["-m", "bigmodel_cli", "pretrain", "-r", "x"]
    assert argv[argv.index("--num_processes") + 1] == "2"
    argv = launch_arguments(["finetune"], None, "accelerate/fsdp", None, None, None, None)
    assert argv[0] == "--config_file" and argv[1].endswith("accelerate/fsdp.yaml")
    two = launch_arguments(["pretrain"], 2, None, 2, 1, "127.0.0.1", 29555)
    assert two[two.index("--machine_rank") + 1] == "1" and two[two.index("--main_process_ip") + 1] == "127.0.0.1"


@pytest.mark.unit
@pytest.mark.parametrize("gpu, omp, processes, machines, expected", [
    (False, None, 1, None, "8"),  # a CPU's cores go to the process training on it, as without launch
    (False, None, 2, None, "4"),  # shared by the processes on this machine
    (False, None, 4, 2, "4"),  # 2 of the 4 on this machine
    (False, None, 16, None, "1"),
    (True, None, 2, None, "1"),  # GPU processes: accelerate's and torchrun's one thread
    (False, "3", 2, None, None),  # the user's OMP_NUM_THREADS: accelerate honours it
])
def test_launched_processes_on_a_cpu_share_its_cores(monkeypatch, gpu, omp, processes, machines, expected):
    import torch

    from bigmodel_cli.commands.launch import launch_arguments

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    if omp is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", omp)
    argv = launch_arguments(["pretrain"], processes, None, machines, None, None, None)
    flag = "--num_cpu_threads_per_process"
    assert (argv[argv.index(flag) + 1] if flag in argv else None) == expected


@pytest.mark.unit
@pytest.mark.parametrize("global_batch, processes, most, expected", [
    (16, 1, 32, (16, 1)), (16, 2, 32, (8, 1)), (64, 2, 16, (16, 2)), (48, 4, 5, (4, 3)), (7, 1, 2, (1, 7)),
])
def test_global_batch_is_split_into_per_device_batch_and_accumulation(global_batch, processes, most, expected):
    from bigmodel_cli.trainer.arguments import split_global_batch

    per_device, accumulation = split_global_batch(global_batch, processes, most)
    assert (per_device, accumulation) == expected
    assert per_device * accumulation * processes == global_batch


@pytest.mark.unit
def test_global_batch_that_processes_do_not_divide_is_an_error():
    from bigmodel_cli.errors import BigmodelError
    from bigmodel_cli.trainer.arguments import split_global_batch

    with pytest.raises(BigmodelError, match="global_batch_size 15 is not divisible by the 2 processes"):
        split_global_batch(15, 2, 8)


@pytest.mark.smoke
def test_launch_without_a_command_says_what_to_do():
    result = run_cli("launch", "-n", "2")
    assert result.returncode == 2 and "name the command to launch" in result.stderr


@pytest.mark.unit
@pytest.mark.parametrize(("argv", "code"), [(["recipes", "list"], 0), (["recipes", "show", "no-such"], 2)])
def test_a_launched_command_leaves_its_process_group_and_skips_finalization(argv, code):
    """A launched process ends with its command's exit code, out of its group, its exit handlers run,
    and without the interpreter's finalization: DDP keeps the group's C++ threads alive past
    destroy_process_group, and finalizing them aborted finished runs (exit -6, seen twice in CI)."""
    script = (
        "import atexit, sys, torch, torch.distributed as dist\n"
        f"dist.init_process_group('gloo', init_method='tcp://127.0.0.1:{free_port()}', rank=0, world_size=1)\n"
        "ddp = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 2))  # its reducer holds the group\n"
        "class Sentinel:\n"
        "    def __del__(self): print('finalized', flush=True)\n"
        "sentinel = Sentinel()\n"
        "atexit.register(lambda: print('still in a group:', dist.is_initialized()))\n"
        f"sys.argv = ['bigmodel', *{argv!r}]\n"
        "from bigmodel_cli.cli import main\n"
        "main()\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == code, result.stderr[-2000:]
    assert ("pretrain/tiny-debug" in result.stdout) == (code == 0)
    assert ("error: recipe 'no-such' not found" in result.stderr) == (code == 2)
    assert result.stdout.strip().endswith("still in a group: False")
    assert "finalized" not in result.stdout
