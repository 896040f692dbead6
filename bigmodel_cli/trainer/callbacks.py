"""Trainer callbacks: the time budget and its schedule, signals, the run header, the budget's bar."""

from __future__ import annotations

import math
import signal
import time

import torch
from transformers import TrainerCallback

from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.processes import Vote, wait_for_everyone, world_size
from bigmodel_cli.recipe import BUDGET_SCHEDULES


class TimeBudget(TrainerCallback):
    """Ends training once `seconds` of wall-clock have passed, over all parts of a resumed run;
    `fraction()` is how much is spent, which the learning-rate schedule follows so that it reaches
    zero as the budget runs out. A checkpoint records the seconds spent (`elapsed()`), and a resumed
    run starts its clock there (`resume_at`): the budget is spent once, the schedule continues.
    Processes agree on the fraction spent (`GracefulStop`'s vote) so that they stop at the same step
    with the same learning rate."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.start: float | None = None
        self.before = 0.0  # seconds spent by the earlier parts of a resumed run
        self.spent = 0.0  # the fraction as of the last step end: on every process, the main one's
        self.final: float | None = None

    def fraction(self) -> float:
        return self.spent

    def elapsed(self) -> float:
        """Seconds of the budget spent so far, the earlier parts of a resumed run included."""
        return self.before + (time.monotonic() - self.start if self.start is not None else 0.0)

    def resume_at(self, seconds: float) -> None:
        self.before = seconds
        self.spent = min(1.0, seconds / self.seconds)

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.monotonic()
        self.spent = min(1.0, self.before / self.seconds)

    def on_train_end(self, args, state, control, **kwargs):
        self.final = self.elapsed()  # what the run spent of the budget, all its parts together


def budget_schedule(optimizer, budget: TimeBudget, warmup: float, kind: str = "linear"):
    """The learning rate over a time budget: warm-up over the first `warmup` of it (a fraction
    below 1) or over the first `warmup` optimizer steps (a whole number), then `kind`'s decay over
    the budget's fraction spent, reaching zero at its end (linear, cosine) or staying (constant)."""
    if kind not in BUDGET_SCHEDULES:
        raise BigmodelError(f"training.lr_scheduler_type {kind} cannot follow training.time_budget (the steps are "
                            f"unknown); choose one of {', '.join(BUDGET_SCHEDULES)} or give training.max_steps instead")
    by_steps = warmup >= 1
    decay_from = 0.0 if by_steps else warmup

    def factor(step: int) -> float:
        spent = budget.fraction()
        if by_steps and step < warmup:
            return max(step / warmup, 1e-3)
        if not by_steps and warmup > 0 and spent < warmup:
            return max(spent / warmup, 1e-3)
        progress = min(1.0, max(0.0, (spent - decay_from) / max(1.0 - decay_from, 1e-9)))
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if kind.startswith("constant"):
            return 1.0
        return max(0.0, 1.0 - progress)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class GracefulStop(TrainerCallback):
    """SIGTERM, SIGUSR1 (schedulers' warning) and Ctrl-C, and the end of a time budget: finish the
    current step, save a checkpoint, stop. After a signal `raise_if_stopped()` then exits 75
    (EX_TEMPFAIL: requeue me); running the same command again resumes. transformers' own SIGTERM
    checkpointing exits 0, so schedulers would not requeue. A second Ctrl-C stops at once.

    Launched, the processes decide together: each step end votes (`processes.Vote`: the signal one
    process received, the budget's fraction spent), and every process reads the same outcome one
    step later, so all of them stop at the same step, save one checkpoint and exit with the same
    code. A process that stopped alone would checkpoint while the others waited in the next step's
    all-reduce until a timeout."""

    SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")

    def __init__(self, budget: TimeBudget | None = None):
        self.budget = budget
        self.received: str | None = None  # the signal this process received
        self.stopped_by: str | None = None  # the signal the processes agreed to stop for
        self.vote = Vote()
        for name in self.SIGNALS:
            if hasattr(signal, name):
                signal.signal(getattr(signal, name), self._handle)

    def _handle(self, signum, frame):
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def on_step_end(self, args, state, control, **kwargs):
        spent = min(1.0, self.budget.elapsed() / self.budget.seconds) if self.budget else 0.0
        mine = getattr(signal, self.received).value if self.received else 0
        agreed = self.vote(mine, spent)
        if agreed is None:  # the first vote of a launch is still in flight
            return control
        signum, spent = int(agreed[0]), agreed[1]
        if signum and self.stopped_by is None:
            name = signal.Signals(signum).name
            self.stopped_by = name if name == self.received else f"{name} (sent to another process)"
        if self.budget is not None:
            self.budget.spent = spent
        if self.stopped_by or spent >= 1.0:
            control.should_training_stop = True
            control.should_save = bool(self.stopped_by) or args.save_strategy != "no"
        return control

    def on_train_end(self, args, state, control, **kwargs):
        self.vote.settle()  # every process posted the same votes: none is left in flight

    def raise_if_stopped(self, trainer) -> None:
        if self.stopped_by:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # saved and leaving: a second Ctrl-C now changes nothing
            wait_for_everyone()  # none leaves while another still writes the checkpoint
            step = trainer.state.global_step
            raise BigmodelError(
                f"stopped by {self.stopped_by} at step {step}; checkpoint-{step} saved in {trainer.args.output_dir}; "
                "run the same command again to resume",
                exit_code=75,
                agreed=True,
            )


