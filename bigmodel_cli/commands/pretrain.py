"""`bigmodel pretrain`: a BERT masked-language model from scratch on plain text, one example per line."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from bigmodel_cli.console import setup, shown, summary
from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.recipe import PretrainRecipe, load_recipe, recipe_name
from bigmodel_cli.rundir import METRICS_FILE, clean_metrics, command_line, open_run, write_json, write_model_card

SUMMARY_KEYS = ["train_samples", "train_runtime", "train_tokens_per_second", "train_loss", "eval_loss", "perplexity",
                "eval_nsp_accuracy", "model_parameters", "model_flops_utilization", "probe_accuracy", "probe_f1", "probe_share"]


def command(recipe: str | None, flags: dict, output_dir: Path | None, overrides: list[str] | None,
            overwrite: bool, quiet: bool, prepare_only: bool = False) -> None:
    """The command line's `pretrain` (`flags`: the recipe keys its options set, None: unset): recipe,
    run directory (resuming an unfinished run), run, summary; with `prepare_only`, the tokenizer and
    rows into the cache and nothing else."""
    setup(quiet)
    recipe = recipe or ("pretrain/continue" if flags.get("model.name_or_path") else "pretrain/bert-tiny")
    loaded, _ = load_recipe("pretrain", recipe, flags=flags, overrides=overrides)
    if loaded.training.load_best_model_at_end:
        raise BigmodelError("training.load_best_model_at_end: pretrain keeps the last model (its held-out "
                            "perplexity is measured at the end); remove the key or set it false")
    if loaded.model.name_or_path:  # a checkpoint that cannot be continued stops here, before any folder is made
        from bigmodel_cli.mlm.configs import checkpoint_config, with_checkpoint

        loaded = with_checkpoint(loaded, checkpoint_config(loaded))  # its family and shape, as the recipe saved
    if loaded.training.probe is not None:  # the probe's task files, checked before any folder is made
        from bigmodel_cli.mlm.probe import probe_examples

        probe_examples(loaded.training.probe, loaded.training.seed)
    if prepare_only:  # no run directory: a cluster job prepares the data once, before the launch
        from bigmodel_cli.mlm.cache import cache_root

        data = prepare(loaded, None)
        phases = ", ".join(f"{phase} {value:.1f} s" for phase, value in data.seconds.items())
        print(f"prepared {len(data.rows[0])} training and {len(data.rows[1])} held-out rows in {cache_root()} "
              f"({', '.join(data.notes)}; {phases}); a run with this recipe reads them from there")
        return
    run_dir = output_dir or Path("runs") / recipe_name(recipe)
    resume = open_run(run_dir, loaded, overwrite)
    metrics = run(loaded, run_dir, resume, quiet)
    summary("pretrain", metrics, run_dir, quiet, SUMMARY_KEYS)


@dataclass
class Prepared:
    """A corpus made ready to train on: its lines, the tokenizer, the checkpoint's config (continued
    pretraining), whether the model is a BERT (packing and the sparse head are BERT's), the
    training and held-out rows, what the run header says of where they came from, and the seconds each
    phase took (reading the corpus, the tokenizer, tokenizing, packing)."""

    raw: object
    tokenizer: object
    checkpoint: object
    bert: bool
    rows: list
    notes: list[str]
    seconds: dict[str, float]
    files: list[str]  # the training files (globs expanded); empty for a hub data set


def prepare(recipe: PretrainRecipe, run_dir: Path | None) -> Prepared:
    """The corpus's lines, the tokenizer (into `run_dir`, where one is given) and the rows, each from
    the cache where it is there, made and cached where not."""
    from bigmodel_cli.memory import MappedPages
    from bigmodel_cli.mlm.configs import checkpoint_config
    from bigmodel_cli.mlm.corpus import load_corpus, stream_corpus
    from bigmodel_cli.mlm.stream import stream_rows
    from bigmodel_cli.mlm.text import tokenize_corpus
    from bigmodel_cli.mlm.tokenizer import get_tokenizer

    release = MappedPages(every=1)  # after each phase: what it read through a memory map is not kept resident
    start = time.perf_counter()
    corpus = stream_corpus(recipe) if recipe.data.streaming else load_corpus(recipe)
    release()
    seconds = {"read": time.perf_counter() - start}
    tokenizer, tokenizer_note = get_tokenizer(recipe, corpus, run_dir)
    release()
    seconds["tokenizer"] = time.perf_counter() - start - seconds["read"]
    checkpoint = checkpoint_config(recipe) if recipe.model.name_or_path else None  # read once
    # packing and the sparse head are BERT's; other families: one line per row, the stock head
    bert = (checkpoint.model_type if checkpoint else recipe.model.type) == "bert"
    packing = recipe.data.packing and bert
    if corpus.streamed:  # rows made as training reads them
        rows, rows_note = stream_rows(recipe, tokenizer, corpus, packing), "rows made on the fly"
    else:
        rows, cached = tokenize_corpus(recipe, tokenizer, corpus, packing=packing, seconds=seconds)
        release()
        rows_note = "rows from the cache" if cached else "rows prepared and cached"
    notes = [*corpus.notes, *([tokenizer_note] if tokenizer_note else []), rows_note]
    return Prepared(corpus.raw, tokenizer, checkpoint, bert, rows, notes,
                    {k: round(v, 3) for k, v in seconds.items()}, corpus.files.get("train", []))


def run(recipe: PretrainRecipe, run_dir: Path, resume_from: Path | None = None, quiet: bool = False) -> dict:
    """Tokenizer, data, model, train, evaluate, save; returns the metrics written to metrics.json."""
    from transformers import set_seed

    from bigmodel_cli.kernels import speedups
    from bigmodel_cli.mlm.evaluation import perplexity
    from bigmodel_cli.mlm.masking import MLMCollator
    from bigmodel_cli.mlm.model import masked_lm
    from bigmodel_cli.mlm.rowfile import read_with_pread
    from bigmodel_cli.mlm.trainer import MLMTrainer
    from bigmodel_cli.seeds import derive_seed
    from bigmodel_cli.trainer.arguments import check_precision, on_gpu, training_arguments
    from bigmodel_cli.trainer.callbacks import GracefulStop, RunHeader, TimeBudget

    check_precision(recipe.training)
    streaming = recipe.data.streaming
    # A stream resumes where its checkpoint says (`stream.StreamedRows`), not by Trainer's skipping of
    # batches; under a time budget the budget ends it, and Trainer wants a step count all the same.
    stream_args = {"ignore_data_skip": True, **({"max_steps": 10**12} if recipe.training.max_steps <= 0 else {})}
    args = training_arguments(recipe.training, run_dir, quiet, prediction_loss_only=True,
                              remove_unused_columns=False, **(stream_args if streaming else {}))
    seed = recipe.training.seed
    set_seed(derive_seed(seed, "init"))
    # One process per machine prepares the data into the machine's cache (one in all where the cache is on a
    # file system every machine sees: data.shared_cache); the rest wait, up to training.ddp_timeout, and read
    # it from there, memory-mapped. The tokenizer goes into the run directory, which every machine shares.
    with args.main_process_first(local=not recipe.data.shared_cache, desc="tokenizer and data"):
        data = prepare(recipe, run_dir)
    raw, tokenizer, checkpoint, bert = data.raw, data.tokenizer, data.checkpoint, data.bert
    train_rows, eval_rows = data.rows
    model, origin = masked_lm(recipe, tokenizer, checkpoint)
    notes = [origin, speedups(model), *data.notes]
    fresh = getattr(model, "fresh_head", False)
    if fresh and recipe.model.fresh_head_warmup:
        notes.append(f"the fresh head trains alone for the first {recipe.model.fresh_head_warmup:.0%} of the run")
    if fresh and recipe.model.fresh_head_learning_rate:
        notes.append(f"the fresh head at learning rate {recipe.model.fresh_head_learning_rate:g}")
    budget = TimeBudget(recipe.training.time_budget) if recipe.training.time_budget else None
    stop = GracefulStop(budget)  # signals and the budget's end: one decision for every process
    if budget is not None:
        warmup = recipe.training.warmup_steps
        notes.append(f"{recipe.training.lr_scheduler_type} schedule over the budget's seconds, warm-up "
                     + (f"{int(warmup)} steps" if warmup >= 1 else f"{warmup:.0%} of the budget"))
        steps = recipe.training.max_steps
        notes.append(f"the budget ends the run{f' (or max_steps {steps}, if sooner)' if steps > 0 else ''}, "
                     f"not num_train_epochs {recipe.training.num_train_epochs:g}")
    trained = (f"train a stream of {len(data.files)} file{'s' if len(data.files) != 1 else ''}" if streaming and data.files
               else "train a stream" if streaming else f"train {len(raw['train'])} lines in {len(train_rows)} sequences")
    probe = None
    if recipe.training.probe is not None:
        from bigmodel_cli.mlm.probe import Probe

        probe = Probe(recipe.training.probe, tokenizer, seed, recipe.data.max_seq_length, bf16=recipe.training.bf16,
                      stop=stop)
        notes.append(probe.note())
    header = RunHeader("pretrain", f"{trained}, eval {len(raw['validation'])} lines", quiet, budget, notes)
    probability, words = recipe.data.mlm_probability, recipe.data.whole_word_masking
    collator = MLMCollator
    if recipe.model.objective == "mlm+nsp":  # sentence pairs: token types and next-sentence labels too
        from bigmodel_cli.mlm.pairs import PairCollator as collator
    trainer = MLMTrainer(
        model=model,
        args=args,
        train_dataset=read_with_pread(train_rows),  # shuffled reads through the map would stay resident
        eval_dataset=eval_rows,
        data_collator=collator(tokenizer, probability, seed, positions=bert, whole_words=words, position_ids=bert,
                                  on_device=on_gpu(recipe.data.mask_on_device)),
        eval_data_collator=collator(tokenizer, probability, seed, "held_out_masks", positions=bert, whole_words=words,
                                       position_ids=bert),
        pad_token_id=tokenizer.pad_token_id,
        budget=budget,
        head_warmup=recipe.model.fresh_head_warmup if fresh else 0.0,
        head_learning_rate=recipe.model.fresh_head_learning_rate if fresh else None,
        seq_length=recipe.data.max_seq_length,
        callbacks=[header, stop, budget] if budget else [header, stop],  # before the progress bar
    )
    if probe is not None:
        probe.attach(trainer)
    metrics = trainer.train_and_measure(resume_from, stop)
    if probe is not None:
        metrics.update(probe.metrics(metrics["train_runtime"]))
    # Trainer's train_samples_per_second keeps Trainer's meaning: the training set's rows (packed
    # sequences) a second. The corpus lines a second, what a line-by-line run calls examples, have their own key.
    metrics["train_lines_per_second"] = metrics.pop("train_examples_per_second")
    metrics["train_step_lines_per_second"] = metrics.pop("train_step_examples_per_second")
    if budget is not None:  # train_runtime is this part's; this is every part's, a resumed run's too
        metrics["train_budget_seconds_spent"] = budget.final if budget.final is not None else budget.elapsed()
    metrics.update(flop_utilization(model.config, recipe.data.max_seq_length, metrics))
    metrics.update(trainer.evaluate())
    metrics["perplexity"] = perplexity(metrics["eval_loss"])
    metrics.update({f"prepare_{phase}_seconds": value for phase, value in data.seconds.items()})
    if trainer.first_step_seconds is not None:
        metrics["first_step_seconds"] = trainer.first_step_seconds
    metrics["train_samples"] = trainer.examples_trained() if streaming else len(raw["train"])
    metrics["eval_samples"] = len(raw["validation"])
    metrics["model_parameters"] = model.num_parameters()
    weights = trainer.full_state_dict()  # every process: FSDP gathers the shards
    if trainer.is_world_process_zero():
        save(model, weights, tokenizer, run_dir, clean_metrics(metrics), recipe)
        trainer.save_state()  # trainer_state.json: the log history `bigmodel report` plots
        write_json(run_dir / METRICS_FILE, clean_metrics(metrics))  # last: the mark of a finished run
    return metrics


def flop_utilization(config, seq_length: int, metrics: dict) -> dict:
    """The stock model's FLOP/s over the training steps and, on a GPU of known peak, its MFU
    (`bigmodel_cli/mfu.py` states the formula)."""
    from bigmodel_cli.mfu import this_gpu, utilization

    return utilization(config, seq_length, metrics["train_real_tokens"], metrics["train_masked_tokens"],
                       metrics["train_step_seconds"], this_gpu())


def save(model, weights: dict, tokenizer, run_dir: Path, metrics: dict, recipe: PretrainRecipe) -> None:
    """The model (its `weights`: the whole state dict, gathered) as a plain `BertForMaskedLM`
    (safetensors), tokenizer, metrics, model card."""
    from transformers import BertForMaskedLM, BertForPreTraining

    from bigmodel_cli.mlm.pairs import SparseHeadBertForPreTraining
    from bigmodel_cli.mlm.sparse_head import SparseHeadBertForMaskedLM

    if isinstance(model, SparseHeadBertForPreTraining):  # saved as the stock class: loads anywhere
        model = BertForPreTraining(model.config)
    elif isinstance(model, SparseHeadBertForMaskedLM):
        plain = BertForMaskedLM(model.config)
        plain.bert.pooler = model.bert.pooler  # a continued checkpoint's (`keep_pooler`), else None
        model = plain
    if "cls.predictions.decoder.bias" in weights and "cls.predictions.bias" not in weights:  # untied under FSDP
        weights["cls.predictions.bias"] = weights["cls.predictions.decoder.bias"]
    model.save_pretrained(str(run_dir), state_dict=weights)
    tokenizer.model_max_length = recipe.data.max_seq_length
    tokenizer.save_pretrained(str(run_dir))
    write_model_card(
        run_dir,
        title=(f"{recipe.model.name_or_path}, pretraining continued" if recipe.model.name_or_path else
               f"BERT masked LM ({recipe.model.num_hidden_layers} layers, {recipe.model.hidden_size} hidden)"),
        summary=(
            ("A masked-language model continued from " + recipe.model.name_or_path if recipe.model.name_or_path else
             "A BERT masked-language model pretrained from scratch") + " with bigmodel on "
            f"{', '.join(recipe.data.train_files) or recipe.data.dataset_name}. Held-out perplexity "
            f"{shown(metrics['perplexity'], 2)}."
        ),
        metrics=metrics,
        command=command_line(),
        load_class="AutoModelForMaskedLM",
        tags=["fill-mask"],
        datasets=[recipe.data.dataset_name] if recipe.data.dataset_name else [],
    )
