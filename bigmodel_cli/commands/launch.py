"""`bigmodel launch`: `pretrain`, `finetune` or `glue` under Accelerate's launcher, nothing re-implemented."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.processes import EXIT_DIR, LAUNCH_GRACE

FORWARDED = ("SIGTERM", "SIGINT", "SIGUSR1")
LAUNCHED = ("pretrain", "finetune", "glue")  # the commands that train


def command(command: list[str], num_processes: int | None, config: str | None, num_machines: int | None,
            machine_rank: int | None, main_process_ip: str | None, main_process_port: int | None,
            grace: float = LAUNCH_GRACE) -> None:
    if not command or command[0] not in LAUNCHED:
        raise BigmodelError("name the command to launch after the options, e.g. bigmodel launch -n 2 pretrain -r pretrain/bert-tiny")
    argv = launch_arguments(command, num_processes, config, num_machines, machine_rank, main_process_ip, main_process_port)
    code = supervise([sys.executable, "-m", "accelerate.commands.launch", "--quiet", *argv], grace)
    if code:  # the workers said why (one line each, or the main one for all)
        import typer

        raise typer.Exit(code)


def supervise(argv: list[str], grace: float) -> int:
    """Run Accelerate's launcher as a child and return the workers' own exit code.

    - torchrun reports any worker's failure as 1: each worker records its code in a folder
      (`processes.record_exit_code`) and the first non-zero one by rank is returned (75: stopped and
      saved, requeue; 3: diverged; 2: bad input), else the launcher's own.
    - A SIGTERM, SIGINT or SIGUSR1 sent here goes to the workers themselves, which agree to stop,
      save one checkpoint and exit 75. The launchers in between never see it: torchrun would
      pass it on and kill the workers 30 s later, and Accelerate's single-process launcher after
      5 s. The workers get `grace` seconds, then the launch is ended.
    """
    import psutil

    with tempfile.TemporaryDirectory(prefix="bigmodel-exit-") as codes:
        env = {**os.environ, EXIT_DIR: codes}
        # A session of its own: a terminal's Ctrl-C reaches this process only, which forwards it once.
        child = psutil.Popen(argv, env=env, start_new_session=True, stderr=subprocess.PIPE)
        relay = threading.Thread(target=relay_stderr, args=(child.stderr, Path(codes)), daemon=True)
        relay.start()
        deadline: list[float] = []

        def forward(signum, frame):
            for worker in workers(child):
                with contextlib.suppress(psutil.NoSuchProcess):
                    worker.send_signal(signum)
            if not deadline:
                deadline.append(time.monotonic() + grace)

        previous = {name: signal.signal(getattr(signal, name), forward) for name in FORWARDED if hasattr(signal, name)}
        try:
            while True:
                try:
                    child.wait(timeout=0.5)
                    break
                except psutil.TimeoutExpired:
                    if deadline and time.monotonic() > deadline[0]:
                        print(f"error: the launched processes did not stop within {grace:g} s of the signal "
                              "(--grace); ending them", file=sys.stderr)
                        end_tree(child)
                        return 124
        finally:
            for name, handler in previous.items():
                signal.signal(getattr(signal, name), handler)
            if child.is_running():
                end_tree(child)
            relay.join(timeout=10)
        return worker_code(Path(codes), child.returncode)


ELASTIC_LOG = re.compile(rb"^[EW]\d{4} [\d:.]+ +\d+ .*torch/distributed/elastic/")


def relay_stderr(stream, codes: Path, out=None) -> None:
    """The launch's stderr, passed on as it comes, less torchrun's report of failed workers (its
    `ChildFailedError` block and log lines) where the workers recorded their code: they said why
    themselves, in one line. A worker that died without a word (a crash, a kill) keeps the report."""
    out = out or sys.stderr.buffer
    said = lambda: any(codes.glob("rank-*"))  # noqa: E731
    block: list[bytes] | None = None
    rest = b""

    def handle(line: bytes) -> None:
        nonlocal block
        if block is not None:
            block.append(line)
            if len(block) == 2 and not line.rstrip().endswith(b"FAILED"):  # not torchrun's report after all
                out.write(b"".join(block))
                block = None
            elif len(block) > 2 and line.startswith(b"====="):
                if not said():
                    out.write(b"".join(block))
                block = None
            return
        if line.startswith(b"====="):
            block = [line]
            return
        if ELASTIC_LOG.match(line) and said():
            return
        out.write(line)
        out.flush()

    # Lines end at \n or \r (progress bars redraw with \r): each goes on as soon as it is whole.
    while chunk := stream.read1(65536):
        *lines, rest = re.split(rb"(?<=[\r\n])", rest + chunk)
        for line in lines:
            handle(line)
    if rest:
        handle(rest)
    if block:
        out.write(b"".join(block))
    out.flush()


def workers(child) -> list:
    """The processes running bigmodel under the launcher: the launcher's own children (torchrun's
    and Accelerate's workers alike), not their tokenizing or loader subprocesses."""
    import psutil

    try:
        return child.children()
    except psutil.NoSuchProcess:
        return []


