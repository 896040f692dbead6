"""The `bigmodel` command line: it registers the commands (each one lives in `commands/`) and is the
one exit path (an error's message and exit code). torch, transformers and datasets are imported
inside the commands, so `--help` and recipe errors answer at once."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from bigmodel_cli.errors import BigmodelError, write_failure
from bigmodel_cli.processes import LAUNCH_GRACE, exit_process, is_main

app = typer.Typer(
    name="bigmodel",
    help="Pretrain, fine-tune and evaluate BERT models, one command each. Works offline.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def options(
    debug: bool = typer.Option(False, "--debug", help="On an error, show the traceback too (it may stand anywhere "
                               "on the command line; BIGMODEL_DEBUG=1 does the same)."),
) -> None:
    """Pretrain, fine-tune and evaluate BERT models, one command each. Works offline."""
    # `main` takes --debug off the command line before Typer reads it: listed here for --help.


recipes_app = typer.Typer(help="List, show and copy the shipped recipes.", no_args_is_help=True)
app.add_typer(recipes_app, name="recipes")

RecipeOpt = typer.Option(None, "--recipe", "-r", help="A shipped recipe name (see `bigmodel recipes list`) or a YAML file.")
OutputOpt = typer.Option(None, "--output-dir", "-o", help="Run directory. Default: runs/<recipe name>.")
SetOpt = typer.Option(None, "--set", "-s", help="Override a recipe key, e.g. training.learning_rate=3e-5 (repeatable).")
OverwriteOpt = typer.Option(False, "--overwrite", help="Replace a finished or different run in --output-dir.")
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress bars or summary; errors still show.")


@app.command()
def pretrain(
    recipe: str | None = typer.Option(None, "--recipe", "-r", help="A shipped recipe name or a YAML file. Default: "
                                      "pretrain/bert-tiny, or pretrain/continue with --model."),
    model: str | None = typer.Option(None, "--model", "-m", help="Continue pretraining this checkpoint (folder or hub "
                                     "id) with its own tokenizer, instead of a new BERT."),
    output_dir: Path | None = OutputOpt,
    set_: list[str] | None = SetOpt,
    overwrite: bool = OverwriteOpt,
    quiet: bool = QuietOpt,
    train_file: list[str] | None = typer.Option(None, "--train-file", help="Text to pretrain on, one example per "
                                                "line; repeat for several (globs, .gz, .zst, .jsonl work). Default: the recipe's."),
    validation_file: list[str] | None = typer.Option(None, "--validation-file", help="Held-out text (repeatable). "
                                                     "Default: data.validation_split_percentage of the training lines."),
    prepare_only: bool = typer.Option(False, "--prepare-only", help="Only train the tokenizer and tokenize and pack "
                                      "the corpus into the cache ($BIGMODEL_CACHE), for runs to read; no run folder."),
) -> None:
    """Pretrain a masked-language model on plain text, one example per line: a BERT from scratch, or
    any encoder checkpoint continued (--model).

    From scratch it trains a WordPiece tokenizer on the corpus unless the recipe names one; a
    continued checkpoint keeps its own. Reports held-out perplexity. Running the same command again
    resumes an interrupted run.
    """
    from bigmodel_cli.commands import pretrain as job

    flags = {"model.name_or_path": model, "data.train_files": train_file or None,
             # given training files and no held-out ones: held out from them, not the recipe's own held-out files
             "data.eval_files": validation_file or ([] if train_file else None)}
    job.command(recipe, flags, output_dir, set_, overwrite, quiet, prepare_only)


@app.command()
def finetune(
    task: str | None = typer.Option(None, "--task", "-t", help="GLUE task: cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, "
                                    "wnli; or ner (named entities from CoNLL or JSON Lines files)."),
    model: str | None = typer.Option(None, "--model", "-m", help="Model folder (e.g. a pretrain run) or hub id."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Folder with GLUE's own files for the task; default: the hub."),
    train_file: Path | None = typer.Option(None, "--train-file", help="Your own training data: CSV, TSV, JSON or JSON Lines "
                                           "(ner: CoNLL or JSON Lines)."),
    validation_file: Path | None = typer.Option(None, "--validation-file", help="Your own validation data."),
    test_file: Path | None = typer.Option(None, "--test-file", help="Examples to predict after training (labels optional)."),
    recipe: str | None = RecipeOpt,
    output_dir: Path | None = OutputOpt,
    set_: list[str] | None = SetOpt,
    seeds: int = typer.Option(1, "--seeds", help="Run once per seed (seed, seed+1, ...) and report mean and std.", min=1),
    overwrite: bool = OverwriteOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Fine-tune a sequence classifier on a GLUE task or your own labelled files, or a tagger (--task ner).

    Evaluates on the dev split after every epoch and keeps the best epoch. Default recipe:
    finetune/<task> (finetune/custom for your own files, finetune/ner for named entities).
    """
    from bigmodel_cli.commands import finetune as job

    flags = {
        "model.name_or_path": model,
        "data.data_dir": str(data_dir) if data_dir else None,
        "data.train_file": str(train_file) if train_file else None,
        "data.validation_file": str(validation_file) if validation_file else None,
        "data.test_file": str(test_file) if test_file else None,
    }
    job.command(task, flags, recipe, output_dir, set_, seeds, overwrite, quiet)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def launch(
    ctx: typer.Context,
    num_processes: int | None = typer.Option(None, "--num-processes", "-n", min=1,
                                             help="Processes in all (all machines together). Default: the config's, else 1."),
    config: str | None = typer.Option(None, "--config", "-c", help="An Accelerate config file, or a shipped one: "
                                      "accelerate/single-gpu-bf16, multi-gpu-ddp, fsdp, deepspeed-zero2, two-machines, tpu-vm."),
    num_machines: int | None = typer.Option(None, "--num-machines", min=1, help="Machines taking part. Default: the config's, else 1."),
    machine_rank: int | None = typer.Option(None, "--machine-rank", min=0, help="This machine's rank, 0 to num-machines - 1."),
    main_process_ip: str | None = typer.Option(None, "--main-process-ip", help="Machine 0's address (several machines)."),
    main_process_port: int | None = typer.Option(None, "--main-process-port", help="A free port on machine 0."),
    grace: float = typer.Option(LAUNCH_GRACE, "--grace", min=0, help="Seconds the workers get to save after a SIGTERM, "
                                "SIGINT or SIGUSR1 sent to the launch, before it ends them."),
) -> None:
    """Run `pretrain`, `finetune` or `glue` under Accelerate's launcher, in several processes or on several machines.

    `bigmodel launch -n 2 pretrain -r pretrain/bert-tiny` is `accelerate launch --multi_gpu --num_processes 2
    -m bigmodel_cli pretrain -r pretrain/bert-tiny`: a thin wrapper, nothing re-implemented. The recipe's
    training.global_batch_size holds whatever the number of processes. It exits with the workers' own
    code (75: stopped and saved, 3: diverged, 2: bad input) and passes signals to them.
    """
    from bigmodel_cli.commands import launch as job

    job.command(ctx.args, num_processes, config, num_machines, machine_rank, main_process_ip, main_process_port, grace)


