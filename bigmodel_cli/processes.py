"""Where this process stands among the processes of a launch: rank, world size, collectives, exit.

Accelerate and torchrun describe a launch in the environment (`RANK`, `WORLD_SIZE`); a plain
`bigmodel pretrain` is rank 0 of 1. Everything that asks "am I the main process?" asks here.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import NoReturn


def rank() -> int:
    """This process's global rank (0 when not launched)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """Processes in the launch, all machines together (1 when not launched)."""
    return max(int(os.environ.get("WORLD_SIZE", "1")), 1)


def is_main() -> bool:
    return rank() == 0


def distributed():
    """`torch.distributed` when a process group is up, else None."""
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed
    return None


def collective_device():
    """Where a collective's tensors must live: the GPU under NCCL (which refuses CPU tensors), the
    CPU under gloo."""
    import torch

    group = distributed()
    if group is not None and group.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def summed_over_processes(*values: float) -> list[float]:
    """Each value summed over all processes (as is, in a single process)."""
    return _collective(values, lambda group, t: group.all_reduce(t))


def _collective(values, operation, control: bool = False) -> list[float]:
    """`values` as one float64 tensor through `operation(torch.distributed, tensor)`, read back once:
    on the collective's device, or with `control` on the CPU for `control_group()`."""
    import torch

    group = distributed()
    if group is None:
        return [float(v) for v in values]
    shared = torch.tensor(values, dtype=torch.float64, device="cpu" if control else collective_device())
    operation(group, shared)
    return shared.tolist()


_CONTROL = None  # the gloo group of `control_group()`, made once


def gathered(value) -> list:
    """Every process's `value` (any picklable object), in rank order, on every process, over the CPU
    control group: `[value]` in a single process."""
    group = control_group()
    if group is None:
        return [value]
    import torch

    out = [None] * world_size()
    torch.distributed.all_gather_object(out, value, group=group)
    return out


def control_group():
    """A gloo group over every process, for the run's decisions (stop, budget, divergence): its
    tensors live on the CPU, so agreeing never waits for a GPU, whatever the training's backend (the
    default group itself where it is gloo). None when not launched."""
    global _CONTROL
    dist = distributed()
    if dist is None:
        return None
    if _CONTROL is None:
        _CONTROL = dist.group.WORLD if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
    return _CONTROL


class Vote:
    """Values every process agrees on, once a step, without waiting: each call posts this process's
    values (an all-reduce of their maximum over `control_group()`, in flight while the next step
    trains) and returns the agreed maximum of the previous call's. Every process makes the same
    calls, so every process reads the same values at the same step, one step after they were
    posted. In a single process the values come back at once."""

    def __init__(self):
        self.pending = None  # (tensor, work) of the last call

    def __call__(self, *values: float) -> list[float] | None:
        """The agreed values of the previous call (None at the first call of a launch)."""
        import torch

        group = control_group()
        if group is None:
            return [float(v) for v in values]
        agreed = self.settle()
        tensor = torch.tensor(values, dtype=torch.float64)
        work = torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX, group=group, async_op=True)
        self.pending = (tensor, work)
        return agreed

    def settle(self) -> list[float] | None:
        """The agreed values of the call in flight, waited for (None if there is none)."""
        if self.pending is None:
            return None
        tensor, work = self.pending
        self.pending = None
        work.wait()
        return tensor.tolist()


def agreed_minimum(value: float) -> float:
    """The smallest of every process's `value` (as is, in a single process): a synchronous vote."""
    (least,) = _collective([value], lambda dist, t: dist.all_reduce(t, op=dist.ReduceOp.MIN, group=control_group()),
                           control=True)
    return least


def join_launch() -> None:
    """Start a launch's process group now, as Trainer would (Accelerate's `PartialState`), for a
    command that must agree across processes before its first Trainer (`bigmodel glue`). Nothing in
    a single process."""
    if world_size() > 1 and distributed() is None:
        from accelerate.state import PartialState

        PartialState()


def wait_for_everyone() -> None:
    """Every process reaches this point before any goes on (nothing in a single process)."""
    group = control_group()
    if group is not None:
        import torch

        torch.distributed.barrier(group=group)


EXIT_DIR = "BIGMODEL_EXIT_DIR"  # `bigmodel launch` reads each worker's exit code from here
LAUNCH_GRACE = 120.0  # seconds `bigmodel launch` gives its workers to finish their step and save after a signal


def exit_process(code: int) -> NoReturn:
    """End this process with `code`. A process of a launch (one in a gloo/NCCL group) leaves the
    group, runs the exit handlers and flushes its output, then ends without the interpreter's
    finalization: DDP's reducer still holds the group after `destroy_process_group`, with the group's
    C++ worker threads, and finalizing them aborted runs that had finished and saved (exit -6,
    "terminate called without an active exception"). Two gloo processes with DDP that leave the group
    and exit: 5 of 100 pairs aborted with a normal exit, 0 of 100 with this one."""
    record_exit_code(code)
    torch = sys.modules.get("torch")  # never imported by --help or a bad flag: no group to leave
    if torch is None or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        sys.exit(code)
    torch.distributed.destroy_process_group()
    for thread in threading.enumerate():  # what a normal exit does first: wait for Python's non-daemon threads,
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()  # then run the exit handlers: logging's flush, multiprocessing's joins
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def record_exit_code(code: int) -> None:
    """Under `bigmodel launch`, this process's exit code in $BIGMODEL_EXIT_DIR/rank-N: torchrun
    reports any failure as 1, and the launcher returns the workers' own code (75 to requeue, 3 for
    a diverged run, 2 for bad input)."""
    folder = os.environ.get(EXIT_DIR)
    if folder and os.path.isdir(folder):
        try:
            with open(os.path.join(folder, f"rank-{rank()}"), "w") as f:
                f.write(str(code))
        except OSError:
            pass  # the launcher then reports the launch's own code
