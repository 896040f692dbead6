"""Labelled data for finetune, eval and predict: a GLUE task, or your own CSV/TSV/JSON/JSON Lines.

Every loader returns `datasets.Dataset`s with the columns `sentence1`, `sentence2` (pairs only) and
`label` (an int class id, or a float for regression; absent in unlabelled test files). GLUE's data
comes from a folder in GLUE's own layout or from the hub's `nyu-mll/glue`. Your own files become a
`Task` too: text columns named by the recipe (`text_column`, `text_pair_column`, `label_column`) or
found as run_glue.py finds them; string labels are mapped to ids in sorted order, float labels mean
regression.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from bigmodel_cli.classification.reader import LABEL_COLUMNS, detect_text_columns, is_number, iter_rows, read_rows
from bigmodel_cli.classification.tasks import TASKS, Task, custom_task, get_task, parse_label, resolve_split
from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.recipe import LabelledDataSection


def load_splits(data: LabelledDataSection) -> tuple[Task, dict]:
    """The task and its `train` and `validation` splits."""
    if data.task and not data.train_file:
        task = get_task(data.task)
        splits = {"train": load_glue(task, "train", data.data_dir),
                  "validation": load_glue(task, task.eval_split, data.data_dir)}
    else:
        if not data.validation_file:
            raise BigmodelError("--train-file needs --validation-file too (the split that picks the best epoch)")
        tables = {"train": read_rows(data.train_file), "validation": read_rows(data.validation_file)}
        task = infer_task(data, tables["train"], data.train_file)
        splits = {name: to_dataset(task, table, path)
                  for (name, table), path in zip(tables.items(), [data.train_file, data.validation_file])}
    for name in splits:
        limit = data.max_train_samples if name == "train" else data.max_eval_samples
        if limit:
            splits[name] = splits[name].select(range(min(limit, len(splits[name]))))
    return task, splits


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
        texts = detect_text_columns(rows[:200], exclude={label})
        if not texts:
            raise BigmodelError(f"data file {path}: no text column found; name it with --set data.text_column=NAME")
    values = [r.get(label) for r in rows]
    if any(v is None or str(v).strip() == "" for v in values):
        missing = next(i for i, v in enumerate(values) if v is None or str(v).strip() == "")
        raise BigmodelError(f"data file {path}: example {missing + 1} has no label in column '{label}'")
    regression = all(is_number(v) for v in values) and any(isinstance(v, float) or "." in str(v) for v in values)
    if regression:
        return custom_task(tuple(texts), label, None)
    distinct = sorted({str(v).strip() for v in values}, key=lambda s: (not s.lstrip("-").isdigit(), _int_or(s), s))
    return custom_task(tuple(texts), label, tuple(distinct))


def columns_note(data: LabelledDataSection, task: Task) -> str:
    """The run header's word on the columns of your own files: which hold the texts and the label,
    and whether bigmodel found them or the recipe named them."""
    named = bool(data.text_column or data.text_pair_column)
    texts = " + ".join(task.text_columns)
    how = "as named" if named else "detected; name others with data.text_column, data.text_pair_column"
    classes = "regression" if task.is_regression else f"{len(task.label_names)} classes"
    return f"text columns {texts} ({how}), label column {task.label_column} ({classes})"


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
        columns["label"] = [parse_label(task, str(row.get(task.label_column, "")), f"data file {path} example {number}")
                            for number, row in enumerate(rows, start=1)]
    return Dataset.from_dict(columns)


def read_glue_tsv(task: Task, path: Path) -> dict[str, list]:
    """One of GLUE's own TSV files (UTF-8 with a BOM, tab separated, quotes are literal text) as
    columns `sentence1`[, `sentence2`] and `label` where the file has labels."""
    path = Path(path)
    if not path.is_file():
        raise BigmodelError(f"data file {path} not found")
    rows = iter_rows(path, "data file", kind="tsv", headerless=task.headerless)
    wanted = list(task.text_columns)
    columns = {f"sentence{i + 1}": [] for i in range(len(wanted))}
    labels: list = []
    has_label = None
    for number, record in rows:
        if has_label is None:  # the header, seen through the first row
            missing = [c for c in wanted if c not in record]
            if missing:
                raise BigmodelError(
                    f"data file {path}: no column {', '.join(repr(c) for c in missing)} for task {task.name} "
                    f"(found {', '.join(repr(c) for c in record)}); is this the {task.name} file in GLUE's layout?"
                )
            has_label = task.label_column in record
        for i, name in enumerate(wanted):
            columns[f"sentence{i + 1}"].append(record[name])
        if has_label:
            labels.append(parse_label(task, record[task.label_column], f"data file {path} line {number}"))
    if not columns["sentence1"]:
        raise BigmodelError(f"data file {path} has a header but no examples")
    if has_label:
        columns["label"] = labels
    return columns


def load_glue_local(task: Task, data_dir: str | Path, split: str):
    """A split from a folder in GLUE's own layout (`train.tsv`, `dev.tsv`, ...)."""
    from datasets import Dataset

    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise BigmodelError(f"--data-dir {data_dir} is not a folder; point it at GLUE's {task.name} files")
    path = data_dir / task.files[resolve_split(task, split)]
    if not path.is_file():
        raise BigmodelError(f"{path} not found: --data-dir must hold GLUE's {task.name} files ({path.name})")
    return Dataset.from_dict(read_glue_tsv(task, path))