@app.command()
def glue(
    model: str = typer.Option(..., "--model", "-m", help="The model to fine-tune on each task: a run folder or hub id."),
    data_dir: Path = typer.Option(..., "--data-dir", help="GLUE's download: CoLA/, SST-2/, MRPC/, STS-B/, QQP/, MNLI/, "
                                  "QNLI/, RTE/, WNLI/ (lower-case names too)."),
    tasks: list[str] | None = typer.Option(None, "--tasks", "-t", help="Only these tasks (repeatable). Default: every one present."),
    seeds: int = typer.Option(1, "--seeds", min=1, help="Runs per task (seed, seed+1, ...); scores are their means."),
    from_mnli: bool = typer.Option(False, "--from-mnli", help="Start RTE, MRPC and STS-B from the MNLI model, as BERT's paper did."),
    output_dir: Path | None = OutputOpt,
    set_: list[str] | None = SetOpt,
    overwrite: bool = typer.Option(False, "--overwrite", help="Rerun finished tasks that another model, other --set "
                                   "values or another --seeds made (else such a rerun is refused)."),
    quiet: bool = QuietOpt,
) -> None:
    """Fine-tune and evaluate a model on every GLUE task present; writes glue_summary.json and a
    Markdown table with the GLUE score. A rerun skips the tasks finished the same way and resumes the
    unfinished one."""
    from bigmodel_cli.commands import glue as job

    job.command(model, data_dir, tasks, seeds, output_dir, set_, from_mnli, quiet, overwrite)


