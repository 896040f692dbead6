"""`TrainingArguments` from a recipe's training section: the recipe's names, Trainer's meaning."""

from __future__ import annotations

import os
from pathlib import Path
from unittest import mock

from transformers import TrainingArguments

from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.processes import world_size
from bigmodel_cli.recipe import LAUNCH_PRECISION, TrainingSection


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


def batch_layout(training: TrainingSection, processes: int) -> tuple[int, int]:
    """(per-device batch, accumulation steps) for the recipe: as given, or derived from
    `global_batch_size`. An accumulation the user set is honoured: the per-device batch is then what
    makes up the global batch, and a layout that cannot is a one-line error naming the keys."""
    per_device, accumulation = training.per_device_train_batch_size, training.gradient_accumulation_steps
    if not training.global_batch_size:
        return per_device, accumulation
    if "gradient_accumulation_steps" not in training.model_fields_set:
        return split_global_batch(training.global_batch_size, processes, per_device)
    share, left = divmod(training.global_batch_size, processes * accumulation)
    if left or share > per_device:
        raise BigmodelError(
            f"training.global_batch_size {training.global_batch_size} cannot be made of training.gradient_accumulation_steps "
            f"{accumulation} x {processes} process(es) x at most training.per_device_train_batch_size {per_device}; "
            "change one of them, or leave gradient_accumulation_steps out to have it derived")
    return share, accumulation


def on_gpu(setting: bool | None) -> bool:
    """A recipe switch whose null means "on where training runs on a GPU" (data.mask_on_device,
    data.pad_to_buckets): work that pays on a GPU (or a TPU: XLA needs the few shapes the buckets
    give) and costs on a CPU."""
    if setting is not None:
        return setting
    import torch
    from accelerate.utils import is_torch_xla_available

    return torch.cuda.is_available() or is_torch_xla_available()


def check_precision(training: TrainingSection) -> None:
    """Mixed precision only where it runs as asked, else a one-line error naming the key: fp16 needs
    a GPU (on a CPU Accelerate has no float16 autocast and would train in fp32, silently), and bf16
    on a GPU needs native bfloat16, Ampere or newer (older GPUs emulate it, slower than fp32)."""
    import torch

    if not torch.cuda.is_available():
        if training.fp16:
            raise BigmodelError("training.fp16 needs a GPU: on a CPU the run would train in fp32 (Accelerate has no "
                                "float16 autocast there); set training.fp16=false, or training.bf16=true on a CPU "
                                "with native bfloat16 (AMX)")
        return
    major, minor = torch.cuda.get_device_capability()
    if training.bf16 and major < 8:
        raise BigmodelError(f"training.bf16: this GPU ({torch.cuda.get_device_name()}, compute capability {major}.{minor}) "
                            "has no native bfloat16 and would emulate it, slower than fp32; set training.fp16=true "
                            "instead (float16 with loss scaling), or training.bf16=false")


def training_arguments(training: TrainingSection, run_dir: Path, quiet: bool = False, **extra) -> TrainingArguments:
    import torch

    kwargs = training.trainer_kwargs()
    kwargs["per_device_train_batch_size"], kwargs["gradient_accumulation_steps"] = batch_layout(training, world_size())
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
    # The recipe's precision (the launch config's where the recipe set none: `recipe.launch_settings`) is
    # the run's. TrainingArguments reads the launch's from the environment and lets bf16/fp16 only raise it,
    # so a recipe's fp32 trained in the launch config's bf16; it reads the recipe's here, the process keeps
    # its own. (Compilation: `CountingTrainer._build_accelerator_args`.)
    passed = sorted(training.model_extra or {})  # the recipe's TrainingArguments keys that bigmodel passes as given
    with mock.patch.dict(os.environ, {LAUNCH_PRECISION: "bf16" if training.bf16 else "fp16" if training.fp16 else "no"}):
        try:
            return TrainingArguments(
                output_dir=str(run_dir),
                logging_nan_inf_filter=False,  # a NaN loss must show, not be averaged away
                disable_tqdm=quiet,
                use_cpu=not torch.cuda.is_available(),
                **kwargs,
            )
        except (TypeError, ValueError) as e:
            if not passed:
                raise
            keys = ", ".join(f"training.{key}" for key in passed)
            raise BigmodelError(f"TrainingArguments refused the recipe ({keys} passed through as given): "
                                f"{str(e).splitlines()[0]}") from None
