"""Labelled data for finetune, eval and predict: a GLUE task, or your own CSV/TSV/JSON/JSON Lines.

Your own files become a `Task` too: text columns named by the recipe (`text_column`,
`text_pair_column`, `label_column`) or found as run_glue.py finds them (`sentence1`/`sentence2`,
else the first text columns; numeric ID columns are skipped); string labels are mapped to ids in
sorted order, float labels mean regression.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.files import check_text_file
from bigmodel_cli.glue import Task, get_task, load_glue
from bigmodel_cli.recipe import LabelledDataSection

LABEL_COLUMNS = ("label", "labels", "Quality", "gold_label", "score", "is_duplicate")
FORMATS = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "jsonl"}


def load_splits(data: LabelledDataSection) -> tuple[Task, dict]:
    """The task and its `train` and `validation` splits (`test` too when given)."""
    if data.task and not data.train_file:
        task = get_task(data.task)
        splits = {"train": load_glue(task, "train", data.data_dir),
                  "validation": load_glue(task, task.eval_split, data.data_dir)}
    else:
        if not data.validation_file:
            raise BigmodelError("--train-file needs --validation-file too (the split that picks the best epoch)")
        tables = {"train": read_table(data.train_file), "validation": read_table(data.validation_file)}
        task = infer_task(data, tables["train"], data.train_file)
        splits = {name: to_dataset(task, table, path)
                  for (name, table), path in zip(tables.items(), [data.train_file, data.validation_file])}
    for name in splits:
        limit = data.max_train_samples if name == "train" else data.max_eval_samples
        if limit:
            splits[name] = splits[name].select(range(min(limit, len(splits[name]))))
    return task, splits


def read_table(path: str | Path) -> list[dict]:
    """Rows of a CSV (quoted fields), TSV (GLUE-style: tabs, quotes are literal), JSON (a list of
    objects, or {"data": [...]}) or JSON Lines file."""
    path = check_text_file(path, "data file")
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise BigmodelError(f"data file {path}: unknown format '{path.suffix}'; use .csv, .tsv, .json or .jsonl")
    text = path.read_text(encoding="utf-8-sig")
    if kind in ("csv", "tsv"):
        quoting = csv.QUOTE_NONE if kind == "tsv" else csv.QUOTE_MINIMAL
        rows = list(csv.reader(text.splitlines(), delimiter="\t" if kind == "tsv" else ",", quoting=quoting))
        rows = [r for r in rows if r]
        if len(rows) < 2:
            raise BigmodelError(f"data file {path}: needs a header line and at least one example")
        header = rows[0]
        for number, row in enumerate(rows[1:], start=2):
            if len(row) != len(header):
                raise BigmodelError(
                    f"data file {path} line {number}: {len(row)} fields, the header has {len(header)}"
                )
        return [dict(zip(header, row)) for row in rows[1:]]
    if kind == "json" and text.lstrip().startswith(("[", "{")):
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError:
            loaded = None  # maybe JSON Lines with a .json name
        if isinstance(loaded, dict) and isinstance(loaded.get("data"), list):
            loaded = loaded["data"]
        if isinstance(loaded, list):
            return _objects(loaded, path)
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise BigmodelError(f"data file {path} line {number}: not valid JSON ({e.msg})") from None
    return _objects(rows, path)


def _objects(rows: list, path: Path) -> list[dict]:
    if not rows or not all(isinstance(r, dict) for r in rows):
        raise BigmodelError(f"data file {path}: expected a list of objects, one per example")
    return rows


def _is_number(value) -> bool:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return True
    try:
        float(str(value))
        return True
    except ValueError:
        return False


def infer_task(data: LabelledDataSection, rows: list[dict], path) -> Task:
    """Columns and labels of your own file, as a Task (name `custom`)."""
    columns = list(rows[0])
    label = data.label_column or next((c for c in LABEL_COLUMNS if c in columns), None)
    if label is None or label not in columns:
        raise BigmodelError(
            f"data file {path}: no label column (have {', '.join(columns)}); name it with "
            "--set data.label_column=NAME"
        )
    texts = [c for c in (data.text_column, data.text_pair_column) if c]
    for c in texts:
        if c not in columns:
            raise BigmodelError(f"data file {path}: no column '{c}' (have {', '.join(columns)})")
    if not texts:
        others = [c for c in columns if c != label]
        if "sentence1" in others:
            texts = ["sentence1"] + (["sentence2"] if "sentence2" in others else [])
        else:  # text columns: not every value a number (skips IDs), as many as two
            sample = rows[:200]
            texts = [c for c in others if not all(_is_number(r.get(c, "")) for r in sample)][:2]
        if not texts:
            raise BigmodelError(f"data file {path}: no text column found; name it with --set data.text_column=NAME")
    values = [r.get(label) for r in rows]
    if any(v is None or str(v).strip() == "" for v in values):
        missing = next(i for i, v in enumerate(values) if v is None or str(v).strip() == "")
        raise BigmodelError(f"data file {path}: example {missing + 1} has no label in column '{label}'")
    regression = all(_is_number(v) for v in values) and any(
        isinstance(v, float) or "." in str(v) for v in values
    )
    if regression:
        names, metrics, best = None, ("pearsonr", "spearmanr"), "pearson"
    else:
        distinct = sorted({str(v).strip() for v in values}, key=lambda s: (not s.lstrip("-").isdigit(), _int_or(s), s))
        names = tuple(distinct)
        metrics, best = (("accuracy", "f1"), "f1") if len(names) == 2 else (("accuracy",), "accuracy")
    return Task("custom", tuple(texts), label, names, metrics, best, tuple(texts))


def _int_or(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return 0


def to_dataset(task: Task, rows: list[dict], path):
    """Rows -> Dataset with sentence1[, sentence2] and label (ids, or floats for regression)."""
    from datasets import Dataset

    columns = {f"sentence{i + 1}": [str(r.get(c, "")) for r in rows] for i, c in enumerate(task.text_columns)}
    if task.label_column in rows[0]:
        labels = []
        for number, row in enumerate(rows, start=1):
            value = str(row.get(task.label_column, "")).strip()
            if task.is_regression:
                try:
                    labels.append(float(value))
                except ValueError:
                    raise BigmodelError(f"data file {path} example {number}: label '{value}' is not a number") from None
            elif value in task.label_names:
                labels.append(task.label_names.index(value))
            elif value.isdigit() and int(value) < len(task.label_names):
                labels.append(int(value))
            else:
                raise BigmodelError(
                    f"data file {path} example {number}: label '{value}' is not one of the training labels "
                    f"({', '.join(task.label_names)})"
                )
        columns["label"] = labels
    return Dataset.from_dict(columns)


def task_from_model(config, name: str | None) -> Task:
    """The task a saved classifier was trained for: a GLUE task by name, else rebuilt from its
    config (labels from id2label, regression from problem_type)."""
    task_name = name or getattr(config, "finetuning_task", None)
    if task_name and task_name != "custom":
        return get_task(task_name)
    if config.problem_type == "regression":
        return Task("custom", ("text",), "label", None, ("pearsonr", "spearmanr"), "pearson", ("text",))
    names = tuple(config.id2label[i] for i in range(config.num_labels))
    metrics = ("accuracy", "f1") if len(names) == 2 else ("accuracy",)
    return Task("custom", ("text",), "label", names, metrics, metrics[-1], ("text",))


def load_eval_file(task: Task, path: str | Path, data: LabelledDataSection | None = None):
    """One file to score a saved classifier on: GLUE's own TSV layout for a GLUE task, else any
    CSV/TSV/JSON/JSON Lines file whose labels are the model's label names (or their ids)."""
    from dataclasses import replace

    from bigmodel_cli.glue import TASKS, read_glue_tsv

    path = Path(path)
    if task.name in TASKS and path.suffix.lower() == ".tsv":
        with check_text_file(path, "data file").open(encoding="utf-8-sig") as f:
            header = f.readline().rstrip("\n").split("\t")
        if all(c in header for c in task.text_columns) or task.headerless:
            from datasets import Dataset

            return Dataset.from_dict(read_glue_tsv(task, path))
    rows = read_table(path)
    found = infer_task(data or LabelledDataSection(train_file=str(path)), rows, path)
    return to_dataset(replace(task, text_columns=found.text_columns, label_column=found.label_column), rows, path)
