"""`MLMTrainer`: `CountingTrainer` with masked-LM evaluation and a schedule laid over a time budget."""

from __future__ import annotations

import json

from transformers import TrainerCallback

from bigmodel_cli.mlm.evaluation import masked_loss_sums, process_share
from bigmodel_cli.mlm.masking import DeviceMasks, EpochToCollator
from bigmodel_cli.trainer.callbacks import BudgetProgress, TimeBudget, budget_schedule
from bigmodel_cli.trainer.checkpoints import state_file
from bigmodel_cli.trainer.trainer import CountingTrainer


class MLMTrainer(CountingTrainer):
    """Evaluates with its own collator (fixed masks, so held-out perplexity is comparable between
    epochs and runs) and, with a time budget, lays the learning-rate schedule over the budget."""

    def __init__(self, *args, eval_data_collator=None, budget: TimeBudget | None = None, head_warmup: float = 0.0,
                 head_learning_rate: float | None = None, seq_length: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        check_head_warmup(head_warmup, self.is_deepspeed_enabled)
        if self.is_fsdp_enabled:
            untie_head_bias(self.model)
        if budget is not None and not self.args.disable_tqdm:  # a bar in seconds, not in unknown steps
            from transformers.trainer_callback import ProgressCallback

            self.remove_callback(ProgressCallback)
            self.add_callback(BudgetProgress(budget))
        self.eval_data_collator = eval_data_collator
        self.budget = budget
        self.add_callback(EpochToCollator(self.data_collator))
        # a collator that leaves the masks to the device: drawn in `get_batch_samples`
        self.device_masks = DeviceMasks(self.data_collator) if getattr(self.data_collator, "on_device", False) else None
        one_process = self.args.world_size == 1 and not self.model_sharded
        self.head_warmup = HeadWarmup(self.model, head_warmup, budget, freeze=one_process) if head_warmup > 0 else None
        if self.head_warmup is not None:
            self.add_callback(self.head_warmup)
        self.head_learning_rate = head_learning_rate
        self.seq_length = seq_length  # the rows' length: the attention term of the FLOP count

    def create_optimizer(self, model=None):
        """Trainer's optimizer; with `head_learning_rate`, each of its groups split in two, the head's
        parameters (those outside the encoder) at that rate, so a fresh head learns fast while the
        encoder moves at the recipe's rate. Every schedule scales both alike."""
        optimizer = super().create_optimizer(model)
        if self.head_learning_rate is None:
            return optimizer
        encoder = {id(p) for p in encoder_parameters(self.model)}
        groups, optimizer.param_groups = optimizer.param_groups, []
        for group in groups:
            inside = [p for p in group["params"] if id(p) in encoder]
            outside = [p for p in group["params"] if id(p) not in encoder]
            for params, lr in ((inside, group["lr"]), (outside, self.head_learning_rate)):
                if params:
                    optimizer.add_param_group({**group, "params": params, "lr": lr})
        return optimizer

    def _clip_grad_norm(self, model):
        """Trainer's clipping, with the encoder's gradients dropped first during the head's warm-up:
        the head is clipped by its own norm (and the logged `grad_norm` is the head's), not by a norm
        that counts gradients thrown away after the clip."""
        if self.head_warmup is not None:
            self.head_warmup.drop_encoder_gradients(self.state)
        return super()._clip_grad_norm(model)

    def window_figures(self, tokens: float, masked: float, seconds: float) -> dict[str, float]:
        """A training log's model FLOP utilisation over its window, on a GPU of known peak (the
        formula in `bigmodel_cli/mfu.py`, as the run's closing figure)."""
        from bigmodel_cli.mfu import this_gpu, utilization

        if self.seq_length is None:
            return {}
        figures = utilization(self.model.config, self.seq_length, tokens, masked, seconds, this_gpu())
        return {"model_flops_utilization": round(figures["model_flops_utilization"], 4)} \
            if "model_flops_utilization" in figures else {}

    rng_checkpoint: str | None = None

    def _load_rng_state(self, checkpoint) -> None:
        """A streamed corpus resumes without Trainer's skipping of batches, so Trainer would restore
        the random state before the loader starts, whose start draws from it (its base seed): the
        state is restored at the first step instead, where the uninterrupted run had it."""
        if checkpoint is not None and hasattr(self.train_dataset, "position_after"):
            self.rng_checkpoint = checkpoint
            return
        super()._load_rng_state(checkpoint)

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.rng_checkpoint is not None:
            super()._load_rng_state(self.rng_checkpoint)
            self.rng_checkpoint = None
        return super().training_step(model, inputs, num_items_in_batch)

    def get_batch_samples(self, epoch_iterator, num_batches: int, device):
        """Trainer's fetch of one step's micro-batches; a collator that leaves the masks to the device
        gets them drawn here, on the device, before Trainer counts the masked tokens of the step."""
        batches, count = super().get_batch_samples(epoch_iterator, num_batches, device)
        if self.device_masks is None or not batches:
            return batches, count
        batches = [self.device_masks(self._prepare_inputs(batch)) for batch in batches]
        return batches, self._get_num_items_in_batch(batches, device)

    def get_eval_dataloader(self, eval_dataset=None):
        train_collator, self.data_collator = self.data_collator, self.eval_data_collator
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator = train_collator

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        """The held-out loss per masked token over the whole set, the figure `bigmodel eval` gives.
        Each process scores every world_size-th sequence (none twice, unlike Accelerate's evenly
        filled shards) and one all-reduce adds the sums. Every process runs as many batches as the
        busiest one (the extra ones count nothing), as a sharded model's forward needs them all."""
        from transformers.trainer_utils import EvalLoopOutput

        rows, world = dataloader.dataset, max(self.args.world_size, 1)
        size = self.args.per_device_eval_batch_size
        batches, counted = process_share(len(rows), self.args.process_index, world, size)
        self.callback_handler.eval_dataloader = batches  # the progress bar's length
        model = self._wrap_model(self.model, training=False)  # as Trainer's loop: FSDP's wrapper, DDP's module
        was_training = model.training
        model.eval()
        try:
            with self.autocast_smart_context_manager():
                total = masked_loss_sums(
                    model, self.eval_data_collator, rows, batches, counted, prepare=self._prepare_inputs,
                    on_batch=lambda: setattr(self, "control", self.callback_handler.on_prediction_step(
                        self.args, self.state, self.control)))
        finally:
            model.train(was_training)
        if world > 1:
            total = self.accelerator.reduce(total.to(self.args.device), reduction="sum").cpu()
        loss_sum, count, told, pairs = total.tolist()
        metrics = {f"{metric_key_prefix}_loss": loss_sum / max(count, 1), f"{metric_key_prefix}_masked_tokens": int(count)}
        if pairs:  # BERT's own objective: the held-out pairs' next-sentence accuracy
            metrics[f"{metric_key_prefix}_nsp_accuracy"] = told / pairs
        return EvalLoopOutput(predictions=None, label_ids=None, metrics=metrics, num_samples=len(rows))

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.budget is None:
            return super().create_scheduler(num_training_steps, optimizer)
        self.lr_scheduler = budget_schedule(optimizer or self.optimizer, self.budget, self.args.warmup_steps,
                                            str(getattr(self.args.lr_scheduler_type, "value", self.args.lr_scheduler_type)))
        return self.lr_scheduler

    def finished_at(self, checkpoint) -> bool:
        if self.budget is not None:
            saved = state_file(checkpoint, self.args.process_index)
            spent = json.loads(saved.read_text()).get("budget_seconds_spent", 0.0) if saved.is_file() else 0.0
            return spent >= self.budget.seconds
        return super().finished_at(checkpoint)

    def extra_state(self) -> dict:
        """The counts, the budget spent, and a streamed corpus's position after the rows trained so far
        (`stream.py`), which the main process alone reads: it hands every process its share of each batch."""
        state = super().extra_state()
        if self.budget is not None:
            state["budget_seconds_spent"] = self.budget.elapsed()
        if hasattr(self.train_dataset, "position_after") and self.args.process_index == 0:
            args = self.args
            per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
            state["stream"] = self.train_dataset.position_after(self.state.global_step * per_step)
        return state

    def load_extra_state(self, state: dict) -> None:
        super().load_extra_state(state)
        if self.budget is not None and "budget_seconds_spent" in state:
            self.budget.resume_at(state["budget_seconds_spent"])
        if "stream" in state:
            self.train_dataset.load_state_dict(state["stream"])


def check_head_warmup(head_warmup: float, deepspeed: bool) -> None:
    """DeepSpeed steps the optimizer inside `backward()`, before the warm-up can drop the encoder's
    gradients: the warm-up would do nothing while the header said it did. Refused instead."""
    if head_warmup > 0 and deepspeed:
        from bigmodel_cli.errors import BigmodelError

        raise BigmodelError("model.fresh_head_warmup: DeepSpeed steps the optimizer inside backward(), so the fresh "
                            "head cannot train alone first; set model.fresh_head_warmup=0, or launch with "
                            "--config accelerate/multi-gpu-ddp or accelerate/fsdp", agreed=True)


def untie_head_bias(model) -> None:
    """BERT's MLM head holds its output bias twice (`cls.predictions.bias`, tied to the decoder's).
    Accelerate's FSDP2 puts the decoder in a group of its own and the head in the root group, and
    torch refuses a parameter seen by two groups. Under FSDP the decoder keeps the one bias; the
    saved model has both names again (`pretrain.save`), as `BertForMaskedLM` loads it."""
    head = getattr(getattr(model, "cls", None), "predictions", None)
    if head is None or getattr(head, "bias", None) is None or head.decoder.bias is not head.bias:
        return
    del head._parameters["bias"]
    untied = {k: v for k, v in model.all_tied_weights_keys.items() if k != "cls.predictions.decoder.bias"}
    model._tied_weights_keys = model.all_tied_weights_keys = untied


def encoder_parameters(model) -> list:
    """The parameters of the masked LM's encoder (the tied decoder's word embeddings among them); the
    rest are its head's. The split that the head's warm-up and its learning rate both go by."""
    prefix = model.base_model_prefix + "."
    return [p for n, p in model.named_parameters() if n.startswith(prefix)]


class HeadWarmup(TrainerCallback):
    """A fresh MLM head trains alone first: for the first `share` of the run (of the time budget, else
    of the steps) the encoder is frozen (one process) or its gradients are dropped before each
    optimizer step (several), so AdamW skips its
    parameters (the tied word embeddings too) while the head's transform and bias learn; then the
    encoder joins, with its optimizer state fresh. Decided by the step count or the budget's shared
    clock, so a resumed run and every process drop the same steps."""

    def __init__(self, model, share: float, budget: TimeBudget | None, freeze: bool = False):
        self.share, self.budget = share, budget
        self.encoder = encoder_parameters(model)
        # In one process the encoder is frozen while the head warms up, so its backward pass is not
        # computed at all (about two thirds of a step's work). Across processes DDP expects every
        # parameter's gradient at every step, so there the gradients are computed and dropped.
        self.freeze = freeze
        self.frozen = False

    def set_frozen(self, frozen: bool) -> None:
        if frozen != self.frozen:
            self.frozen = frozen
            for parameter in self.encoder:
                parameter.requires_grad_(not frozen)

    def on_step_begin(self, args, state, control, **kwargs):
        if self.freeze:
            self.set_frozen(self.warming(state))

    def on_train_end(self, args, state, control, **kwargs):
        self.set_frozen(False)  # a run that ends warming (a stop, a short run) leaves a model that trains

    def warming(self, state) -> bool:
        if self.budget is not None:
            return self.budget.fraction() < self.share
        return state.global_step < self.share * state.max_steps

    def drop_encoder_gradients(self, state) -> None:
        if self.warming(state):
            for parameter in self.encoder:
                parameter.grad = None

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.drop_encoder_gradients(state)  # done before the clip already, when one runs
