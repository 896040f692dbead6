"""The one `Trainer` subclass of pretrain and finetune: Trainer is the loop; this counts what it trains.

`CountingTrainer` adds what `Trainer` lacks: an exact count of the real (non-padding) tokens and
examples trained on, the whole run's training loss (kept across resumes), a stop with the step
number when the loss stops being finite (`logging_nan_inf_filter` would hide it and the run would
exit 0 with NaN weights), and in each training log the speed since the log before. Its two other
jobs live in mixins of their own: seeded whole-batch sampling (`sampling.SeededSampling`) and
atomic checkpoints (`checkpoints.AtomicCheckpoints`).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback

from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.processes import agreed_minimum, summed_over_processes, wait_for_everyone, world_size
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
        # Per step, on the device, never read back: [real tokens, examples, summed loss, masked tokens] and the first
        # step whose loss was not finite (-1: none). Read at logging steps, saves and the end only, so
        # a step never waits for the GPU (`.item()` on every step stalled the host).
        self.sums: torch.Tensor | None = None
        self.first_bad: torch.Tensor | None = None
        self.loss_before = 0.0  # the summed loss of the steps before a resume (saved in checkpoints)
        self.aside_seconds = 0.0  # spent evaluating and checkpointing inside train(): not training speed
        # (seconds, real tokens, examples, masked tokens, aside seconds) at the last training log: its window's start
        self.window: tuple[float, ...] | None = None
        self.first_step_seconds: float | None = None  # from the process's start to its first training step
        self.add_callback(FiniteLossCheck(self))

    def _build_accelerator_args(self, **kwargs) -> dict:
        """Accelerate compiles as the recipe says (`training.torch_compile`, the launch config's
        dynamo_backend where the recipe named none: `recipe.launch_settings`). Given no backend, it took
        the launch's from the environment, and a recipe's torch_compile: false compiled."""
        args = super()._build_accelerator_args(**kwargs)
        if not self.args.torch_compile:
            from accelerate.utils import TorchDynamoPlugin

            args["dynamo_plugin"] = TorchDynamoPlugin(backend="no")
        fsdp_on_cpu(args)
        return args

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Trainer's save, and under FSDP with sharded checkpoints the whole model as well: Trainer
        writes no weights there (only the checkpoint's shards), so a run folder would have none.
        Every process calls it (the weights are gathered from all of them); the main one writes."""
        if self.is_fsdp_enabled and "FULL_STATE_DICT" not in str(self.accelerator.state.fsdp_plugin.state_dict_type):
            state_dict = self.accelerator.get_state_dict(self.model)  # a collective: every process
            if self.args.should_save:
                self._save(output_dir or self.args.output_dir, state_dict=state_dict)
            return
        super().save_model(output_dir, _internal_call)

    @property
    def model_sharded(self) -> bool:
        """Whether the model (or its training state) is sharded over the processes (FSDP, DeepSpeed):
        its weights are gathered to be whole, and its forward pass is a collective."""
        return self.is_fsdp_enabled or self.is_deepspeed_enabled

    def full_state_dict(self) -> dict | None:
        """The model's whole state dict on the main process (None on the others), gathered from every
        process's shards under FSDP: every process calls it."""
        if self.model_sharded:
            state_dict = self.accelerator.get_state_dict(self.model)
        else:
            state_dict = self.accelerator.unwrap_model(self.model).state_dict()
        return state_dict if self.args.should_save else None

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.window is None:  # the first window starts with the first step (and shows its warm-up)
            self.window = (time.perf_counter(), 0.0, 0.0, 0.0, self.aside_seconds)  # nothing counted yet
            self.first_step_seconds = round(time.time() - process_start(), 3)
        ids = inputs["input_ids"]
        real = (ids != self.pad_token_id).sum()
        if "position_ids" in inputs:  # packed rows: every line starts at position 0
            examples = ((inputs["position_ids"] == 0) & (ids != self.pad_token_id)).sum()
        else:
            examples = ids.shape[0]
        labels = inputs.get("labels")
        masked = (labels != -100).sum() if labels is not None and labels.shape == ids.shape else 0  # MLM targets
        loss = super().training_step(model, inputs, num_items_in_batch)
        done = loss.detach().double()
        # Python numbers join the sums as fills made on the device: `torch.as_tensor(n, device=gpu)` would be
        # a host-to-device copy, which waits for every queued kernel (three stalls a step, measured on an H200)
        step = torch.stack([on_device(real, done), on_device(examples, done), done, on_device(masked, done)])
        if self.sums is None:
            self.sums = torch.zeros(4, dtype=torch.float64, device=done.device)
            self.first_bad = torch.full((2,), -1.0, dtype=torch.float64, device=done.device)  # step, loss
        self.sums += step
        bad = (~torch.isfinite(done)) & (self.first_bad[0] < 0)
        self.first_bad = torch.where(bad, torch.stack([done.new_full((), self.state.global_step + 1.0), done]),
                                     self.first_bad)
        return loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Trainer's log; a training log (the one with `loss`) also gets the speed since the last one:
        `tokens_per_second` (real tokens) and `examples_per_second`, all processes together, with
        evaluations and checkpoints set aside, and the `window_figures` of the subclass. Read where the
        host reads anyway (the loss), so the steps between logs still never wait for the device."""
        if "loss" in logs and self.window is not None:
            start, *counted, aside = self.window
            now, (tokens, examples, _, masked) = time.perf_counter(), self.read_sums()
            seconds = max(now - start - (self.aside_seconds - aside), 1e-9)
            window = summed_over_processes(tokens - counted[0], examples - counted[1], masked - counted[2])
            logs["tokens_per_second"] = round(window[0] / seconds, 1)
            logs["examples_per_second"] = round(window[1] / seconds, 2)
            logs.update(self.window_figures(window[0], window[2], seconds))
            self.window = (now, tokens, examples, masked, self.aside_seconds)  # windows end to end
        super().log(logs, start_time)

    def window_figures(self, tokens: float, masked: float, seconds: float) -> dict[str, float]:
        """More figures for a training log's window (`tokens` real and `masked` tokens in `seconds`)."""
        return {}

    def read_sums(self) -> tuple[float, float, float, float]:
        """(real tokens, examples, summed loss, masked tokens) of this process's steps so far (a host sync)."""
        tokens, examples, loss, masked = self.sums.tolist() if self.sums is not None else (0.0, 0.0, 0.0, 0.0)
        return tokens, examples, self.loss_before + loss, masked

    def raise_if_diverged(self) -> None:
        """Stop with the step number once a step's loss was not finite (`logging_nan_inf_filter`
        would hide it, and the run would exit 0 with NaN weights). Called at logging steps, before
        every save and at the end, so no checkpoint holds the weights after a non-finite loss."""
        step, loss = self.first_bad.tolist() if self.first_bad is not None else (-1.0, 0.0)
        # Agreed by every process (each reaches this point at the same steps): the first bad step of any. A
        # process stopping alone would leave the others waiting in the next all-reduce until a timeout.
        first = agreed_minimum(step if step >= 0 else math.inf)
        if math.isinf(first):
            return
        # Where another process's loss went bad first (this one's maybe later, through the gradients), it says so.
        what = f"the training loss became {loss}" if step == first else "another process's training loss became not finite"
        wait_for_everyone()
        kept = checkpoints(Path(self.args.output_dir))
        where = f"; the last good checkpoint is {kept[-1]}" if kept else ""
        raise BigmodelError(
            f"{what} at step {int(first)}: training diverged; lower "
            f"training.learning_rate (now {self.args.learning_rate}) or raise warmup_steps{where}",
            exit_code=3,
            agreed=True,
        )

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict:
        start = time.perf_counter()
        try:
            return self.evaluation(eval_dataset, ignore_keys, metric_key_prefix)
        finally:
            self.aside_seconds += time.perf_counter() - start

    def evaluation(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict:
        """The evaluation itself (its time is set aside from training speed): Trainer's loop here;
        fine-tuning's trainers take `bigmodel eval`'s path and end with `evaluated`."""
        return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)

    def evaluated(self, metrics: dict, prefix: str, started: float, samples: int, steps: int | None = None) -> dict:
        """What Trainer does with an evaluation's figures: add its speed, log them, tell the callbacks."""
        from transformers.trainer_utils import speed_metrics

        metrics.update(speed_metrics(prefix, started, num_samples=samples, num_steps=steps))
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def extra_state(self) -> dict:
        return {"loss_sum": self.read_sums()[2]}

    def load_extra_state(self, state: dict) -> None:
        self.loss_before = state["loss_sum"]

    def train_and_measure(self, resume_from: Path | None, stop: GracefulStop) -> dict:
        """Train (resuming from a checkpoint when given), stop cleanly after Ctrl-C, and return
        Trainer's metrics with real-token throughput and the whole run's mean training loss."""
        if resume_from is not None and self.finished_at(resume_from):
            return self.finish_from(resume_from)
        result = self.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        stop.raise_if_stopped(self)
        metrics = {**result.metrics, **self.throughput(result.metrics["train_runtime"])}
        metrics["train_loss"] = self.train_loss()
        return metrics

    def finished_at(self, checkpoint: Path) -> bool:
        """Whether `checkpoint` is the end of training: a run killed while it wrote its results.
        Trainer, resumed there, would train one more step (it checks the step count after a step)."""
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        return state["global_step"] >= state["max_steps"] > 0

    def finish_from(self, checkpoint: Path) -> dict:
        """The finished training of `checkpoint`, without a step more: its weights, state and sums
        (the best model's weights where the run keeps the best); this part trained nothing."""
        from transformers.trainer_callback import TrainerState

        self._load_from_checkpoint(str(checkpoint))
        self.state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
        if self.args.load_best_model_at_end and self.state.best_model_checkpoint:
            self._load_best_model()
        metrics = {"train_runtime": 0.0, "train_samples_per_second": 0.0, "train_steps_per_second": 0.0,
                   "total_flos": self.state.total_flos, "epoch": self.state.epoch, **self.throughput(0.0)}
        metrics["train_loss"] = self.train_loss()
        return metrics

    def examples_trained(self) -> int:
        """The examples (lines, or their pieces) trained on, all processes together."""
        (examples,) = summed_over_processes(self.read_sums()[1])
        return int(examples)

    def train_loss(self) -> float:
        """The mean training loss over all steps of the run. Trainer's own `train_loss` averages only
        the steps since the last resume, so a resumed run would report another figure."""
        (total,) = summed_over_processes(self.read_sums()[2])
        return total / world_size() / max(self.state.global_step, 1)

    def throughput(self, runtime: float) -> dict[str, float]:
        """Real tokens and examples per second over the training run, summed over processes."""
        tokens, examples, _, masked = self.read_sums()
        tokens, examples, masked = summed_over_processes(tokens, examples, masked)
        runtime = max(runtime, 1e-9)
        training = max(runtime - self.aside_seconds, 1e-9)  # evaluation and checkpoints set aside
        return {
            "train_real_tokens": int(tokens),
            "train_masked_tokens": int(masked),
            "train_tokens_per_second": round(tokens / runtime, 3),
            "train_examples_per_second": round(examples / runtime, 3),
            "train_step_seconds": round(training, 3),
            "train_step_examples_per_second": round(examples / training, 3),
        }


