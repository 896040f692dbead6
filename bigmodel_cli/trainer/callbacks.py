"""Trainer callbacks: the time budget and its schedule, signals, the run header, the budget's bar."""

from __future__ import annotations

import math
import signal
import time

import torch
from transformers import TrainerCallback

from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.processes import same_on_every_process, world_size
from bigmodel_cli.recipe import BUDGET_SCHEDULES


class TimeBudget(TrainerCallback):
    """Ends training once `seconds` of wall-clock have passed, over all parts of a resumed run;
    `fraction()` is how much is spent, which the learning-rate schedule follows so that it reaches
    zero as the budget runs out. A checkpoint records the seconds spent (`elapsed()`), and a resumed
    run starts its clock there (`resume_at`): the budget is spent once, the schedule continues."""

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

    def on_step_end(self, args, state, control, **kwargs):
        (self.spent,) = same_on_every_process(min(1.0, self.elapsed() / self.seconds))
        if self.spent >= 1.0:
            control.should_training_stop = True
            control.should_save = args.save_strategy != "no"
        return control


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
    """SIGTERM, SIGUSR1 (schedulers' warning) and Ctrl-C: finish the current step, save a
    checkpoint, stop. `raise_if_stopped()` then exits 75 (EX_TEMPFAIL: requeue me); running the same
    command again resumes. transformers' own SIGTERM checkpointing exits 0, so schedulers would not
    requeue. A second Ctrl-C stops at once."""

    SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")

    def __init__(self):
        self.received: str | None = None
        for name in self.SIGNALS:
            if hasattr(signal, name):
                signal.signal(getattr(signal, name), self._handle)

    def _handle(self, signum, frame):
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def on_step_end(self, args, state, control, **kwargs):
        if self.received:
            control.should_save = True
            control.should_training_stop = True
        return control

    def raise_if_stopped(self, trainer) -> None:
        if self.received:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # saved and leaving: a second Ctrl-C now changes nothing
            step = trainer.state.global_step
            raise BigmodelError(
                f"stopped by {self.received} at step {step}; checkpoint-{step} saved in {trainer.args.output_dir}; "
                "run the same command again to resume",
                exit_code=75,
            )


class RunHeader(TrainerCallback):
    """One compact header before training: what is trained on what, where, how (rank 0 only)."""

    def __init__(self, job: str, data: str, quiet: bool = False, budget: TimeBudget | None = None,
                 notes: list[str] | None = None):
        self.job, self.data, self.quiet, self.budget = job, data, quiet, budget
        self.notes = notes or []  # what bigmodel derived or chose, said once

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.quiet or not state.is_world_process_zero:
            return
        from rich.console import Console

        processes = world_size()
        batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * processes
        params = sum(p.numel() for p in model.parameters()) if model is not None else 0
        device = "cuda" if torch.cuda.is_available() and not args.use_cpu else "cpu"
        precision = "bf16 autocast" if args.bf16 else "fp16 autocast" if args.fp16 else "fp32"
        precision += ", torch.compile" if args.torch_compile else ""
        budget = self.budget
        steps = f"until the {budget.seconds:g} s budget runs out" if budget else f"{state.max_steps} steps"
        name = type(model).__name__.removeprefix("SparseHead")  # saved as the plain class
        Console(stderr=True).print(
            f"[bold]bigmodel {self.job}[/bold]: {name} {params / 1e6:.2f}M parameters | {self.data} | "
            f"{device}, {precision}, {torch.get_num_threads()} threads | effective batch {batch} "
            f"({args.per_device_train_batch_size} x {args.gradient_accumulation_steps} accumulation x {processes} "
            f"process{'es' if processes > 1 else ''}) | {steps}" + "".join(f" | {note}" for note in self.notes),
            highlight=False,
            soft_wrap=True,  # one line, however narrow the terminal: logs and greps keep it whole
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
