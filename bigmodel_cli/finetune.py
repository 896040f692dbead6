"""`bigmodel finetune`: sequence classification (or regression) on GLUE or your own files."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.files import check_text_file
from bigmodel_cli.glue import Task, encode
from bigmodel_cli.kernels import classify_from_first_token, use_fast_dropout
from bigmodel_cli.models import load_tokenizer, model_error, resolve_model_path
from bigmodel_cli.recipe import FinetuneRecipe, dump_recipe
from bigmodel_cli.rundir import RECIPE_FILE, clean_metrics, shown, write_json, write_model_card
from bigmodel_cli.scoring import predict_logits, read_columns, score_logits, task_metrics
from bigmodel_cli.training import CountingTrainer, GracefulStop, RunHeader, training_arguments


def run(recipe: FinetuneRecipe, run_dir: Path, resume_from: Path | None = None, quiet: bool = False) -> dict:
    """Data, tokenizer, model, train with an evaluation per epoch, keep the best, score, save."""
    from transformers import DataCollatorWithPadding, set_seed

    from bigmodel_cli.labelled import load_splits

    set_seed(recipe.training.seed)  # before the model: the new classifier head's init is seeded too
    task, raw = load_splits(recipe.data)
    tokenizer = load_tokenizer(recipe.model.name_or_path, recipe.model.trust_remote_code)
    model = load_classifier(recipe, task)
    use_fast_dropout(model)  # on CPU: dropout's random numbers were 15 % of each step
    classify_from_first_token(model)  # the last layer for [CLS] only: the same logits, 14 % less work
    check_lengths(recipe, model, tokenizer)
    tokenizer.model_max_length = recipe.data.max_seq_length  # eval and predict truncate the same way
    args = training_arguments(recipe.training, run_dir, quiet, **best_epoch_arguments(recipe, task),
                              train_sampling_strategy="group_by_length")
    with args.main_process_first(local=False, desc="tokenizing"):
        train, validation = encode(raw["train"], tokenizer), encode(raw["validation"], tokenizer)
    stop = GracefulStop()
    trainer = CountingTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=validation,
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        compute_metrics=trainer_metrics(task),
        pad_token_id=tokenizer.pad_token_id,
        callbacks=[stop, RunHeader(f"finetune {task.name}", f"train {len(train)}, eval {len(validation)} examples", quiet)],
    )
    # The classifier's loss is a plain mean that ignores `num_items_in_batch`; Trainer would still
    # multiply it by the number of processes (seen here: twice the loss, and twice the gradient, on 2).
    trainer.model_accepts_loss_kwargs = False
    if args.process_index == 0:
        dump_recipe(recipe, run_dir / RECIPE_FILE, f"bigmodel finetune: {shlex.join(sys.argv[1:])}")
    metrics = trainer.train_and_measure(resume_from, stop)
    metrics.update(evaluate_classifier(trainer.model, tokenizer, validation, task,
                                       recipe.training.per_device_eval_batch_size, progress=not quiet))
    metrics["train_samples"], metrics["eval_samples"] = len(raw["train"]), len(raw["validation"])
    metrics["best_checkpoint"] = Path(trainer.state.best_model_checkpoint or "").name or None
    if trainer.is_world_process_zero():
        trainer.save_model(str(run_dir))
        trainer.save_state()  # trainer_state.json: the log history `bigmodel report` plots
        write_json(run_dir / "metrics.json", clean_metrics(metrics))
        card(run_dir, recipe, task, metrics)
        if recipe.data.test_file:  # with the model in hand: no reload from the run directory
            from bigmodel_cli.predict import write_predictions

            write_predictions(trainer.model, tokenizer, check_text_file(recipe.data.test_file, "data.test_file"),
                              str(run_dir / "test_predictions.jsonl"), recipe.training.per_device_eval_batch_size,
                              progress=not quiet)
    return metrics


def load_classifier(recipe: FinetuneRecipe, task: Task):
    from transformers import AutoModelForSequenceClassification

    path = resolve_model_path(recipe.model.name_or_path)
    labels = task.label_names or ("score",)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            path,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={name: i for i, name in enumerate(labels)},
            problem_type="regression" if task.is_regression else "single_label_classification",
            ignore_mismatched_sizes=True,  # a checkpoint with another head gets a fresh one
            use_safetensors=True,  # never unpickle weights: a .bin file can run code
            trust_remote_code=recipe.model.trust_remote_code,
        )
    except Exception as e:
        raise model_error(recipe.model.name_or_path, e) from None
    model.config.finetuning_task = task.name  # eval and predict find the task here
    model.config.text_columns = list(task.text_columns)  # and the columns that hold the inputs
    return model


def check_lengths(recipe: FinetuneRecipe, model, tokenizer) -> None:
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and recipe.data.max_seq_length > limit:
        raise BigmodelError(
            f"data.max_seq_length {recipe.data.max_seq_length} is above the model's "
            f"max_position_embeddings {limit}; set data.max_seq_length to at most {limit}"
        )
    if len(tokenizer) > model.config.vocab_size:
        raise BigmodelError(
            f"the tokenizer of {recipe.model.name_or_path} has {len(tokenizer)} tokens but the model only "
            f"{model.config.vocab_size} embeddings: tokenizer and model do not belong together"
        )


def best_epoch_arguments(recipe: FinetuneRecipe, task: Task) -> dict:
    """Keep the best evaluation's model (by the task's main metric) rather than the last."""
    if recipe.training.eval_strategy == "no":
        return {}
    return {
        "load_best_model_at_end": True,
        "metric_for_best_model": f"eval_{task.best_metric}",
        "greater_is_better": True,
        "save_strategy": recipe.training.eval_strategy,
        "save_steps": recipe.training.eval_steps or recipe.training.save_steps,
    }


def trainer_metrics(task: Task):
    import numpy as np

    def compute(prediction):
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        predictions = logits.reshape(-1) if task.is_regression else np.argmax(logits, axis=-1)
        scores = task_metrics(task.metrics, predictions, prediction.label_ids)
        scores["examples"] = len(prediction.label_ids)  # gathered from every process, each example once
        return scores

    return compute


def evaluate_classifier(model, tokenizer, features, task: Task, batch_size: int = 128,
                        progress: bool = False) -> dict[str, float]:
    """`eval_loss` and the task's metrics; `bigmodel eval` calls this same function."""
    import numpy as np

    logits = predict_logits(model, tokenizer, features, batch_size, progress)
    labels = np.asarray(read_columns(features, ["label"])["label"])
    scores = {f"eval_{k}": v for k, v in score_logits(logits, labels, task.metrics, task.is_regression).items()}
    if not task.is_regression:  # rows: true label, columns: predicted
        n = len(task.label_names)
        matrix = np.zeros((n, n), dtype=int)
        np.add.at(matrix, (labels.astype(int), logits.argmax(axis=-1)), 1)
        scores["eval_confusion_matrix"] = matrix.tolist()
        scores["eval_label_names"] = list(task.label_names)
    return scores


def card(run_dir: Path, recipe: FinetuneRecipe, task: Task, metrics: dict) -> None:
    data = recipe.data.data_dir or recipe.data.train_file or "nyu-mll/glue"
    main = metrics.get(f"eval_{task.best_metric}")
    write_model_card(
        run_dir,
        title=f"{Path(recipe.model.name_or_path).name} fine-tuned on {task.name}",
        summary=(
            f"{recipe.model.name_or_path} fine-tuned with bigmodel for {task.name} "
            f"({'regression' if task.is_regression else ', '.join(task.label_names)}) on {data}. "
            f"Dev {task.best_metric}: {shown(main)}."
        ),
        metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
        command=f"bigmodel {shlex.join(sys.argv[1:])}",
        load_class="AutoModelForSequenceClassification",
        tags=["text-classification", task.name],
        datasets=["nyu-mll/glue"] if recipe.data.task and not recipe.data.data_dir else [],
    )