def end_tree(child) -> None:
    import psutil

    tree = [child]
    with contextlib.suppress(psutil.NoSuchProcess):
        tree += child.children(recursive=True)
    for process in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.terminate()
    _, alive = psutil.wait_procs(tree, timeout=5)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()


def worker_code(codes: Path, launcher_code: int | None) -> int:
    """The first non-zero worker code by rank, else 0 when every worker recorded one and the launcher
    agreed; else the launcher's (a worker that died without recording: a crash or a kill)."""
    recorded = {int(p.name.removeprefix("rank-")): int(p.read_text() or 1) for p in codes.glob("rank-*")}
    failed = [code for _, code in sorted(recorded.items()) if code]
    if failed:
        return failed[0]
    if launcher_code and launcher_code < 0:  # killed by a signal
        return 128 - launcher_code
    return launcher_code or 0


def launch_arguments(command: list[str], num_processes: int | None, config: str | None, num_machines: int | None,
                     machine_rank: int | None, main_process_ip: str | None, main_process_port: int | None) -> list[str]:
    """`accelerate launch` arguments for a bigmodel command."""
    argv: list[str] = []
    if config:
        from bigmodel_cli.recipe import find_recipe, recipes_dir

        try:  # a file, or a name shipped under recipes/ (accelerate/NAME), found as recipes are
            path = find_recipe(config)
        except BigmodelError:
            names = sorted(p.stem for p in (recipes_dir() / "accelerate").glob("*.yaml"))
            raise BigmodelError(
                f"--config {config}: no such file, and no shipped Accelerate config accelerate/{{{','.join(names)}}}"
            ) from None
        argv += ["--config_file", str(path)]
    elif (num_processes or 1) > 1 or (num_machines or 1) > 1:
        # No config: torchrun-style processes; on a machine without GPUs they train on the CPU (gloo).
        argv += ["--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no"]
    else:
        argv += ["--num_processes", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    for flag, value in (("--num_processes", num_processes), ("--num_machines", num_machines),
                        ("--machine_rank", machine_rank), ("--main_process_ip", main_process_ip),
                        ("--main_process_port", main_process_port)):
        if value is not None:
            argv += [flag, str(value)]
    if (num_machines or 1) > 1 and not config:
        argv += ["--rdzv_backend", "static", "--same_network"]
    if not config and "OMP_NUM_THREADS" not in os.environ:
        argv += ["--num_cpu_threads_per_process", str(threads_per_process(num_processes, num_machines))]
    return [*argv, "-m", "bigmodel_cli", *command]


def threads_per_process(num_processes: int | None, num_machines: int | None) -> int:
    """CPU threads for each launched process. `accelerate launch` gives each one thread unless told
    (torchrun's rule for GPU processes, whose work is on the GPU): on a machine without a GPU, the
    processes training on it share its cores instead, as a plain command's torch uses them all."""
    import torch

    if torch.cuda.is_available():
        return 1
    here = max(1, (num_processes or 1) // (num_machines or 1))  # the processes on this machine
    return max(1, torch.get_num_threads() // here)
