"""`bigmodel launch`: `pretrain` or `finetune` under Accelerate's launcher, nothing re-implemented."""

from __future__ import annotations

import os

from bigmodel_cli.errors import BigmodelError


def command(command: list[str], num_processes: int | None, config: str | None, num_machines: int | None,
            machine_rank: int | None, main_process_ip: str | None, main_process_port: int | None) -> None:
    if not command or command[0] not in ("pretrain", "finetune"):
        raise BigmodelError("name the command to launch after the options, e.g. bigmodel launch -n 2 pretrain -r pretrain/bert-tiny")
    argv = launch_arguments(command, num_processes, config, num_machines, machine_rank, main_process_ip, main_process_port)
    from accelerate.commands.launch import launch_command, launch_command_parser

    try:
        launch_command(launch_command_parser().parse_args(argv))
    except Exception as e:  # the workers printed their own errors above
        raise BigmodelError(f"the launched processes failed ({type(e).__name__}); see their messages above", exit_code=1) from None


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
