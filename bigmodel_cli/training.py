"""What pretrain and finetune share around `Trainer`: its arguments and one small subclass.

`Trainer` is the loop. `CountingTrainer` adds two things it lacks: an exact count of the real
(non-padding) tokens and examples trained on, and a stop with the step number when the loss
stops being finite (`logging_nan_inf_filter` would hide it and the run would exit 0 with NaN
weights).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_pt_utils import LengthGroupedSampler

from bigmodel_cli.errors import BigmodelError, write_failure
from bigmodel_cli.recipe import TrainingSection, split_global_batch
from bigmodel_cli.rundir import checkpoints


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def training_arguments(training: TrainingSection, run_dir: Path, quiet: bool = False, **extra) -> TrainingArguments:
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


STAGING_PREFIX = "tmp-"  # a checkpoint being written; renamed to checkpoint-N once complete


class CountingTrainer(Trainer):
    """`Trainer` that counts real tokens and examples, stops on a non-finite loss, and writes each
    checkpoint atomically (a kill mid-save never leaves one that looks complete)."""

    def __init__(self, *args, pad_token_id: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        if self.args.disable_tqdm:  # --quiet: no per-step log lines either
            from transformers.trainer_callback import PrinterCallback

            self.remove_callback(PrinterCallback)
        self.pad_token_id = pad_token_id
        self.real_tokens = 0
        self.examples_seen = 0
        self.loss_sum = 0.0  # over every step of the run, a resumed one included (saved in checkpoints)
        self.aside_seconds = 0.0  # spent evaluating and checkpointing inside train(): not training speed

    def training_step(self, model, inputs, num_items_in_batch=None):
        ids = inputs["input_ids"]
        self.real_tokens += int((ids != self.pad_token_id).sum())
        if "position_ids" in inputs:  # packed rows: every line starts at position 0
            self.examples_seen += int(((inputs["position_ids"] == 0) & (ids != self.pad_token_id)).sum())
        else:
            self.examples_seen += ids.shape[0]
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.loss_sum += float(loss)
        if not torch.isfinite(loss).all():
            step = self.state.global_step + 1
            kept = checkpoints(Path(self.args.output_dir))
            where = f"; the last good checkpoint is {kept[-1]}" if kept else ""
            raise BigmodelError(
                f"the training loss became {loss.item()} at step {step}: training diverged; lower "
                f"training.learning_rate (now {self.args.learning_rate}) or raise warmup_steps{where}",
                exit_code=3,
            )
        return loss

    def _get_train_sampler(self, train_dataset=None):
        """Each epoch's order drawn from (seed, epoch) over whole global batches, so the examples of
        every optimizer step are the same whatever the number of processes and accumulation steps:
        length-grouped for `group_by_length` (Trainer groups per process), shuffled otherwise."""
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        strategy = self.args.train_sampling_strategy
        if strategy not in ("random", "group_by_length") or dataset is None or not hasattr(dataset, "__len__"):
            return super()._get_train_sampler(train_dataset)
        global_batch = self.args.train_batch_size * self.args.gradient_accumulation_steps * max(world_size(), 1)
        drop_last = self.args.dataloader_drop_last
        if drop_last and len(dataset) < global_batch:
            raise BigmodelError(
                f"training.dataloader_drop_last is on and the training set has {len(dataset)} rows, fewer than "
                f"one global batch ({global_batch}): no step would run; lower training.global_batch_size or "
                "set training.dataloader_drop_last=false")
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        if strategy == "group_by_length" and "input_ids" in (getattr(dataset, "column_names", None) or []):
            lengths = [len(ids) for ids in dataset["input_ids"]]  # Trainer has dropped the `length` column by now
            return SeededLengthGroupedSampler(global_batch, lengths=lengths, seed=seed, drop_last=drop_last)
        return SeededRandomSampler(len(dataset), global_batch, seed=seed, drop_last=drop_last)

    def evaluate(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return super().evaluate(*args, **kwargs)
        finally:
            self.aside_seconds += time.perf_counter() - start

    def _save_checkpoint(self, model, trial):
        start = time.perf_counter()
        try:
            self._save_checkpoint_atomically(model, trial)
        finally:
            self.aside_seconds += time.perf_counter() - start

    def _save_checkpoint_atomically(self, model, trial):
        """Trainer's checkpoint (model, optimizer, scheduler, RNG states, trainer state), written to
        `tmp-checkpoint-N` and renamed to `checkpoint-N` only when every file is on disk. The stock
        save writes in place: a kill during it left a checkpoint that auto-resume took and crashed on.
        A full disk or a write error stops the run with one line; the complete checkpoints stay."""
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

        run_dir = Path(self._get_output_dir(trial=trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging, final = run_dir / f"{STAGING_PREFIX}{name}", run_dir / name
        if self.hp_search_backend is None and trial is None:
            self.store_flos()
        try:
            self._write_checkpoint(staging, final)
            self.accelerator.wait_for_everyone()  # every process's RNG file is in before the rename
            if self.args.should_save:
                sync_folder(staging)
                if final.exists():  # a leftover of an earlier attempt at this step: replaced whole
                    shutil.rmtree(final)
                os.replace(staging, final)
                sync_folder(run_dir)
                rotate_checkpoints(str(run_dir), self.args.save_total_limit, self.state.best_model_checkpoint,
                                   use_mtime=False)
        except Exception as e:
            reason = write_failure(e)
            if reason is None and shutil.disk_usage(run_dir).free < 1 << 20:
                reason = f"no space left on device ({type(e).__name__} while saving)"  # torch.save says "unexpected pos"
            if reason is None:  # not the disk's fault: a bug, shown as such
                raise
            shutil.rmtree(staging, ignore_errors=True)
            kept = checkpoints(run_dir)
            raise BigmodelError(
                f"cannot write {name} in {run_dir}: {reason}; free space or fix permissions, then run the same "
                "command again to resume" + (f" from {kept[-1].name}" if kept else ""),
            ) from None
        self.accelerator.wait_for_everyone()

    def _write_checkpoint(self, staging: Path, final: Path) -> None:
        from transformers.trainer_callback import ExportableState
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        self.save_model(str(staging), _internal_call=True)
        if not self.args.save_only_model:
            self._save_optimizer_and_scheduler(str(staging))
            self._save_scaler(str(staging))
            self._save_rng_state(str(staging))
        best = self.state.best_global_step
        if best and self.args.save_strategy != "no":  # as Trainer does, under the final name
            best_dir = final.parent / f"{PREFIX_CHECKPOINT_DIR}-{best}"
            if best == self.state.global_step or best_dir.is_dir():
                self.state.best_model_checkpoint = str(best_dir)
        if self.args.should_save:
            for callback in [*self.callback_handler.callbacks, self.control]:
                if isinstance(callback, ExportableState):
                    key = callback.__class__.__name__
                    if isinstance(self.state.stateful_callbacks.get(key), list):
                        self.state.stateful_callbacks[key].append(callback.state())
                    else:
                        self.state.stateful_callbacks[key] = callback.state()
            self.state.save_to_json(str(staging / "trainer_state.json"))
        # Per process (its own share of the loss); the trainer state above is the main process's.
        (staging / f"bigmodel_state_{self.args.process_index}.json").write_text(json.dumps({"loss_sum": self.loss_sum}))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        saved = Path(resume_from_checkpoint) / f"bigmodel_state_{self.args.process_index}.json"
        if saved.is_file():
            self.loss_sum = json.loads(saved.read_text())["loss_sum"]

    def train_and_measure(self, resume_from: Path | None, stop: GracefulStop) -> dict:
        """Train (resuming from a checkpoint when given), stop cleanly after Ctrl-C, and return
        Trainer's metrics with real-token throughput and the whole run's mean training loss."""
        result = self.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        stop.raise_if_stopped(self)
        metrics = {**result.metrics, **self.throughput(result.metrics["train_runtime"])}
        metrics["train_loss"] = self.train_loss()
        return metrics

    def train_loss(self) -> float:
        """The mean training loss over all steps of the run. Trainer's own `train_loss` averages only
        the steps since the last resume, so a resumed run would report another figure."""
        (total,) = summed_over_processes(self.loss_sum)
        return total / max(world_size(), 1) / max(self.state.global_step, 1)

    def throughput(self, runtime: float) -> dict[str, float]:
        """Real tokens and examples per second over the training run, summed over processes."""
        tokens, examples = summed_over_processes(self.real_tokens, self.examples_seen)
        runtime = max(runtime, 1e-9)
        training = max(runtime - self.aside_seconds, 1e-9)  # evaluation and checkpoints set aside
        return {
            "train_real_tokens": int(tokens),
            "train_tokens_per_second": round(tokens / runtime, 3),
            "train_examples_per_second": round(examples / runtime, 3),
            "train_step_seconds": round(training, 3),
            "train_step_examples_per_second": round(examples / training, 3),
        }


def summed_over_processes(*values: float) -> list[float]:
    """Each value summed over all processes (as is, in a single process)."""
    totals = torch.tensor(values, dtype=torch.float64)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(totals)
    return totals.tolist()


def whole_batches(indices: list[int], batch_size: int, drop_last: bool) -> list[int]:
    """`indices` cut (drop_last) or filled from their own start to a whole number of batches.

    Left partial, the last batch of an epoch is split differently by every process layout: Accelerate
    fills each process's share up with examples from the epoch's start, one process does not, and the
    two runs part at the first epoch's end. Filled here, once, every layout trains on the same
    global batches; at most batch_size - 1 examples per epoch are seen twice, none is skipped."""
    if drop_last:
        return indices[: len(indices) - len(indices) % batch_size]
    missing = -len(indices) % batch_size
    while missing > 0 and indices:
        fill = indices[:missing]
        indices, missing = indices + fill, missing - len(fill)
    return indices


def whole_batches_length(size: int, batch_size: int, drop_last: bool) -> int:
    """len(whole_batches(range(size), batch_size, drop_last))."""
    whole = size - size % batch_size
    return whole if drop_last or size == whole else whole + batch_size


class SeededRandomSampler(torch.utils.data.Sampler):
    """A shuffle drawn from (seed, epoch), not from the global RNG, in whole global batches: the same
    in every process, on every process count, and after a resume (Accelerate calls `set_epoch`)."""

    def __init__(self, size: int, batch_size: int, seed: int, drop_last: bool = False):
        self.size, self.batch_size, self.seed, self.drop_last, self.epoch = size, batch_size, seed, drop_last, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return whole_batches_length(self.size, self.batch_size, self.drop_last)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(whole_batches(torch.randperm(self.size, generator=generator).tolist(), self.batch_size, self.drop_last))


class SeededLengthGroupedSampler(LengthGroupedSampler):
    """Length-grouped order drawn from (seed, epoch), not from the global RNG, in whole global
    batches: the same in every process, on every process count, and after a resume."""

    def __init__(self, batch_size: int, lengths: list[int], seed: int, drop_last: bool = False):
        super().__init__(batch_size, lengths=lengths)
        self.seed, self.drop_last, self.epoch = seed, drop_last, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return whole_batches_length(len(self.lengths), self.batch_size, self.drop_last)

    def __iter__(self):
        self.generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(whole_batches(list(super().__iter__()), self.batch_size, self.drop_last))


def sync_folder(folder: Path) -> None:
    """fsync a folder's files and the folder itself, so a rename that follows is durable."""
    for path in [*(p for p in folder.iterdir() if p.is_file()), folder]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


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
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Every process must follow one clock: the same learning rate, and the same last step
            # (a process that stopped alone would leave the others waiting in all-reduce forever).
            torch.distributed.broadcast(spent, src=0)
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

        processes = max(world_size(), 1)
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
