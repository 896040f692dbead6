"""The `bigmodel` command line. It registers commands and nothing more: torch, transformers and
datasets are imported inside the commands, so `--help` and recipe errors answer at once."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer

from bigmodel_cli.errors import BigmodelError, write_failure
from bigmodel_cli.rundir import shown

app = typer.Typer(
    name="bigmodel",
    help="Pretrain, fine-tune and evaluate BERT models, one command each. Works offline.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
recipes_app = typer.Typer(help="List, show and copy the shipped recipes.", no_args_is_help=True)
app.add_typer(recipes_app, name="recipes")

RecipeOpt = typer.Option(None, "--recipe", "-r", help="A shipped recipe name (see `bigmodel recipes list`) or a YAML file.")
OutputOpt = typer.Option(None, "--output-dir", "-o", help="Run directory. Default: runs/<recipe name>.")
SetOpt = typer.Option(None, "--set", "-s", help="Override a recipe key, e.g. training.learning_rate=3e-5 (repeatable).")
OverwriteOpt = typer.Option(False, "--overwrite", help="Replace a finished or different run in --output-dir.")
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress bars or summary; errors still show.")


def _setup(quiet: bool) -> None:
    from bigmodel_cli.memory import keep_freed_memory

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    keep_freed_memory()  # no page faults on every step (about 10 % of a CPU training step)
    if quiet:
        os.environ["TRANSFORMERS_VERBOSITY"] = "error"
        os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
        os.environ["TQDM_DISABLE"] = "1"


def _run_dir(output_dir: Path | None, default_name: str) -> Path:
    return output_dir or Path("runs") / default_name


def _prepare(run_dir: Path, recipe, overwrite: bool) -> Path | None:
    from bigmodel_cli.rundir import checkpoints, prepare_run_dir

    if int(os.environ.get("RANK", "0")) != 0:  # the main process prepares; the others follow it
        found = checkpoints(run_dir) if run_dir.is_dir() and not overwrite else []
        return found[-1] if found else None
    resume = prepare_run_dir(run_dir, recipe.model_dump(mode="json"), overwrite)
    if resume is not None:
        _say(f"resuming from {resume}")
    return resume


def _say(text: str) -> None:
    if int(os.environ.get("RANK", "0")) == 0:
        print(text, file=sys.stderr)


def _summary(title: str, metrics: dict, run_dir: Path | None, quiet: bool, keys: list[str]) -> None:
    if quiet or int(os.environ.get("RANK", "0")) != 0:
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in keys:
        if key in metrics:
            value = metrics[key]
            table.add_row(key, shown(value))
    console = Console(stderr=True)
    console.print(table)
    if run_dir is not None:
        console.print(f"model, tokenizer, metrics.json, resolved_recipe.yaml and README.md in [bold]{run_dir}[/bold]")


@app.command()
def pretrain(
    recipe: str = typer.Option("pretrain/bert-tiny", "--recipe", "-r", help="A shipped recipe name or a YAML file."),
    output_dir: Path | None = OutputOpt,
    set_: list[str] | None = SetOpt,
    overwrite: bool = OverwriteOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Pretrain a BERT masked-language model from scratch on plain text, one example per line.

    Trains a WordPiece tokenizer on the corpus unless the recipe names one, and reports held-out
    perplexity. Running the same command again resumes an interrupted run.
    """
    from bigmodel_cli.recipe import load_recipe, recipe_name

    _setup(quiet)
    loaded, _ = load_recipe("pretrain", recipe, overrides=set_)
    run_dir = _run_dir(output_dir, recipe_name(recipe))
    resume = _prepare(run_dir, loaded, overwrite)
    from bigmodel_cli import pretrain as job

    metrics = job.run(loaded, run_dir, resume, quiet)
    _summary("pretrain", metrics, run_dir, quiet, ["train_samples", "train_runtime", "train_tokens_per_second",
                                                  "train_loss", "eval_loss", "perplexity", "model_parameters"])


