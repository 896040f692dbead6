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


def same_on_every_process(*values: float) -> list[float]:
    """The main process's values, on every process (as is, in a single process)."""
    return _collective(values, lambda group, t: group.broadcast(t, src=0))


def _collective(values, operation) -> list[float]:
    """`values` as one float64 tensor on the collective's device, through `operation(group, tensor)`,
    read back once."""
    import torch

    group = distributed()
    if group is None:
        return [float(v) for v in values]
    shared = torch.tensor(values, dtype=torch.float64, device=collective_device())
    operation(group, shared)
    return shared.tolist()


def exit_process(code: int) -> NoReturn:
    """End this process with `code`. A process of a launch (one in a gloo/NCCL group) leaves the
    group, runs the exit handlers and flushes its output, then ends without the interpreter's
    finalization: DDP's reducer still holds the group after `destroy_process_group`, with the group's
    C++ worker threads, and finalizing them aborted runs that had finished and saved (exit -6,
    "terminate called without an active exception"). Two gloo processes with DDP that leave the group
    and exit: 5 of 100 pairs aborted with a normal exit, 0 of 100 with this one."""
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
