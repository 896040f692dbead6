"""Fine-tuning one classifier: the job that `bigmodel finetune` runs once (or once per seed) and
`bigmodel glue` runs once per task. Data, tokenizer, model, train with an evaluation per epoch, keep
the best epoch, score, save."""

from __future__ import annotations

import statistics
from pathlib import Path

from bigmodel_cli.console import say, shown
from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.processes import is_main
from bigmodel_cli.recipe import FinetuneRecipe
from bigmodel_cli.rundir import METRICS_FILE, clean_metrics, command_line, open_run, write_json, write_model_card


def run(recipe: FinetuneRecipe, run_dir: Path, resume_from: Path | None = None, quiet: bool = False) -> dict:
    """Data, tokenizer, model, train with an evaluation per epoch, keep the best, score, save."""
    from transformers import set_seed

    from bigmodel_cli.classification.data import columns_note, encode, load_splits
    from bigmodel_cli.classification.inference import evaluate_classifier, trainer_metrics, write_predictions
    from bigmodel_cli.classification.model import check_lengths, freeze_for, load_classifier
    from bigmodel_cli.classification.trainer import ClassifierTrainer
    from bigmodel_cli.files import check_text_file
    from bigmodel_cli.kernels import speedups
    from bigmodel_cli.models import load_tokenizer
    from bigmodel_cli.seeds import derive_seed
    from bigmodel_cli.trainer.arguments import check_precision, training_arguments
    from bigmodel_cli.trainer.callbacks import GracefulStop, RunHeader

    check_precision(recipe.training)  # before the data and the model load
    set_seed(derive_seed(recipe.training.seed, "init"))  # before the model: the new head's init is seeded too
    task, raw = load_splits(recipe.data)
    tokenizer = load_tokenizer(recipe.model.name_or_path, recipe.model.trust_remote_code)
    model = load_classifier(recipe, task)
    # On CPU, dropout's random numbers were 15 % of each step; the last layer for [CLS] only: 16 % less work.
    notes = [speedups(model, first_token=True), freeze_for(model, recipe.model.train_layers, recipe.model.freeze_embeddings)]
    if recipe.data.train_file:  # your own files: the columns found in them
        notes.insert(0, columns_note(recipe.data, task))
    check_lengths(recipe, model, tokenizer)
    tokenizer.model_max_length = recipe.data.max_seq_length  # eval and predict truncate the same way
    best = best_epoch_arguments(recipe, task.best_metric)
    if best["load_best_model_at_end"]:
        notes.append(f"keeps the best {best['save_strategy'].removesuffix('s')}'s model by {best['metric_for_best_model']} "
                     + (f"(evaluated and saved every {best['eval_steps']:g} steps)" if "eval_steps" in best
                        else "(a checkpoint at each evaluation)"))
    args = training_arguments(recipe.training, run_dir, quiet, **best, train_sampling_strategy="group_by_length")
    with args.main_process_first(local=False, desc="tokenizing"):
        train, validation = encode(raw["train"], tokenizer), encode(raw["validation"], tokenizer)
    stop = GracefulStop()
    # The classifier's loss is a plain mean that ignores `num_items_in_batch`; Trainer would still
    # multiply it by the number of processes (seen here: twice the loss, and twice the gradient, on 2).
    # Said through the model's public attribute, which Trainer reads when it is made.
    model.accepts_loss_kwargs = False
    trainer = ClassifierTrainer(
        task=task,
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=validation,
        data_collator=training_collator(recipe, tokenizer),
        processing_class=tokenizer,
        compute_metrics=trainer_metrics(task),
        pad_token_id=tokenizer.pad_token_id,
        callbacks=[stop, RunHeader(f"finetune {task.name}", f"train {len(train)}, eval {len(validation)} examples", quiet,
                                   notes=notes)],
    )
    notes.append(trainer.evaluation_note())
    metrics = trainer.train_and_measure(resume_from, stop)
    metrics.update(evaluate_classifier(trainer.model, tokenizer, validation, task, recipe.training.per_device_eval_batch_size,
                                       progress=not quiet, spread=trainer.fast_evaluation))
    metrics["train_samples"], metrics["eval_samples"] = len(raw["train"]), len(raw["validation"])
    metrics["best_checkpoint"] = Path(trainer.state.best_model_checkpoint or "").name or None
    trainer.save_model(str(run_dir))  # every process: FSDP gathers the shards, the main one writes
    if trainer.is_world_process_zero():
        trainer.save_state()  # trainer_state.json: the log history `bigmodel report` plots
        card(run_dir, recipe, task, metrics)
        if recipe.data.test_file:  # with the model in hand: no reload from the run directory
            predictions = run_dir / "test_predictions.jsonl"
            predictions.unlink(missing_ok=True)  # a run killed after writing it, before its metrics
            write_predictions(trainer.model, tokenizer, check_text_file(recipe.data.test_file, "data.test_file"),
                              str(predictions), recipe.training.per_device_eval_batch_size, progress=not quiet)
        write_json(run_dir / METRICS_FILE, clean_metrics(metrics))  # last: the mark of a finished run
    return metrics


def training_collator(recipe: FinetuneRecipe, tokenizer):
    """Batches padded to their longest example, or on a GPU (or when the recipe asks) to a few
    bucket lengths that repeat."""
    from transformers import DataCollatorWithPadding

    from bigmodel_cli.classification.batching import BucketPadding
    from bigmodel_cli.trainer.arguments import on_gpu

    if on_gpu(recipe.data.pad_to_buckets):
        return BucketPadding(tokenizer, recipe.data.max_seq_length)
    return DataCollatorWithPadding(tokenizer)


