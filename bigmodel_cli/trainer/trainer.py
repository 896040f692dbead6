"""The one `Trainer` subclass of pretrain and finetune: Trainer is the loop; this counts what it trains.

`CountingTrainer` adds what `Trainer` lacks: an exact count of the real (non-padding) tokens and
examples trained on, the whole run's training loss (kept across resumes), and a stop with the step
number when the loss stops being finite (`logging_nan_inf_filter` would hide it and the run would
exit 0 with NaN weights). Its two other jobs live in mixins of their own: seeded whole-batch
sampling (`sampling.SeededSampling`) and atomic checkpoints (`checkpoints.AtomicCheckpoints`).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from transformers import Trainer

from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.processes import summed_over_processes, world_size
from bigmodel_cli.rundir import checkpoints
from bigmodel_cli.trainer.callbacks import GracefulStop
from bigmodel_cli.trainer.checkpoints import AtomicCheckpoints
from bigmodel_cli.trainer.sampling import SeededSampling


class CountingTrainer(AtomicCheckpoints, SeededSampling, Trainer):
    """`Trainer` that counts real tokens and examples and stops on a non-finite loss; seeded
    sampling and atomic checkpoints come from its mixins."""

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

    def evaluate(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return super().evaluate(*args, **kwargs)
        finally:
            self.aside_seconds += time.perf_counter() - start

    def extra_state(self) -> dict:
        return {"loss_sum": self.loss_sum}

    def load_extra_state(self, state: dict) -> None:
        self.loss_sum = state["loss_sum"]

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
        return total / world_size() / max(self.state.global_step, 1)

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