def fsdp_on_cpu(args: dict) -> None:
    """FSDP2 where Accelerate would not apply it: on CPU processes (gloo), which Accelerate sets up
    as plain multi-process training whatever the launch config says. torch's `fully_shard` runs
    there, so the config runs as written (and a CPU machine tests the FSDP path: sharded training,
    the gathered save, resume). FSDP1 stays refused (`callbacks.check_engine`)."""
    import os

    from accelerate.state import AcceleratorState, DistributedType, PartialState
    from accelerate.utils import FullyShardedDataParallelPlugin

    if (os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true" or AcceleratorState._shared_state
            or PartialState().distributed_type != DistributedType.MULTI_CPU):
        return
    if os.environ.get("FSDP_VERSION", "2") != "2" and args.get("fsdp_plugin") is None:
        from bigmodel_cli.trainer.callbacks import check_engine

        check_engine()  # FSDP1 on CPU processes: the one-line refusal (its plugin would fail to build)
    plugin = args.get("fsdp_plugin") or FullyShardedDataParallelPlugin()
    if plugin.fsdp_version != 2:
        return
    from accelerate.utils import TorchDynamoPlugin

    state = AcceleratorState(mixed_precision=args.get("mixed_precision"), cpu=args.get("cpu", False),
                             dynamo_plugin=args.get("dynamo_plugin") or TorchDynamoPlugin(), fsdp_plugin=plugin,
                             _from_accelerator=True)  # as `Accelerator` makes it, which then finds it made
    # Said to both: `AcceleratorState()` copies the partial state's type over its own at each call.
    PartialState._shared_state["distributed_type"] = state.distributed_type = DistributedType.FSDP
    if state._mixed_precision != "no":
        plugin.set_mixed_precision(state._mixed_precision)
    state.fsdp_plugin = plugin
    args["fsdp_plugin"] = plugin


def process_start() -> float:
    """When this process started (seconds since the epoch)."""
    import psutil

    return psutil.Process().create_time()


def on_device(value, like: torch.Tensor) -> torch.Tensor:
    """`value` (a tensor or a Python number) as a float64 scalar where `like` is, without a copy from
    the host: a number becomes a fill kernel, a tensor is converted where it is."""
    if isinstance(value, torch.Tensor):
        return value.to(like.device, torch.float64)
    return like.new_full((), float(value), dtype=torch.float64)


class FiniteLossCheck(TrainerCallback):
    """Reads the trainer's non-finite-loss flag where the host reads anyway: at logging steps,
    before saves and evaluations, and at the end."""

    def __init__(self, trainer: CountingTrainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_log or control.should_save or control.should_evaluate or control.should_training_stop:
            self.trainer.raise_if_diverged()

    def on_train_end(self, args, state, control, **kwargs):
        self.trainer.raise_if_diverged()
