"""What a command says to the person at the terminal: setup for --quiet, notes, the summary table.

Only the main process speaks; the others of a launch stay silent.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from bigmodel_cli.processes import is_main


def setup(quiet: bool) -> None:
    """Process-wide settings every command starts with: tokenizers without threads of their own,
    freed memory kept for reuse, and with --quiet no progress bars or library chatter."""
    from bigmodel_cli.memory import keep_freed_memory

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    keep_freed_memory()  # no page faults on every step (about 10 % of a CPU training step)
    if quiet:
        os.environ["TRANSFORMERS_VERBOSITY"] = "error"
        os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
        os.environ["TQDM_DISABLE"] = "1"


def shown(value, digits: int = 4) -> str:
    """A metric as people read it: floats rounded, anything else (counts, "inf" kept as text) as is."""
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def say(text: str) -> None:
    """One line on stderr, from the main process only."""
    if is_main():
        print(text, file=sys.stderr)


def summary(title: str, metrics: dict, run_dir: Path | None, quiet: bool, keys: list[str]) -> None:
    """The run's main figures as a table, and where its outputs went."""
    if quiet or not is_main():
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in keys:
        if key in metrics:
            table.add_row(key, shown(metrics[key]))
    console = Console(stderr=True)
    console.print(table)
    if run_dir is not None:
        console.print(f"model, tokenizer, metrics.json, resolved_recipe.yaml and README.md in [bold]{run_dir}[/bold]")
