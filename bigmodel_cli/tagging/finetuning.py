"""Fine-tuning one tagger: the job `bigmodel finetune --task ner` runs. Files, tokenizer, model,
train with an evaluation per epoch (entity F1 picks the best), score, save."""

from __future__ import annotations

from pathlib import Path

from bigmodel_cli.console import shown
from bigmodel_cli.recipe import FinetuneRecipe
from bigmodel_cli.rundir import METRICS_FILE, clean_metrics, command_line, write_json, write_model_card


def run(recipe: FinetuneRecipe, run_dir: Path, resume_from: Path | None = None, quiet: bool = False) -> dict:
    from transformers import DataCollatorForTokenClassification, set_seed

    from bigmodel_cli.classification.finetuning import best_epoch_arguments
    from bigmodel_cli.classification.model import check_lengths, freeze_for
    from bigmodel_cli.kernels import speedups
    from bigmodel_cli.seeds import derive_seed
    from bigmodel_cli.tagging.data import encode, load_splits, read_tagged, reading_note, training_dataset
    from bigmodel_cli.tagging.inference import evaluate_tagger
    from bigmodel_cli.tagging.model import load_tagger, word_tokenizer
    from bigmodel_cli.tagging.trainer import TaggerTrainer
    from bigmodel_cli.trainer.arguments import check_precision, training_arguments
    from bigmodel_cli.trainer.callbacks import GracefulStop, RunHeader

    check_precision(recipe.training)
    set_seed(derive_seed(recipe.training.seed, "init"))  # before the model: the new head's init is seeded too
    data = recipe.data
    task, splits = load_splits(data)
    tokenizer = word_tokenizer(recipe.model.name_or_path, recipe.model.trust_remote_code)
    model = load_tagger(recipe.model.name_or_path, task, recipe.model.trust_remote_code)
    check_lengths(recipe, model, tokenizer)
    notes = [reading_note(splits["train"]), reading_note(splits["validation"]),
             f"{len(task.types)} entity types ({', '.join(task.types)}); labels on "
             + ("every sub-word" if data.label_all_tokens else "each word's first sub-word"),
             speedups(model), freeze_for(model, recipe.model.train_layers, recipe.model.freeze_embeddings)]
    best = best_epoch_arguments(recipe, task.best_metric)
    args = training_arguments(recipe.training, run_dir, quiet, **best, train_sampling_strategy="group_by_length")
    with args.main_process_first(local=False, desc="tokenizing"):
        columns = encode(splits["train"].sentences, tokenizer, data.max_seq_length, data.stride, task.label2id,
                         data.label_all_tokens)
    train = training_dataset(columns)
    windows = len(train) - len(splits["train"].sentences)
    if windows:
        notes.append(f"{windows} more windows for sentences over {data.max_seq_length} tokens (stride {data.stride})")
    validation = splits["validation"].sentences
    stop = GracefulStop()
    trainer = TaggerTrainer(
        task=task, eval_sentences=validation, max_length=data.max_seq_length, stride=data.stride,
        model=model,
        args=args,
        train_dataset=train,
        # Trainer asks for one; the evaluations read `eval_sentences` (windows merged back into words)
        eval_dataset=training_dataset(encode(validation, tokenizer, data.max_seq_length, data.stride, task.label2id)),
        data_collator=DataCollatorForTokenClassification(tokenizer),
        processing_class=tokenizer,
        pad_token_id=tokenizer.pad_token_id,
        callbacks=[stop, RunHeader("finetune ner", f"train {len(splits['train'].sentences)}, eval {len(validation)} "
                                   "sentences", quiet, notes=notes)],
    )
    metrics = trainer.train_and_measure(resume_from, stop)
    scores = evaluate_tagger(trainer.model, tokenizer, validation, task, data.max_seq_length, data.stride,
                             recipe.training.per_device_eval_batch_size, progress=not quiet, bf16=recipe.training.bf16)
    metrics.update(scores)
    metrics["train_samples"], metrics["eval_samples"] = len(splits["train"].sentences), len(validation)
    metrics["best_checkpoint"] = Path(trainer.state.best_model_checkpoint or "").name or None
    trainer.save_model(str(run_dir))
    if trainer.is_world_process_zero():
        trainer.save_state()
        card(run_dir, recipe, task, metrics)
        if data.test_file:
            predictions = run_dir / "test_predictions.jsonl"
            predictions.unlink(missing_ok=True)
            from bigmodel_cli.tagging.inference import write_entities

            test = read_tagged(data.test_file, "data.test_file", data.tag_column)
            write_entities(trainer.model, tokenizer, test.sentences, task, str(predictions), data.max_seq_length,
                           data.stride, recipe.training.per_device_eval_batch_size, recipe.training.bf16)
        write_json(run_dir / METRICS_FILE, clean_metrics(metrics))  # last: the mark of a finished run
    return metrics


def main_metric(run_dir: Path) -> str:
    """The key of a tagger's main metric: entity F1 (what picks the best epoch)."""
    from bigmodel_cli.tagging.tasks import TagTask

    return f"eval_{TagTask.best_metric}"


def card(run_dir: Path, recipe: FinetuneRecipe, task, metrics: dict) -> None:
    write_model_card(
        run_dir,
        title=f"{Path(recipe.model.name_or_path).name} fine-tuned for named entities",
        summary=(f"{recipe.model.name_or_path} fine-tuned with bigmodel to tag {', '.join(task.types)} "
                 f"(IOB2) on {recipe.data.train_file}. Dev entity F1 (seqeval, strict): {shown(metrics.get('eval_f1'))}."),
        metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
        command=command_line(),
        load_class="AutoModelForTokenClassification",
        tags=["token-classification", "ner"],
        datasets=[],
    )
