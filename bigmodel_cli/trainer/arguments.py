"""`TrainingArguments` from a recipe's training section: the recipe's names, Trainer's meaning."""

from __future__ import annotations

from pathlib import Path

from transformers import TrainingArguments

from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.processes import world_size
from bigmodel_cli.recipe import TrainingSection


def split_global_batch(global_batch: int, processes: int, most_per_device: int) -> tuple[int, int]:
    """(per-device batch, accumulation steps) whose product with `processes` is exactly
    `global_batch`, with the largest per-device batch up to `most_per_device`."""
    if global_batch % processes:
        raise BigmodelError(
            f"training.global_batch_size {global_batch} is not divisible by the {processes} processes; "
            f"choose a multiple of {processes}"
        )
    per_process = global_batch // processes
    for per_device in range(min(most_per_device, per_process), 0, -1):
        if per_process % per_device == 0:
            return per_device, per_process // per_device
    return 1, per_process


def training_arguments(training: TrainingSection, run_dir: Path, quiet: bool = False, **extra) -> TrainingArguments:
    import torch

    kwargs = training.trainer_kwargs()
    if training.global_batch_size:  # the recipe's global batch, whatever the number of processes
        kwargs["per_device_train_batch_size"], kwargs["gradient_accumulation_steps"] = split_global_batch(
            training.global_batch_size, world_size(), training.per_device_train_batch_size)
    if training.time_budget:  # the budget ends the run; the epoch count must not end it first
        kwargs["num_train_epochs"] = max(kwargs["num_train_epochs"], 10_000)
    if kwargs["report_to"] == [] or "none" in kwargs["report_to"]:
        kwargs["report_to"] = "none"
    if not torch.cuda.is_available() and world_size() > 1:
        # Without gloo, Trainer on CPU under torchrun silently runs independent single-process copies.
        extra.setdefault("ddp_backend", "gloo")
    if world_size() > 1:
        extra.setdefault("ddp_find_unused_parameters", False)  # BERT uses every parameter: no extra graph walk
    kwargs.update(extra)
    return TrainingArguments(
        output_dir=str(run_dir),
        logging_nan_inf_filter=False,  # a NaN loss must show, not be averaged away
        disable_tqdm=quiet,
        use_cpu=not torch.cuda.is_available(),
        **kwargs,
    )