@app.command()
def finetune(
    task: str | None = typer.Option(None, "--task", "-t", help="GLUE task: cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli."),
    model: str | None = typer.Option(None, "--model", "-m", help="Model folder (e.g. a pretrain run) or hub id."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Folder with GLUE's own files for the task; default: the hub."),
    train_file: Path | None = typer.Option(None, "--train-file", help="Your own training data: CSV, TSV, JSON or JSON Lines."),
    validation_file: Path | None = typer.Option(None, "--validation-file", help="Your own validation data."),
    test_file: Path | None = typer.Option(None, "--test-file", help="Examples to predict after training (labels optional)."),
    recipe: str | None = RecipeOpt,
    output_dir: Path | None = OutputOpt,
    set_: list[str] | None = SetOpt,
    seeds: int = typer.Option(1, "--seeds", help="Run once per seed (seed, seed+1, ...) and report mean and std.", min=1),
    overwrite: bool = OverwriteOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Fine-tune a sequence classifier on a GLUE task or your own labelled files.

    Evaluates on the dev split after every epoch and keeps the best epoch. Default recipe:
    finetune/<task> (or finetune/custom for your own files).
    """
    from bigmodel_cli.recipe import list_recipes, load_recipe, recipe_name

    _setup(quiet)
    if recipe is None:
        shipped = f"finetune/{task.lower()}" if task else "finetune/custom"
        recipe = shipped if shipped in list_recipes() else "finetune/custom"
    flags = {
        "data.task": task.lower() if task else None,
        "model.name_or_path": model,
        "data.data_dir": str(data_dir) if data_dir else None,
        "data.train_file": str(train_file) if train_file else None,
        "data.validation_file": str(validation_file) if validation_file else None,
        "data.test_file": str(test_file) if test_file else None,
    }
    loaded, _ = load_recipe("finetune", recipe, flags=flags, overrides=set_)
    if train_file:  # your own files: a recipe's GLUE task does not apply
        loaded.data.task = None
    default_name = loaded.data.task or (Path(loaded.data.train_file).stem if loaded.data.train_file else recipe_name(recipe))
    run_dir = _run_dir(output_dir, default_name)
    from bigmodel_cli import finetune as job

    if seeds > 1:
        _finetune_seeds(job, loaded, run_dir, seeds, overwrite, quiet)
        return
    resume = _prepare(run_dir, loaded, overwrite)
    metrics = job.run(loaded, run_dir, resume, quiet)
    keys = ["train_samples", "eval_samples", "train_runtime", "train_samples_per_second", "best_checkpoint"]
    keys += [k for k in metrics if k.startswith("eval_") and isinstance(metrics[k], float)]
    _summary(f"finetune {loaded.data.task or 'custom'}", metrics, run_dir, quiet, keys)


def _finetune_seeds(job, recipe, run_dir: Path, seeds: int, overwrite: bool, quiet: bool) -> None:
    """One run per seed in run_dir/seed-N, then the mean and standard deviation of every metric
    in run_dir/seeds_summary.json (MRPC results move by points between seeds)."""
    import statistics

    from bigmodel_cli.rundir import write_json

    first = recipe.training.seed
    per_seed = {}
    for seed in range(first, first + seeds):
        one = recipe.model_copy(deep=True)
        one.training.seed = seed
        seed_dir = run_dir / f"seed-{seed}"
        per_seed[seed] = job.run(one, seed_dir, _prepare(seed_dir, one, overwrite), quiet)
    keys = [k for k, v in per_seed[first].items() if k.startswith("eval_") and isinstance(v, float)]
    summary = {"seeds": list(per_seed), "runs": [str(run_dir / f"seed-{s}") for s in per_seed]}
    for key in keys:
        values = [m[key] for m in per_seed.values()]
        summary[key] = {"mean": statistics.fmean(values), "std": statistics.stdev(values), "values": values}
    write_json(run_dir / "seeds_summary.json", summary)
    if not quiet:
        for key in keys:
            _say(f"{key:28s} {summary[key]['mean']:.4f} +- {summary[key]['std']:.4f}  over seeds {summary['seeds']}")
        _say(f"per-seed runs and seeds_summary.json in {run_dir}")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def launch(
    ctx: typer.Context,
    num_processes: int | None = typer.Option(None, "--num-processes", "-n", min=1,
                                             help="Processes in all (all machines together). Default: the config's, else 1."),
    config: str | None = typer.Option(None, "--config", "-c", help="An Accelerate config file, or a shipped one: "
                                      "accelerate/single-gpu-bf16, multi-gpu-ddp, fsdp, deepspeed-zero2, two-machines."),
    num_machines: int | None = typer.Option(None, "--num-machines", min=1, help="Machines taking part. Default: the config's, else 1."),
    machine_rank: int | None = typer.Option(None, "--machine-rank", min=0, help="This machine's rank, 0 to num-machines - 1."),
    main_process_ip: str | None = typer.Option(None, "--main-process-ip", help="Machine 0's address (several machines)."),
    main_process_port: int | None = typer.Option(None, "--main-process-port", help="A free port on machine 0."),
) -> None:
    """Run `pretrain` or `finetune` under Accelerate's launcher, in several processes or on several machines.

    `bigmodel launch -n 2 pretrain -r pretrain/bert-tiny` is `accelerate launch --multi_gpu --num_processes 2
    -m bigmodel_cli pretrain -r pretrain/bert-tiny`: a thin wrapper, nothing re-implemented. The recipe's
    training.global_batch_size holds whatever the number of processes.
    """
    command = ctx.args
    if not command or command[0] not in ("pretrain", "finetune"):
        raise BigmodelError("name the command to launch after the options, e.g. bigmodel launch -n 2 pretrain -r pretrain/bert-tiny")
    argv = launch_arguments(command, num_processes, config, num_machines, machine_rank, main_process_ip, main_process_port)
    from accelerate.commands.launch import launch_command, launch_command_parser

    try:
        launch_command(launch_command_parser().parse_args(argv))
    except Exception as e:  # the workers printed their own errors above
        raise BigmodelError(f"the launched processes failed ({type(e).__name__}); see their messages above", exit_code=1) from None


def launch_arguments(command: list[str], num_processes: int | None, config: str | None, num_machines: int | None,
                     machine_rank: int | None, main_process_ip: str | None, main_process_port: int | None) -> list[str]:
    """`accelerate launch` arguments for a bigmodel command."""
    argv: list[str] = []
    if config:
        from bigmodel_cli.recipe import find_recipe, recipes_dir

        try:  # a file, or a name shipped under recipes/ (accelerate/NAME), found as recipes are
            path = find_recipe(config)
        except BigmodelError:
            names = sorted(p.stem for p in (recipes_dir() / "accelerate").glob("*.yaml"))
            raise BigmodelError(
                f"--config {config}: no such file, and no shipped Accelerate config accelerate/{{{','.join(names)}}}"
            ) from None
        argv += ["--config_file", str(path)]
    elif (num_processes or 1) > 1 or (num_machines or 1) > 1:
        # No config: torchrun-style processes; on a machine without GPUs they train on the CPU (gloo).
        argv += ["--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no"]
    else:
        argv += ["--num_processes", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    for flag, value in (("--num_processes", num_processes), ("--num_machines", num_machines),
                        ("--machine_rank", machine_rank), ("--main_process_ip", main_process_ip),
                        ("--main_process_port", main_process_port)):
        if value is not None:
            argv += [flag, str(value)]
    if (num_machines or 1) > 1 and not config:
        argv += ["--rdzv_backend", "static", "--same_network"]
    return [*argv, "-m", "bigmodel_cli", *command]


@app.command("eval")
def evaluate(
    model: str = typer.Option(..., "--model", "-m", help="A saved model folder (a finetune or pretrain run)."),
    task: str | None = typer.Option(None, "--task", "-t", help="GLUE task, or 'mlm' for perplexity. Default: the model's own."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Folder with GLUE's own files; default: the hub."),
    data_file: Path | None = typer.Option(None, "--data-file", help="A labelled file (GLUE TSV, CSV, JSON, JSONL), or text for mlm."),
    split: str = typer.Option("validation", "--split", help="train, validation (dev), test, or MNLI's validation_mismatched."),
    batch_size: int = typer.Option(32, "--batch-size", min=1,
                                   help="Examples per batch, length-sorted (on 2 CPU cores 32 ran 1.6x faster than 256)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object as the last line of stdout."),
) -> None:
    """Evaluate a saved model: accuracy/F1 or the task's official metric, or perplexity (--task mlm)."""
    from bigmodel_cli import evaluation

    _setup(True)
    if task and task.lower() == "mlm":
        metrics = evaluation.evaluate_mlm_on(model, str(data_file) if data_file else None, batch_size)
    else:
        metrics = evaluation.evaluate_classifier_on(model, task, split, str(data_dir) if data_dir else None,
                                                    str(data_file) if data_file else None, batch_size)
    if as_json:
        print(json.dumps(metrics, sort_keys=True))
    else:
        for key, value in sorted(metrics.items()):
            print(f"{key:24s} {shown(value)}")


@app.command()
def predict(
    model: str = typer.Option(..., "--model", "-m", help="A saved classifier folder (a finetune run)."),
    text: str | None = typer.Option(None, "--text", help="One input text."),
    text_pair: str | None = typer.Option(None, "--text-pair", help="The second text, for pair tasks."),
    input_file: Path | None = typer.Option(None, "--input-file", "-i", help="CSV, TSV, JSON or JSON Lines; streamed."),
    output: Path | None = typer.Option(None, "--output", help="JSON Lines file to write (never overwritten). Default: stdout."),
    batch_size: int = typer.Option(32, "--batch-size", min=1,
                                   help="Examples per batch, length-sorted (on 2 CPU cores 32 ran 1.6x faster than 256)."),
    quiet: bool = QuietOpt,
) -> None:
    """Predict labels (names and probabilities) or scores: one JSON line per example."""
    from bigmodel_cli import predict as job

    _setup(True)
    texts = [t for t in (text, text_pair) if t is not None]
    if text_pair is not None and text is None:
        raise BigmodelError("--text-pair needs --text")
    count = job.run(model, texts, str(input_file) if input_file else None, str(output) if output else None,
                    batch_size, progress=not quiet and output is not None)
    if output and not quiet:
        _say(f"wrote {count} predictions to {output}")


@app.command()
def report(
    run_dirs: list[Path] = typer.Argument(..., help="One or more run directories to plot and compare."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Folder for the PNGs and report.md. Default: RUN_DIR/report."),
) -> None:
    """Plot training loss, learning rate and eval metrics (and a confusion matrix) of runs; compare them in report.md."""
    from bigmodel_cli import report as job

    written = job.run(run_dirs, output or run_dirs[0] / "report")
    for path in written:
        print(path)


@recipes_app.command("list")
def recipes_list() -> None:
    """List the shipped recipes."""
    from bigmodel_cli.recipe import find_recipe, list_recipes

    for name in list_recipes():
        first = find_recipe(name).read_text(encoding="utf-8").splitlines()[0].lstrip("# ")
        print(f"{name:32s} {first}")


@recipes_app.command("show")
def recipes_show(name: str = typer.Argument(..., help="Recipe name, e.g. pretrain/bert-tiny.")) -> None:
    """Print a shipped recipe."""
    from bigmodel_cli.recipe import find_recipe

    print(find_recipe(name).read_text(encoding="utf-8"), end="")


@recipes_app.command("copy")
def recipes_copy(
    name: str = typer.Argument(..., help="Recipe name, e.g. finetune/mrpc."),
    dest: Path = typer.Argument(..., help="Where to write the copy (a file or a folder)."),
) -> None:
    """Copy a shipped recipe to edit it; never overwrites an existing file."""
    from bigmodel_cli.recipe import find_recipe

    source = find_recipe(name)
    target = dest / source.name if dest.is_dir() else dest
    if target.exists():
        raise BigmodelError(f"{target} already exists; choose another destination")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
    print(target)


def _usage_errors() -> tuple[type[Exception], ...]:
    """Click's usage errors, and those of the click that typer >= 0.24 carries inside itself."""
    import click

    try:
        from typer._click.exceptions import ClickException
    except ImportError:
        return (click.exceptions.ClickException,)
    return (click.exceptions.ClickException, ClickException)


def _leave_process_group() -> None:
    """Under `bigmodel launch`, leave the gloo/NCCL group before the interpreter shuts down: gloo's
    worker threads still alive at finalization abort the process ("terminate called without an
    active exception", exit -6) after a run that finished and saved."""
    torch = sys.modules.get("torch")  # never imported by --help or a bad flag: nothing to leave
    if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def main() -> None:
    """Entry point: `error: ...` and exit 2 for bad input; `--debug` anywhere shows the traceback."""
    import click

    usage_errors = _usage_errors()
    argv = sys.argv[1:]
    debug = "--debug" in argv or os.environ.get("BIGMODEL_DEBUG") == "1"
    argv = [a for a in argv if a != "--debug"]
    try:
        result = app(args=argv, prog_name="bigmodel", standalone_mode=False)
    except BigmodelError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except usage_errors as e:  # a wrong flag or a missing option: usage and the fix, exit 2
        e.show()
        sys.exit(e.exit_code)
    except (click.exceptions.Abort, typer.Abort, KeyboardInterrupt):
        result = 130
    except (click.exceptions.Exit, typer.Exit) as e:
        sys.exit(e.exit_code)
    except Exception as e:  # a bug or an unforeseen failure: one line, the traceback on request
        if debug:
            raise
        reason = write_failure(e)
        if reason is not None:  # a full disk or a folder we may not write: the user can fix it
            where = f" {e.filename}" if getattr(e, "filename", None) else ""
            print(f"error: cannot write{where}: {reason}; free space or fix permissions, then run the same command "
                  "again (an unfinished run resumes from its last complete checkpoint)", file=sys.stderr)
            sys.exit(2)
        print(f"error: {type(e).__name__}: {e} (run again with --debug for the traceback)", file=sys.stderr)
        sys.exit(1)
    _leave_process_group()
    if result == 130:  # Ctrl-C twice (once finishes the step and saves); typer returns 130 for it, silently
        print("interrupted: a training run resumes from its last complete checkpoint when the same command "
              "runs again", file=sys.stderr)
    sys.exit(result if isinstance(result, int) else 0)


if __name__ == "__main__":
    main()