@app.command("eval")
def evaluate(
    model: str = typer.Option(..., "--model", "-m", help="A saved model folder (a finetune or pretrain run)."),
    task: str | None = typer.Option(None, "--task", "-t", help="GLUE task, 'ner', or 'mlm' for perplexity. "
                                    "Default: the model's own."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Folder with GLUE's own files; default: the hub."),
    data_file: Path | None = typer.Option(None, "--data-file", help="A labelled file (GLUE TSV, CSV, JSON, JSONL; "
                                                               "CoNLL for ner), or text for mlm."),
    split: str | None = typer.Option(None, "--split", help="train, validation (dev), test, or MNLI's validation_mismatched "
                                     "(GLUE's files or the hub). Default: validation."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, show_default=False,
                                          help="Examples per batch, length-sorted. Default: 32 (on 2 CPU cores 32 ran "
                                               "1.6x faster than 256); 16 for an exported folder."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object as the last line of stdout."),
) -> None:
    """Evaluate a saved model: accuracy/F1 or the task's official metric, entity F1 for a tagger, or perplexity (--task mlm)."""
    from bigmodel_cli.commands import evaluate as job

    job.command(model, task, split, str(data_dir) if data_dir else None, str(data_file) if data_file else None,
                batch_size, as_json)


@app.command()
def predict(
    model: str = typer.Option(..., "--model", "-m", help="A saved classifier or tagger folder (a finetune run)."),
    text: str | None = typer.Option(None, "--text", help="One input text."),
    text_pair: str | None = typer.Option(None, "--text-pair", help="The second text, for pair tasks."),
    input_file: Path | None = typer.Option(None, "--input-file", "-i", help="CSV, TSV, JSON or JSON Lines; streamed. A tagger: "
                                           "text lines (.txt), CoNLL words or JSON Lines (text or tokens)."),
    output: Path | None = typer.Option(None, "--output", help="JSON Lines file to write (never overwritten). Default: stdout."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, show_default=False,
                                          help="Examples per batch, length-sorted. Default: 32 (on 2 CPU cores 32 ran "
                                               "1.6x faster than 256); 16 for an exported folder."),
    quiet: bool = QuietOpt,
) -> None:
    """Predict labels (names and probabilities) or scores, or a tagger's entities with character offsets: one JSON line per example."""
    from bigmodel_cli.commands import predict as job

    job.command(model, text, text_pair, str(input_file) if input_file else None, str(output) if output else None,
                batch_size, quiet)


@app.command()
def export(
    model: Path = typer.Option(..., "--model", "-m", help="A finetune run's folder: a sequence or token classifier."),
    output_dir: Path | None = typer.Option(None, "--output-dir", "-o", help="A new folder. Default: MODEL-onnx beside the run."),
    int8: bool = typer.Option(False, "--int8", help="Also quantize to int8, kept only if the dev metric holds (--max-drop)."),
    max_drop: float = typer.Option(0.5, "--max-drop", min=0, help="Points of the main dev metric int8 may lose."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="GLUE's files for the dev set. Default: the run's recipe's."),
    data_file: Path | None = typer.Option(None, "--data-file", help="A labelled dev file. Default: the run's recipe's."),
    opset: int = typer.Option(17, "--opset", help="The ONNX opset to write."),
    quiet: bool = QuietOpt,
) -> None:
    """Export a fine-tuned model to ONNX (onnxruntime's fusions, logits checked against torch), and int8 that keeps its accuracy.

    Writes model.onnx (and model.int8.onnx), the tokenizer, config, export_report.json and a model card.
    `bigmodel eval` and `bigmodel predict` run the folder with onnxruntime.
    """
    from bigmodel_cli.commands import export as job

    job.command(model, output_dir, int8, max_drop, str(data_dir) if data_dir else None,
                str(data_file) if data_file else None, opset, quiet)


@app.command()
def report(
    run_dirs: list[Path] = typer.Argument(..., help="One or more run directories to plot and compare."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Folder for the PNGs and report.md. Default: RUN_DIR/report."),
) -> None:
    """Plot training loss, learning rate and eval metrics (and a confusion matrix) of runs; compare them in report.md."""
    from bigmodel_cli.commands import report as job

    written = job.run(run_dirs, output or run_dirs[0] / "report")
    for path in written:
        print(path)


@recipes_app.command("list")
def recipes_list() -> None:
    """List the shipped recipes."""
    from bigmodel_cli.commands import recipes as job

    job.list_command()


@recipes_app.command("show")
def recipes_show(name: str = typer.Argument(..., help="Recipe name, e.g. pretrain/bert-tiny.")) -> None:
    """Print a shipped recipe."""
    from bigmodel_cli.commands import recipes as job

    job.show_command(name)


@recipes_app.command("copy")
def recipes_copy(
    name: str = typer.Argument(..., help="Recipe name, e.g. finetune/mrpc."),
    dest: Path = typer.Argument(..., help="Where to write the copy (a file or a folder)."),
) -> None:
    """Copy a shipped recipe to edit it; never overwrites an existing file."""
    from bigmodel_cli.commands import recipes as job

    job.copy_command(name, dest)


def _usage_errors() -> tuple[type[Exception], ...]:
    """Click's usage errors, and those of the click that typer >= 0.24 carries inside itself."""
    import click

    try:
        from typer._click.exceptions import ClickException
    except ImportError:
        return (click.exceptions.ClickException,)
    return (click.exceptions.ClickException, ClickException)


def main() -> None:
    """Entry point: `error: ...` and exit 2 for bad input; `--debug` anywhere shows the traceback."""
    import click

    usage_errors = _usage_errors()
    argv = sys.argv[1:]
    debug = "--debug" in argv or os.environ.get("BIGMODEL_DEBUG") == "1"
    argv = [a for a in argv if a != "--debug"]
    try:
        result = app(args=argv, prog_name="bigmodel", standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except BigmodelError as e:
        if debug:
            raise
        if not e.agreed or is_main():  # one every process raised together: said once
            print(f"error: {e}", file=sys.stderr)
        code = e.exit_code
    except usage_errors as e:  # a wrong flag or a missing option: usage and the fix, exit 2
        e.show()
        code = e.exit_code
    except (click.exceptions.Abort, typer.Abort, KeyboardInterrupt):
        code = 130
    except (click.exceptions.Exit, typer.Exit) as e:
        code = e.exit_code
    except Exception as e:  # a bug or an unforeseen failure: one line, the traceback on request
        if debug:
            raise
        reason = write_failure(e)
        if reason is not None:  # a full disk or a folder we may not write: the user can fix it
            where = f" {e.filename}" if getattr(e, "filename", None) else ""
            print(f"error: cannot write{where}: {reason}; free space or fix permissions, then run the same command "
                  "again (an unfinished run resumes from its last complete checkpoint)", file=sys.stderr)
            code = 2
        else:
            print(f"error: {type(e).__name__}: {e} (run again with --debug for the traceback)", file=sys.stderr)
            code = 1
    if code == 130:  # Ctrl-C twice (once finishes the step and saves); typer returns 130 for it, silently
        print("interrupted: a training run resumes from its last complete checkpoint when the same command "
              "runs again", file=sys.stderr)
    exit_process(code)


if __name__ == "__main__":
    main()