def run_seeds(recipe: FinetuneRecipe, run_dir: Path, count: int, overwrite: bool, quiet: bool, job=None) -> dict:
    """One run per seed in run_dir/seed-N (by `job`: a module with `run` and `main_metric`, this one or
    the tagger's), then the mean and standard deviation of every metric in run_dir/seeds_summary.json
    (MRPC results move by points between seeds)."""
    import sys

    job = job or sys.modules[__name__]
    first = recipe.training.seed  # the user's seeds: first, first + 1, ... (each derives its own streams)
    per_seed = {}
    for seed in range(first, first + count):
        one = recipe.model_copy(deep=True)
        one.training.seed = seed
        seed_dir = run_dir / f"seed-{seed}"
        per_seed[seed] = job.run(one, seed_dir, open_run(seed_dir, one, overwrite), quiet)
    keys = [k for k, v in per_seed[first].items() if k.startswith("eval_") and isinstance(v, float)]
    result = {"seeds": list(per_seed), "runs": [str(run_dir / f"seed-{s}") for s in per_seed]}
    for key in keys:
        values = [m[key] for m in per_seed.values()]
        result[key] = {"mean": statistics.fmean(values), "std": statistics.stdev(values), "values": values}
    metric = job.main_metric(run_dir / f"seed-{first}")
    seed = median_seed(metric, per_seed)
    result["model"] = {"seed": seed, "run": str(run_dir / f"seed-{seed}"), "chosen_by": f"median {metric}"}
    if is_main():
        copy_run(run_dir / f"seed-{seed}", run_dir)
    write_json(run_dir / "seeds_summary.json", result)
    if not quiet:
        for key in keys:
            say(f"{key:28s} {result[key]['mean']:.4f} +- {result[key]['std']:.4f}  over seeds {result['seeds']}")
        say(f"per-seed runs and seeds_summary.json in {run_dir}; the model in it is seed {seed}'s (median {metric})")
    return result


def main_metric(run_dir: Path) -> str:
    """The key of the task's main metric (the one that picks the best epoch) of a saved classifier."""
    from transformers import AutoConfig

    from bigmodel_cli.classification.tasks import task_from_model

    return f"eval_{task_from_model(AutoConfig.from_pretrained(run_dir), None).best_metric}"


def median_seed(metric: str, per_seed: dict[int, dict]) -> int:
    """The seed whose dev figure of `metric` is the median (the lower middle one of an even count).
    Its model, not the best seed's, is the one a user can expect again from one run."""
    ranked = sorted(per_seed, key=lambda seed: (per_seed[seed][metric], seed))
    return ranked[(len(ranked) - 1) // 2]


def copy_run(source: Path, run_dir: Path) -> None:
    """The files of the run `source` (model, tokenizer, recipe, card, trainer state, predictions)
    into `run_dir`, for eval, predict, report and --from-mnli to use; its metrics.json last."""
    import shutil

    files = sorted((p for p in source.iterdir() if p.is_file()), key=lambda p: p.name == METRICS_FILE)
    for path in files:
        tmp = run_dir / f".{path.name}.tmp"
        shutil.copy2(path, tmp)
        tmp.replace(run_dir / path.name)


def best_epoch_arguments(recipe: FinetuneRecipe, best_metric: str) -> dict:
    """Keep the best evaluation's model (by the task's main metric) rather than the last, unless the
    recipe says otherwise. Keeping it needs a checkpoint at every evaluation: a save schedule the
    user set that differs is a one-line error naming both keys, never silently replaced."""
    training = recipe.training
    keep = training.load_best_model_at_end
    if keep is None:
        keep = training.eval_strategy != "no"
    if not keep:
        return {"load_best_model_at_end": False}
    if training.eval_strategy == "no":
        raise BigmodelError("training.load_best_model_at_end is true but training.eval_strategy is no: there is no "
                            "evaluation to pick the best from; set eval_strategy to epoch or steps")
    chosen = training.model_fields_set
    every = training.eval_steps or training.save_steps
    if "save_strategy" in chosen and training.save_strategy != training.eval_strategy:
        raise BigmodelError(
            f"training.save_strategy {training.save_strategy} differs from training.eval_strategy {training.eval_strategy}: "
            "keeping the best epoch needs a checkpoint at every evaluation; set them equal, or "
            "training.load_best_model_at_end=false to keep the last model")
    if training.eval_strategy == "steps" and "save_steps" in chosen and training.save_steps != every:
        raise BigmodelError(
            f"training.save_steps {training.save_steps:g} differs from training.eval_steps {every:g}: keeping the best "
            "model needs a checkpoint at every evaluation; set them equal, or training.load_best_model_at_end=false")
    return {
        "load_best_model_at_end": True,
        "metric_for_best_model": f"eval_{best_metric}",
        "greater_is_better": True,
        "save_strategy": training.eval_strategy,
        "save_steps": every,
        # given no eval_steps, Trainer would evaluate every logging_steps: the best then chosen among saved steps only
        **({"eval_steps": every} if training.eval_strategy == "steps" else {}),
    }


def card(run_dir: Path, recipe: FinetuneRecipe, task, metrics: dict) -> None:
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
        command=command_line(),
        load_class="AutoModelForSequenceClassification",
        tags=["text-classification", task.name],
        datasets=["nyu-mll/glue"] if recipe.data.task and not recipe.data.data_dir else [],
    )