class RunHeader(TrainerCallback):
    """One compact header before training: what is trained on what, where, how (rank 0 only)."""

    def __init__(self, job: str, data: str, quiet: bool = False, budget: TimeBudget | None = None,
                 notes: list[str] | None = None):
        self.job, self.data, self.quiet, self.budget = job, data, quiet, budget
        self.notes = notes or []  # what bigmodel derived or chose, said once

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        check_engine()
        if self.quiet or not state.is_world_process_zero:
            return
        from rich.console import Console
        from rich.markup import escape

        processes = world_size()
        batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * processes
        params = sum(p.numel() for p in model.parameters()) if model is not None else 0
        device = "cuda" if torch.cuda.is_available() and not args.use_cpu else "cpu"
        precision = "bf16 autocast" if args.bf16 else "fp16 autocast" if args.fp16 else "fp32"
        precision += ", torch.compile" if args.torch_compile else ""
        budget = self.budget
        steps = f"until the {budget.seconds:g} s budget runs out" if budget else f"{state.max_steps} steps"
        name = type(model).__name__.removeprefix("SparseHead")  # saved as the plain class
        Console(stderr=True).print(  # the data and notes are plain text: a [bracket] in them is no markup
            f"[bold]bigmodel {self.job}[/bold]: {name} {params / 1e6:.2f}M parameters | {escape(self.data)} | "
            f"{device}, {precision}, {torch.get_num_threads()} threads | effective batch {batch} "
            f"({args.per_device_train_batch_size} x {args.gradient_accumulation_steps} accumulation x {processes} "
            f"process{'es' if processes > 1 else ''}{engine()}) | {steps}" + "".join(f" | {escape(note)}" for note in self.notes),
            highlight=False,
            soft_wrap=True,  # one line, however narrow the terminal: logs and greps keep it whole
        )


def engine() -> str:
    """How the processes share the training, as the run header says it after their count: DDP and
    its backend, FSDP and its sharding, or the DeepSpeed ZeRO stage ("" for a single process)."""
    from accelerate.state import AcceleratorState, DistributedType

    if not AcceleratorState._shared_state:
        return ""
    state = AcceleratorState()
    kind = state.distributed_type
    if kind == DistributedType.FSDP:
        plugin = state.fsdp_plugin
        version = getattr(plugin, "fsdp_version", 1)
        if version == 2:
            sharding = "full shard" if plugin.reshard_after_forward else "shard grad op"
        else:
            sharding = str(plugin.sharding_strategy).rsplit(".", 1)[-1].lower().replace("_", " ")
        return f", FSDP{version} {sharding}"
    if kind == DistributedType.DEEPSPEED:
        return f", DeepSpeed ZeRO-{state.deepspeed_plugin.zero_stage}"
    if state.num_processes > 1:
        import torch

        backend = torch.distributed.get_backend() if torch.distributed.is_initialized() else state.backend
        return f", DDP over {backend}"
    return ""


def check_engine() -> None:
    """A launch config that asks for FSDP or DeepSpeed runs with it, or not at all: Accelerate would
    otherwise train such a config as plain DDP where it cannot apply it (on a CPU, for one), and the
    run would not be what its config says."""
    import os

    from accelerate.state import AcceleratorState, DistributedType

    if AcceleratorState._shared_state:
        kind = AcceleratorState().distributed_type
    else:  # before the Accelerator is made (`trainer.fsdp_on_cpu`): the processes' own type
        from accelerate.state import PartialState

        kind = PartialState().distributed_type
    for variable, wanted, name in (("ACCELERATE_USE_FSDP", DistributedType.FSDP, "FSDP"),
                                   ("ACCELERATE_USE_DEEPSPEED", DistributedType.DEEPSPEED, "DeepSpeed")):
        if os.environ.get(variable, "false").lower() == "true" and kind != wanted:
            raise BigmodelError(
                f"the launch config asks for {name}, but Accelerate set the run up as {kind.value} on this machine "
                f"(it cannot apply {name} here); "
                + ("set fsdp_version: 2 in the config (FSDP2 runs on CPU processes too), or " if name == "FSDP" else "")
                + "launch with --config accelerate/multi-gpu-ddp or -n N instead",
                agreed=True,
            )


class BudgetProgress(TrainerCallback):
    """Under a time budget the step count is unknown: the bar counts the budget's seconds instead
    (rate, time left), with the step and loss beside it."""

    def __init__(self, budget: TimeBudget):
        self.budget = budget
        self.bar = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=round(self.budget.seconds), unit="s", desc="training (time budget)")

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.n = round(self.budget.fraction() * self.budget.seconds)
            self.bar.set_postfix(step=state.global_step, refresh=False)
            self.bar.refresh()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is not None and logs and "loss" in logs:
            self.bar.set_postfix(step=state.global_step, loss=f"{logs['loss']:.4g}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
