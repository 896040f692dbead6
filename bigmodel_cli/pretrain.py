"""`bigmodel pretrain`: a BERT masked-language model from scratch on plain text, one example per line."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from transformers import TrainerCallback

from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.files import check_text_file
from bigmodel_cli.recipe import PretrainRecipe, dump_recipe
from bigmodel_cli.rundir import RECIPE_FILE, clean_metrics, shown, write_json, write_model_card
from bigmodel_cli.scoring import perplexity
from bigmodel_cli.training import BudgetProgress, CountingTrainer, GracefulStop, RunHeader, TimeBudget, budget_schedule, training_arguments

MAX_UNKNOWN_RATE = 0.2  # a tokenizer that maps more of the corpus than this to [UNK] does not fit it


def run(recipe: PretrainRecipe, run_dir: Path, resume_from: Path | None = None, quiet: bool = False) -> dict:
    """Tokenizer, data, model, train, evaluate, save; returns the metrics written to metrics.json."""
    from transformers import set_seed

    from bigmodel_cli.kernels import use_fast_dropout
    from bigmodel_cli.mlm import MLMCollator, SparseHeadBertForMaskedLM

    args = training_arguments(recipe.training, run_dir, quiet, prediction_loss_only=True,
                              remove_unused_columns=False)
    set_seed(recipe.training.seed)
    # local=False: the global main process first, then the rest, which reuse its tokenizer from the
    # run directory (on every machine the same folder: a shared filesystem, as Trainer's checkpoints need).
    with args.main_process_first(local=False, desc="tokenizer and data"):
        raw = load_corpus(recipe)
        tokenizer = get_tokenizer(recipe, raw["train"], run_dir)
        train_rows, eval_rows = tokenize_corpus(recipe, tokenizer, raw)
    model = SparseHeadBertForMaskedLM(bert_config(recipe, tokenizer))
    use_fast_dropout(model)
    stop = GracefulStop()
    budget = TimeBudget(recipe.training.time_budget) if recipe.training.time_budget else None
    header = RunHeader("pretrain", f"train {len(raw['train'])} lines in {len(train_rows)} sequences, "
                       f"eval {len(raw['validation'])} lines", quiet, budget)
    trainer = MLMTrainer(
        model=model,
        args=args,
        train_dataset=train_rows,
        eval_dataset=eval_rows,
        data_collator=MLMCollator(tokenizer, recipe.data.mlm_probability, recipe.training.seed),
        eval_data_collator=MLMCollator(tokenizer, recipe.data.mlm_probability, recipe.training.seed + 1),
        pad_token_id=tokenizer.pad_token_id,
        budget=budget,
        callbacks=[header, stop, budget] if budget else [header, stop],  # before the progress bar
    )
    if args.process_index == 0:
        dump_recipe(recipe, run_dir / RECIPE_FILE, f"bigmodel pretrain: {shlex.join(sys.argv[1:])}")
    metrics = trainer.train_and_measure(resume_from, stop)
    metrics["train_rows_per_second"] = metrics["train_samples_per_second"]  # packed sequences
    metrics["train_samples_per_second"] = metrics["train_examples_per_second"]  # lines: the examples
    metrics.update(trainer.evaluate())
    metrics["perplexity"] = perplexity(metrics["eval_loss"])
    metrics["train_samples"] = len(raw["train"])
    metrics["eval_samples"] = len(raw["validation"])
    metrics["model_parameters"] = model.num_parameters()
    if trainer.is_world_process_zero():
        save(model, tokenizer, run_dir, clean_metrics(metrics), recipe)
        trainer.save_state()  # trainer_state.json: the log history `bigmodel report` plots
    return metrics


def load_corpus(recipe: PretrainRecipe):
    """Train and held-out lines as a DatasetDict of `text`; blank and whitespace-only lines dropped."""
    from datasets import load_dataset

    data = recipe.data
    if data.train_files:
        files = {"train": [str(check_text_file(f, "data.train_files:")) for f in data.train_files]}
        if data.eval_files:
            files["validation"] = [str(check_text_file(f, "data.eval_files:")) for f in data.eval_files]
        raw = load_dataset("text", data_files=files)
    else:
        try:
            raw = load_dataset(data.dataset_name, data.dataset_config_name)
        except Exception as e:  # connection, offline mode, unknown name: all say the same to a user
            raise BigmodelError(
                f"data.dataset_name '{data.dataset_name}' could not be loaded ({type(e).__name__}); "
                "offline, give local text files in data.train_files"
            ) from None
    raw = raw.filter(lambda row: bool(row["text"].strip()), desc="dropping blank lines")
    if len(raw["train"]) == 0:
        raise BigmodelError("the training corpus has no non-blank lines; check data.train_files")
    if "validation" not in raw:
        split = raw["train"].train_test_split(
            test_size=data.validation_split_percentage / 100, seed=recipe.training.seed
        )
        raw["train"], raw["validation"] = split["train"], split["test"]
    if data.max_train_samples:
        raw["train"] = raw["train"].select(range(min(data.max_train_samples, len(raw["train"]))))
    if data.max_eval_samples:
        raw["validation"] = raw["validation"].select(range(min(data.max_eval_samples, len(raw["validation"]))))
    if len(raw["validation"]) == 0:
        raise BigmodelError("no held-out lines; raise data.validation_split_percentage or give data.eval_files")
    return raw


def get_tokenizer(recipe: PretrainRecipe, train_lines, run_dir: Path):
    """The recipe's tokenizer, or a WordPiece one trained on the training lines (saved in the run
    directory, so a resumed run and every other process reuse it)."""
    from transformers import AutoTokenizer

    from bigmodel_cli.mlm import train_wordpiece, unknown_rate

    spec = recipe.tokenizer
    source = spec.name_or_path or (run_dir if (run_dir / "tokenizer.json").is_file() else None)
    if source:
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(source))
        except (OSError, ValueError) as e:
            raise BigmodelError(f"tokenizer.name_or_path '{source}' is not a tokenizer ({e.__class__.__name__})") from None
    else:
        tokenizer = train_wordpiece(
            (row["text"] for row in train_lines), spec.vocab_size, spec.lowercase, spec.min_frequency,
            length=len(train_lines),
        )
        tokenizer.save_pretrained(str(run_dir))
    if tokenizer.mask_token_id is None or tokenizer.pad_token_id is None:
        raise BigmodelError(f"tokenizer '{source}' has no [MASK] or [PAD] token; masked-LM training needs both")
    sample = [row["text"] for row in train_lines.select(range(min(500, len(train_lines))))]
    rate = unknown_rate(tokenizer, sample)
    if rate > MAX_UNKNOWN_RATE:
        raise BigmodelError(
            f"tokenizer '{source or 'trained'}' maps {rate:.0%} of the corpus to [UNK]; it does not fit this "
            "text: train one (tokenizer.name_or_path: null) or choose another"
        )
    return tokenizer


def tokenize_corpus(recipe: PretrainRecipe, tokenizer, raw):
    """Lines -> examples (long lines split, not dropped) -> rows (packed unless data.packing=false)."""
    from bigmodel_cli.mlm import packed_dataset, tokenize_lines

    rows = []
    for split in ("train", "validation"):
        examples = tokenize_lines(raw[split], tokenizer, recipe.data.max_seq_length)
        rows.append(packed_dataset(examples, recipe.data.max_seq_length, recipe.data.packing))
    return rows


def bert_config(recipe: PretrainRecipe, tokenizer):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        architectures=["BertForMaskedLM"],
        **recipe.model.model_dump(),
    )


def save(model, tokenizer, run_dir: Path, metrics: dict, recipe: PretrainRecipe) -> None:
    """The model as a plain `BertForMaskedLM` (safetensors), tokenizer, metrics, model card."""
    from transformers import BertForMaskedLM

    plain = BertForMaskedLM(model.config)
    plain.load_state_dict(model.state_dict())
    plain.save_pretrained(str(run_dir))
    tokenizer.model_max_length = recipe.data.max_seq_length
    tokenizer.save_pretrained(str(run_dir))
    write_json(run_dir / "metrics.json", metrics)
    write_model_card(
        run_dir,
        title=f"BERT masked LM ({recipe.model.num_hidden_layers} layers, {recipe.model.hidden_size} hidden)",
        summary=(
            f"A BERT masked-language model pretrained from scratch with bigmodel on "
            f"{', '.join(recipe.data.train_files) or recipe.data.dataset_name}. Held-out perplexity "
            f"{shown(metrics['perplexity'], 2)}."
        ),
        metrics=metrics,
        command=f"bigmodel pretrain {shlex.join(sys.argv[2:] if len(sys.argv) > 2 else [])}",
        load_class="AutoModelForMaskedLM",
        tags=["fill-mask"],
        datasets=[recipe.data.dataset_name] if recipe.data.dataset_name else [],
    )


class MLMTrainer(CountingTrainer):
    """Evaluates with its own collator (fixed masks, so held-out perplexity is comparable between
    epochs and runs) and, with a time budget, lays the learning-rate schedule over the budget."""

    def __init__(self, *args, eval_data_collator=None, budget: TimeBudget | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if budget is not None and not self.args.disable_tqdm:  # a bar in seconds, not in unknown steps
            from transformers.trainer_callback import ProgressCallback

            self.remove_callback(ProgressCallback)
            self.add_callback(BudgetProgress(budget))
        self.eval_data_collator = eval_data_collator
        self.budget = budget
        self.add_callback(EpochToCollator(self.data_collator))

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

        from bigmodel_cli.mlm import masked_loss_sums, process_share

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
        loss_sum, count = total.tolist()
        metrics = {f"{metric_key_prefix}_loss": loss_sum / max(count, 1), f"{metric_key_prefix}_masked_tokens": int(count)}
        return EvalLoopOutput(predictions=None, label_ids=None, metrics=metrics, num_samples=len(rows))

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.budget is None:
            return super().create_scheduler(num_training_steps, optimizer)
        warmup = self.args.warmup_steps if self.args.warmup_steps < 1 else 0.0
        self.lr_scheduler = budget_schedule(optimizer or self.optimizer, self.budget, warmup)
        return self.lr_scheduler


class EpochToCollator(TrainerCallback):
    """Tells the masking collator which epoch it is, so each epoch draws fresh, reproducible masks
    (a resumed run restores the epoch from its checkpoint before the first batch)."""

    def __init__(self, collator):
        self.collator = collator

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.collator.epoch = int((state.epoch or 0) + 1e-9)
