"""Run directories: every output folder explains itself and nothing a user had is lost.

A run directory holds the model and tokenizer in the Hugging Face layout, `resolved_recipe.yaml`,
`metrics.json`, a model card `README.md`, TensorBoard logs and, while training, `checkpoint-*`.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import sys
from pathlib import Path

import yaml

from bigmodel_cli.console import say, shown
from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.processes import is_main
from bigmodel_cli.recipe import RECIPE_FILE, RECIPE_TYPES, Section, dump_recipe, read_saved_recipe

METRICS_FILE = "metrics.json"  # written last: the mark of a finished run
STAGING_PREFIX = "tmp-"  # a checkpoint being written (`tmp-checkpoint-N`); renamed to checkpoint-N once complete
PROBE = ".write-test"  # written and removed to learn that the folder is writable


def open_run(run_dir: Path, recipe: Section, overwrite: bool) -> Path | None:
    """The main process makes `run_dir` ready (`prepare_run_dir`) and writes the resolved recipe in
    it before anything else, so a run killed at any moment after this leaves a folder that the same
    command resumes or starts again; the others of a launch find the checkpoint it will resume from.
    Returns that checkpoint, or None for a fresh start."""
    if not is_main():
        found = checkpoints(run_dir) if run_dir.is_dir() and not overwrite else []
        return found[-1] if found else None
    resume = prepare_run_dir(run_dir, recipe, overwrite)
    if resume is not None:
        say(f"resuming from {resume}")
    dump_recipe(recipe, run_dir / RECIPE_FILE, f"bigmodel {_kind(recipe)}: {command_line()}")
    return resume


def command_line() -> str:
    """The command this process runs, as a user would type it (`bigmodel finetune --task mrpc ...`)."""
    return "bigmodel " + shlex.join(sys.argv[1:])


def checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first. bigmodel writes a checkpoint as `tmp-checkpoint-N` and
    renames it when complete; a folder of the stock Trainer's (written in place) counts only when its
    `trainer_state.json`, written last, parses."""
    found = [p for p in run_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    return sorted((p for p in found if _state_parses(p / "trainer_state.json")), key=lambda p: int(p.name.split("-")[-1]))


def _state_parses(path: Path) -> bool:
    try:
        return isinstance(json.loads(path.read_text(encoding="utf-8")), dict)
    except (OSError, ValueError):
        return False


def drop_partial_checkpoints(run_dir: Path) -> list[str]:
    """Remove what a kill during a save left: `tmp-checkpoint-*` folders and checkpoint folders that
    are not complete. Returns their names."""
    complete = set(checkpoints(run_dir))
    partial = [p for p in run_dir.glob(f"{STAGING_PREFIX}checkpoint-*") if p.is_dir()]
    partial += [p for p in run_dir.glob("checkpoint-*") if p.is_dir() and p not in complete]
    for path in partial:
        shutil.rmtree(path, ignore_errors=True)
    return sorted(p.name for p in partial)


def prepare_run_dir(run_dir: Path, recipe: Section, overwrite: bool) -> Path | None:
    """Make `run_dir` ready. Returns the checkpoint to resume from, if the folder holds an
    unfinished run of the same recipe; refuses a folder that holds anything else."""
    run_dir = Path(run_dir)
    try:
        if run_dir.exists() and not run_dir.is_dir():
            raise BigmodelError(f"--output-dir {run_dir} is a file; choose a folder")
    except PermissionError:
        raise BigmodelError(f"cannot reach --output-dir {run_dir} (permission denied); choose a folder you can write") from None
    if run_dir.is_dir() and (run_dir / PROBE).is_file():
        (run_dir / PROBE).unlink()  # left by a run killed in the instant it probed the folder
    if run_dir.is_dir() and any(run_dir.iterdir()):
        recipe_file = run_dir / RECIPE_FILE
        if overwrite:
            if not recipe_file.is_file() and not checkpoints(run_dir):
                raise BigmodelError(
                    f"--output-dir {run_dir} holds files that are not a bigmodel run; "
                    "--overwrite replaces only run folders: choose another --output-dir"
                )
            shutil.rmtree(run_dir)
        elif not recipe_file.is_file():
            raise BigmodelError(
                f"--output-dir {run_dir} is not empty and holds no bigmodel run; choose another --output-dir"
            )
        elif (run_dir / METRICS_FILE).is_file():
            raise BigmodelError(
                f"--output-dir {run_dir} already holds a finished run; pass --overwrite to replace it "
                "or choose another --output-dir"
            )
        elif {p.name for p in run_dir.iterdir()} == {RECIPE_FILE}:
            pass  # a run that stopped before any work (bad input found after the folder was made): start afresh
        elif (saved := read_saved_recipe(run_dir, _kind(recipe))) != recipe:
            changed = f" ({recipe_changes(saved, recipe)})" if saved is not None else ""
            raise BigmodelError(
                f"--output-dir {run_dir} holds an unfinished run of a different recipe{changed}; run the same "
                "recipe to resume it, pass --overwrite to replace it or choose another --output-dir"
            )
        else:
            dropped = drop_partial_checkpoints(run_dir)
            if dropped:
                say(f"removed incomplete checkpoints left by an interrupted save: {', '.join(dropped)}")
            found = checkpoints(run_dir)
            return found[-1] if found else None
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / PROBE
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise BigmodelError(f"cannot write to --output-dir {run_dir} ({e.strerror}); choose a writable folder") from None
    return None


def recipe_changes(saved: Section, now: Section, most: int = 3) -> str:
    """The values in which two recipes differ, by their dotted keys: `training.bf16 true there, false
    now`, the first `most` of them in key order and how many more."""

    def flat(tree: dict, prefix: str = "") -> dict:
        out = {}
        for key, value in tree.items():
            out.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
        return out

    there, here = flat(saved.model_dump(mode="json")), flat(now.model_dump(mode="json"))
    changed = [f"{key} {json.dumps(there.get(key))} there, {json.dumps(here.get(key))} now"
               for key in sorted(there.keys() | here.keys()) if there.get(key) != here.get(key)]
    more = f"; and {len(changed) - most} more" if len(changed) > most else ""
    return "; ".join(changed[:most]) + more


def _kind(recipe: Section) -> str:
    return next(kind for kind, model in RECIPE_TYPES.items() if isinstance(recipe, model))


def write_json(path: Path, data: dict) -> None:
    """Write JSON so that a kill mid-write never leaves a truncated file (write, then rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=_jsonable) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _jsonable(value):
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def clean_metrics(metrics: dict) -> dict:
    """Floats as JSON can hold them: inf and nan become strings rather than invalid JSON."""
    out = {}
    for key, value in metrics.items():
        if hasattr(value, "item"):
            value = value.item()
        if isinstance(value, float) and not math.isfinite(value):
            value = str(value)
        out[key] = value
    return out


def write_model_card(run_dir: Path, *, title: str, summary: str, metrics: dict, command: str,
                     load_class: str, tags: list[str], datasets: list[str]) -> None:
    """A Hugging Face model card: YAML front matter (tags, metrics) and how to load the model."""
    front = {"library_name": "transformers", "tags": ["bigmodel", *tags]}
    if datasets:
        front["datasets"] = datasets
    front["model-index"] = [
        {
            "name": title,
            "results": [
                {
                    "task": {"type": tags[0] if tags else "other"},
                    "metrics": [
                        {"type": k, "value": v}
                        for k, v in metrics.items()
                        if k.startswith("eval_") or k == "perplexity"
                    ],
                }
            ],
        }
    ]
    rows = "\n".join(f"| {k} | {shown(v)} |" for k, v in sorted(metrics.items()))
    text = f"""---
{yaml.safe_dump(front, sort_keys=False).strip()}
---

# {title}

{summary}

## How it was made

```
{command}
```

The full recipe is in `resolved_recipe.yaml` beside this card; running the command above with it
reproduces the run.

## Results

| metric | value |
| --- | --- |
{rows}

## How to use it

```python
from transformers import AutoTokenizer, {load_class}

tokenizer = AutoTokenizer.from_pretrained("{run_dir.name}")
model = {load_class}.from_pretrained("{run_dir.name}")
```

## Intended use and limits

Made with bigmodel for research and teaching. The figures above hold for the data named here;
check the model on your own data before you rely on it.
"""
    (run_dir / "README.md").write_text(text, encoding="utf-8")
