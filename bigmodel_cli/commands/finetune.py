"""`bigmodel finetune`: sequence classification (or regression) on GLUE or your own files, and
token classification (`--task ner`) on CoNLL or JSON Lines files.

The jobs themselves are `classification.finetuning.run` (shared with `bigmodel glue`) and
`tagging.finetuning.run`."""

from __future__ import annotations

from pathlib import Path

from bigmodel_cli.console import setup, summary
from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.recipe import list_recipes, load_recipe, recipe_name
from bigmodel_cli.rundir import open_run
from bigmodel_cli.tagging.tasks import NAME as NER


def command(task: str | None, flags: dict, recipe: str | None, output_dir: Path | None, overrides: list[str] | None,
            seeds: int, overwrite: bool, quiet: bool) -> None:
    """The command line's `finetune`: `flags` are the recipe keys its options set (None: unset)."""
    setup(quiet)
    tagging = bool(task) and task.lower() == NER
    if task and flags.get("data.train_file") and not tagging:
        raise BigmodelError(f"--task {task} and --train-file: your own files are not a GLUE task (their labels "
                            "decide the metric); remove --task, or --train-file to train on GLUE's data")
    if recipe is None:
        shipped = f"finetune/{task.lower()}" if task else "finetune/custom"
        recipe = shipped if shipped in list_recipes() else "finetune/custom"
    loaded, _ = load_recipe("finetune", recipe, flags={"data.task": task.lower() if task else None, **flags},
                            overrides=overrides)
    if flags.get("data.train_file") and not tagging:  # your own files: a recipe's GLUE task does not apply
        loaded.data.task = None
    data = loaded.data
    default_name = data.task or (Path(data.train_file).stem if data.train_file else recipe_name(recipe))
    run_dir = output_dir or Path("runs") / default_name
    from bigmodel_cli.classification import finetuning

    if data.task == NER:
        from bigmodel_cli.tagging import finetuning as job
        from bigmodel_cli.tagging.data import load_splits

        load_splits(data)  # a bad file is refused before the run folder is made: nothing written
    else:
        job = finetuning
    if seeds > 1:
        finetuning.run_seeds(loaded, run_dir, seeds, overwrite, quiet, job)
        return
    metrics = job.run(loaded, run_dir, open_run(run_dir, loaded, overwrite), quiet)
    keys = ["train_samples", "eval_samples", "train_runtime", "train_samples_per_second", "best_checkpoint"]
    keys += [k for k in metrics if k.startswith("eval_") and isinstance(metrics[k], float)]
    summary(f"finetune {data.task or 'custom'}", metrics, run_dir, quiet, keys)
