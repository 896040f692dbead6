"""Where this process stands among the processes of a launch: rank, world size, collectives, exit.

Accelerate and torchrun describe a launch in the environment (`RANK`, `WORLD_SIZE`); a plain
`bigmodel pretrain` is rank 0 of 1. Everything that asks "am I the main process?" asks here.
"""

from __future__ import annotations

import os
import sys


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


def leave_process_group() -> None:
    """Under `bigmodel launch`, leave the gloo/NCCL group before the interpreter shuts down: gloo's
    worker threads still alive at finalization abort the process ("terminate called without an
    active exception", exit -6) after a run that finished and saved."""
    torch = sys.modules.get("torch")  # never imported by --help or a bad flag: nothing to leave
    if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
