"""`bigmodel glue`: fine-tune and evaluate one model on every GLUE task present, and its GLUE score.

Each task runs the shipped `finetune/<task>` recipe (with `--set` overrides for all of them) in
`OUTPUT/<task>/`, through the same job as `bigmodel finetune`, so a rerun skips the finished tasks
and resumes the unfinished one. The task score is the mean of the task's official metrics as the
GLUE benchmark defines it (MRPC and QQP: F1 and accuracy; STS-B: Pearson and Spearman; MNLI: the
matched and mismatched accuracies), x 100; the GLUE score is the mean over the tasks run.

Under `bigmodel launch`, every process runs the same tasks in the same order, each task's
fine-tuning spread over them as `bigmodel finetune`'s is; the processes meet after each task (a
task that starts from the MNLI model finds it whole) and the main one writes the summary.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from bigmodel_cli.classification.tasks import TASKS, Task, get_task
from bigmodel_cli.console import say, setup
from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.processes import is_main, join_launch, wait_for_everyone
from bigmodel_cli.rundir import METRICS_FILE, write_json

FROM_MNLI = ("rte", "mrpc", "stsb")  # as BERT's paper started them: from the MNLI model


def command(model: str, data_dir: Path, tasks: list[str] | None, seeds: int, output_dir: Path | None,
            overrides: list[str] | None, from_mnli: bool, quiet: bool, overwrite: bool = False) -> None:
    setup(quiet)
    join_launch()
    found = present_tasks(data_dir, tasks)
    if from_mnli:
        if "mnli" not in found:
            raise BigmodelError("--from-mnli needs MNLI among the tasks: its model starts RTE, MRPC and STS-B")
        found = {"mnli": found.pop("mnli"), **found}
    out = output_dir or Path("runs") / f"glue-{Path(model).name}"
    scores: dict[str, dict] = {}
    for name, folder in found.items():
        start = str(out / "mnli") if from_mnli and name in FROM_MNLI else model
        retrained = from_mnli and name in FROM_MNLI and scores["mnli"]["trained"]  # their start is new
        scores[name] = run_task(TASKS[name], folder, start, out / name, seeds, overrides, quiet, overwrite, retrained)
        say(f"{name:6s} {scores[name]['score']:.2f}  {scores[name]['metrics']}")
    summary = {"model": model, "data_dir": str(data_dir), "seeds": seeds, "from_mnli": from_mnli, "tasks": scores,
               "order": list(scores),  # the order they ran in (the JSON file sorts its keys)
               "glue_score": statistics.fmean(s["score"] for s in scores.values()),
               "missing_tasks": [t for t in TASKS if t not in scores]}
    if not is_main():
        return
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "glue_summary.json", summary)
    (out / "glue_summary.md").write_text(markdown(summary), encoding="utf-8")
    if not quiet:
        print(markdown(summary), end="")
    say(f"glue_summary.json and glue_summary.md in {out}")


def present_tasks(data_dir: Path, wanted: list[str] | None) -> dict[str, Path]:
    """The task folders of a GLUE download, checked before any training: each with its dev file."""
    if not data_dir.is_dir():
        raise BigmodelError(f"--data-dir {data_dir} is not a folder; point it at GLUE's download (CoLA/, SST-2/, ...)")
    names = [get_task(t).name for t in wanted] if wanted else list(TASKS)
    found = {}
    for name in names:
        task = TASKS[name]
        folder = next((data_dir / f for f in (task.folder, task.folder.lower(), task.name) if (data_dir / f).is_dir()), None)
        if folder is None:
            if wanted:
                raise BigmodelError(f"--tasks {name}: {data_dir} has no {task.folder}/ folder")
            continue
        dev = folder / task.files[task.eval_split]
        if not dev.is_file():
            raise BigmodelError(f"{folder} has no {dev.name}: each task folder needs its train.tsv and dev file, "
                                "as GLUE's download lays them out")
        found[name] = folder
    if not found:
        folders = ", ".join(f"{t.folder}/" for t in TASKS.values())
        raise BigmodelError(f"--data-dir {data_dir} holds no GLUE task folder ({folders}, or lower-case names)")
    return found


def run_task(task: Task, folder: Path, model: str, run_dir: Path, seeds: int, overrides: list[str] | None,
             quiet: bool, overwrite: bool = False, start_retrained: bool = False) -> dict:
    """One task's fine-tuning (skipped when finished with the same recipe and seeds), its metrics and
    its GLUE score."""
    import json

    from bigmodel_cli.classification.finetuning import run, run_seeds
    from bigmodel_cli.recipe import load_recipe
    from bigmodel_cli.rundir import open_run

    recipe, _ = load_recipe("finetune", f"finetune/{task.name}", overrides=overrides,
                            flags={"data.task": task.name, "data.data_dir": str(folder), "model.name_or_path": model})
    done = run_dir / ("seeds_summary.json" if seeds > 1 else METRICS_FILE)
    difference = "the MNLI model it starts from was trained again" if start_retrained else None
    finished = (run_dir / METRICS_FILE).is_file() or (run_dir / "seeds_summary.json").is_file()
    if finished and (difference := difference or made_otherwise(run_dir, recipe, seeds)):
        if not overwrite:
            raise BigmodelError(f"{run_dir} holds {task.name} results of another run ({difference}); pass --overwrite "
                                "to rerun the tasks that differ, or choose another --output-dir", agreed=True)
        import shutil

        say(f"{task.name}: {run_dir} was made otherwise ({difference}): rerun")
        wait_for_everyone()  # every process has read the folder before the main one empties it
        if is_main():
            shutil.rmtree(run_dir)
        wait_for_everyone()
    trained = not done.is_file()
    if not trained:
        say(f"{task.name}: finished in {run_dir}, skipped")
        metrics = json.loads(done.read_text())
    elif seeds > 1:
        metrics = run_seeds(recipe, run_dir, seeds, overwrite=False, quiet=quiet)
    else:
        metrics = run(recipe, run_dir, open_run(run_dir, recipe, overwrite=False), quiet)
    wait_for_everyone()  # the main process has saved the model before any process reads it
    means = {k: (v["mean"] if isinstance(v, dict) and "mean" in v else v) for k, v in metrics.items()}
    parts = {m: means[f"eval_{m}"] for m in task.score}
    if task.name == "mnli":  # matched (the dev split it trained against) and mismatched
        parts = {"accuracy_matched": parts["accuracy"],
                 "accuracy_mismatched": mismatched_accuracy(task, folder, run_dir, seeds)}
    return {"score": 100 * statistics.fmean(parts.values()), "metrics": parts, "run_dir": str(run_dir), "trained": trained}


def made_otherwise(run_dir: Path, recipe, seeds: int) -> str | None:
    """How the finished task in `run_dir` was made otherwise than `recipe` with `seeds` would make it
    (its recipe as saved, its seed count), or None where it is the same run."""
    import json

    from bigmodel_cli.recipe import read_saved_recipe
    from bigmodel_cli.rundir import recipe_changes

    summary = run_dir / "seeds_summary.json"
    there = len(json.loads(summary.read_text())["seeds"]) if summary.is_file() else 1
    if there != seeds:
        return f"--seeds {there} there, {seeds} now"
    saved = read_saved_recipe(run_dir / f"seed-{recipe.training.seed}" if seeds > 1 else run_dir, "finetune")
    if saved is None:
        return "no resolved_recipe.yaml there"
    return recipe_changes(saved, recipe) if saved != recipe else None


def mismatched_accuracy(task: Task, folder: Path, run_dir: Path, seeds: int) -> float:
    """MNLI's mismatched dev accuracy of the task's model (the mean over seeds)."""
    from bigmodel_cli.classification.data import encode, load_glue
    from bigmodel_cli.classification.inference import evaluate_classifier
    from bigmodel_cli.classification.model import load_saved_classifier

    dirs = sorted(run_dir.glob("seed-*")) if seeds > 1 else [run_dir]
    accuracies = []
    for model_dir in dirs:
        model, tokenizer = load_saved_classifier(str(model_dir))
        data = encode(load_glue(task, "validation_mismatched", str(folder)), tokenizer)
        # under launch each process scores its share (a saved model, whole in every process)
        accuracies.append(evaluate_classifier(model, tokenizer, data, task, spread=True)["eval_accuracy"])
    return statistics.fmean(accuracies)


def markdown(summary: dict) -> str:
    rows = [f"| {name} | {', '.join(f'{k} {100 * v:.2f}' for k, v in s['metrics'].items())} | {s['score']:.2f} |"
            for name, s in ((n, summary["tasks"][n]) for n in summary["order"])]
    seeds = f", the mean of {summary['seeds']} seeds" if summary["seeds"] > 1 else ""
    missing = f" (not run: {', '.join(summary['missing_tasks'])})" if summary["missing_tasks"] else ""
    return "\n".join([
        f"# GLUE: {summary['model']}", "",
        "| task | metrics (x 100) | score |", "| --- | --- | ---: |", *rows,
        f"| **GLUE score** | mean over {len(summary['tasks'])} tasks{missing}{seeds} | **{summary['glue_score']:.2f}** |", "",
    ])
