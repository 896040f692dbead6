"""Trainer callbacks: the time budget and its schedule, signals, the run header, the budget's bar."""

from __future__ import annotations

import signal
import time

import torch
from transformers import TrainerCallback

from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.processes import distributed, world_size


class TimeBudget(TrainerCallback):
    """Ends training once `seconds` of wall-clock have passed; `fraction()` is how much is spent,
    which the learning-rate schedule follows so that it reaches zero as the budget runs out."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.start: float | None = None
        self.spent = 0.0  # the fraction as of the last step end: on every process, the main one's

    def fraction(self) -> float:
        return self.spent

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.monotonic()
        self.spent = 0.0

    def on_step_end(self, args, state, control, **kwargs):
        spent = torch.tensor([min(1.0, (time.monotonic() - self.start) / self.seconds)], dtype=torch.float64)
        group = distributed()
        if group is not None:
            # Every process must follow one clock: the same learning rate, and the same last step
            # (a process that stopped alone would leave the others waiting in all-reduce forever).
            group.broadcast(spent, src=0)
        self.spent = float(spent)
        if self.spent >= 1.0:
            control.should_training_stop = True
            control.should_save = args.save_strategy != "no"
        return control


def budget_schedule(optimizer, budget: TimeBudget, warmup: float):
    """Linear warm-up over the first `warmup` of the budget, then linear decay to zero at its end."""

    def factor(_step: int) -> float:
        spent = budget.fraction()
        if warmup > 0 and spent < warmup:
            return max(spent / warmup, 1e-3)
        return max(0.0, (1.0 - spent) / max(1.0 - warmup, 1e-9))

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

    def __init__(self, job: str, data: str, quiet: bool = False, budget: TimeBudget | None = None):
        self.job, self.data, self.quiet, self.budget = job, data, quiet, budget

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.quiet or not state.is_world_process_zero:
            return
        from rich.console import Console

        processes = world_size()
        batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * processes
        params = sum(p.numel() for p in model.parameters()) if model is not None else 0
        device = "cuda" if torch.cuda.is_available() and not args.use_cpu else "cpu"
        precision = "bf16 autocast" if args.bf16 else "fp16 autocast" if args.fp16 else "fp32"
        budget = self.budget
        steps = f"until the {budget.seconds:g} s budget runs out" if budget else f"{state.max_steps} steps"
        name = type(model).__name__.removeprefix("SparseHead")  # saved as the plain class
        Console(stderr=True).print(
            f"[bold]bigmodel {self.job}[/bold]: {name} {params / 1e6:.2f}M parameters | {self.data} | "
            f"{device}, {precision}, {torch.get_num_threads()} threads | effective batch {batch} "
            f"({args.per_device_train_batch_size} x {args.gradient_accumulation_steps} accumulation x {processes} "
            f"process{'es' if processes > 1 else ''}) | {steps}",
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