def load_glue_hub(task: Task, split: str):
    """A split of `nyu-mll/glue` from the Hugging Face Hub (needs the network or a warm cache)."""
    from datasets import load_dataset

    split = resolve_split(task, split)
    try:
        data = load_dataset("nyu-mll/glue", task.name, split=split)
    except Exception as e:  # the hub raises many types: connection, offline mode, missing cache
        raise BigmodelError(
            f"could not load nyu-mll/glue {task.name} from the Hugging Face Hub ({type(e).__name__}); "
            f"offline, pass --data-dir with GLUE's {task.name} files"
        ) from None
    renames = {c: f"sentence{i + 1}" for i, c in enumerate(task.hub_columns) if c != f"sentence{i + 1}"}
    data = data.rename_columns(renames)
    keep = [f"sentence{i + 1}" for i in range(len(task.hub_columns))] + ["label"]
    data = data.remove_columns([c for c in data.column_names if c not in keep])
    if split.startswith("test"):  # the hub marks the hidden test labels as -1
        data = data.remove_columns("label")
    return data


def load_glue(task: Task, split: str, data_dir: str | None = None, data_file: str | None = None):
    """The one data function finetune, eval and predict use for GLUE: a file, a folder or the hub."""
    from datasets import Dataset

    if data_file:
        return Dataset.from_dict(read_glue_tsv(task, Path(data_file)))
    if data_dir:
        return load_glue_local(task, data_dir, split)
    return load_glue_hub(task, split)


def load_eval_file(task: Task, path: str | Path, data: LabelledDataSection | None = None):
    """One file to score a saved classifier on: GLUE's own TSV layout for a GLUE task, else any
    CSV/TSV/JSON/JSON Lines file whose labels are the model's label names (or their ids)."""
    from datasets import Dataset

    path = Path(path)
    if task.name in TASKS and path.suffix.lower() == ".tsv":
        _, first = next(iter_rows(path, "data file", kind="tsv", headerless=task.headerless), (0, {}))
        if all(c in first for c in task.text_columns):
            return Dataset.from_dict(read_glue_tsv(task, path))
    rows = read_rows(path)
    found = infer_task(data or LabelledDataSection(train_file=str(path)), rows, path)
    return to_dataset(replace(task, text_columns=found.text_columns, label_column=found.label_column), rows, path)


def encode(dataset, tokenizer, max_length: int | None = None):
    """Tokenize `sentence1` [+ `sentence2`] with truncation; keeps `label`, adds `length` (for
    length-grouped batches). Without `max_length`, the tokenizer's model_max_length applies."""
    pair = "sentence2" in dataset.column_names

    def tokenize(batch):
        texts = (batch["sentence1"], batch["sentence2"]) if pair else (batch["sentence1"],)
        out = tokenizer(*texts, truncation=True, max_length=max_length)
        out["length"] = [len(x) for x in out["input_ids"]]
        return out

    drop = [c for c in dataset.column_names if c != "label"]
    return dataset.map(tokenize, batched=True, remove_columns=drop, desc="tokenizing")
