"""GLUE tasks: what each one reads, predicts and is scored by, and one loader per data source.

Every loader returns `datasets.Dataset`s with the columns `sentence1`, `sentence2` (pairs only) and
`label` (an int class id, or a float for regression; absent in unlabelled test files).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from bigmodel_cli.errors import BigmodelError


@dataclass(frozen=True)
class Task:
    name: str
    text_columns: tuple[str, ...]  # columns of GLUE's own TSV files: sentence1[, sentence2]
    label_column: str | None  # the label column in GLUE's train/dev TSV files
    label_names: tuple[str, ...] | None  # class names in id order (as nyu-mll/glue); None: regression
    metrics: tuple[str, ...]  # the official metric modules (bigmodel_cli/metrics/<name>)
    best_metric: str  # the key that picks the best epoch
    hub_columns: tuple[str, ...]  # the text columns in the hub's nyu-mll/glue
    files: dict[str, str] = field(default_factory=dict)  # split name -> file in --data-dir
    headerless: tuple[str, ...] = ()  # column names of headerless train/dev files (CoLA)

    @property
    def is_regression(self) -> bool:
        return self.label_names is None

    @property
    def eval_split(self) -> str:
        return "validation_matched" if self.name == "mnli" else "validation"


_DEV = {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}
TASKS: dict[str, Task] = {
    t.name: t
    for t in [
        Task("cola", ("sentence",), "label", ("unacceptable", "acceptable"), ("matthews_correlation",),
             "matthews_correlation", ("sentence",), _DEV,
             headerless=("source", "label", "label_notes", "sentence")),
        Task("sst2", ("sentence",), "label", ("negative", "positive"), ("accuracy",), "accuracy",
             ("sentence",), _DEV),
        Task("mrpc", ("#1 String", "#2 String"), "Quality", ("not_equivalent", "equivalent"),
             ("accuracy", "f1"), "f1", ("sentence1", "sentence2"), _DEV),
        Task("qqp", ("question1", "question2"), "is_duplicate", ("not_duplicate", "duplicate"),
             ("accuracy", "f1"), "f1", ("question1", "question2"), _DEV),
        Task("stsb", ("sentence1", "sentence2"), "score", None, ("pearsonr", "spearmanr"), "pearson",
             ("sentence1", "sentence2"), _DEV),
        Task("mnli", ("sentence1", "sentence2"), "gold_label", ("entailment", "neutral", "contradiction"),
             ("accuracy",), "accuracy", ("premise", "hypothesis"),
             {"train": "train.tsv", "validation_matched": "dev_matched.tsv",
              "validation_mismatched": "dev_mismatched.tsv", "test_matched": "test_matched.tsv",
              "test_mismatched": "test_mismatched.tsv"}),
        Task("qnli", ("question", "sentence"), "label", ("entailment", "not_entailment"), ("accuracy",),
             "accuracy", ("question", "sentence"), _DEV),
        Task("rte", ("sentence1", "sentence2"), "label", ("entailment", "not_entailment"), ("accuracy",),
             "accuracy", ("sentence1", "sentence2"), _DEV),
        Task("wnli", ("sentence1", "sentence2"), "label", ("not_entailment", "entailment"), ("accuracy",),
             "accuracy", ("sentence1", "sentence2"), _DEV),
    ]
}
SPLIT_ALIASES = {"dev": "validation", "eval": "validation", "valid": "validation"}


def get_task(name: str) -> Task:
    task = TASKS.get(name.lower())
    if task is None:
        raise BigmodelError(f"unknown task '{name}'; choose one of {', '.join(TASKS)}")
    return task


def resolve_split(task: Task, split: str) -> str:
    split = SPLIT_ALIASES.get(split, split)
    if split == "validation" and task.name == "mnli":
        split = "validation_matched"
    if split not in task.files:
        raise BigmodelError(f"task {task.name} has no split '{split}'; choose one of {', '.join(task.files)}")
    return split


def parse_label(task: Task, value: str, where: str) -> int | float:
    """A label as GLUE writes it (`1`, `entailment`, `3.800`) -> a class id or a float score."""
    value = value.strip()
    if task.is_regression:
        try:
            return float(value)
        except ValueError:
            raise BigmodelError(f"{where}: label '{value}' is not a number (task {task.name} is regression)") from None
    names = task.label_names
    if value in names:
        return names.index(value)
    if value.isdigit() and int(value) < len(names):
        return int(value)
    allowed = ", ".join([*map(str, range(len(names))), *names])
    raise BigmodelError(f"{where}: label '{value}' is not in the label set of {task.name} ({allowed})")


def read_glue_tsv(task: Task, path: Path) -> dict[str, list]:
    """One of GLUE's own TSV files: UTF-8 with a BOM, tab separated, quotes are literal text."""
    path = Path(path)
    if not path.is_file():
        raise BigmodelError(f"data file {path} not found")
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    except UnicodeDecodeError as e:
        raise BigmodelError(f"data file {path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    if not rows:
        raise BigmodelError(f"data file {path} is empty")
    header_row = rows[0]
    if task.headerless and task.headerless[-1] not in header_row and len(header_row) == len(task.headerless):
        header, body, first_line = list(task.headerless), rows, 1
    else:
        header, body, first_line = header_row, rows[1:], 2
    wanted = list(task.text_columns)
    missing = [c for c in wanted if c not in header]
    if missing:
        raise BigmodelError(
            f"data file {path}: no column {', '.join(repr(c) for c in missing)} for task {task.name} "
            f"(found {', '.join(repr(c) for c in header)}); is this the {task.name} file in GLUE's layout?"
        )
    has_label = task.label_column in header
    columns = {f"sentence{i + 1}": [] for i in range(len(wanted))}
    labels: list = []
    for number, row in enumerate(body, start=first_line):
        if not row:
            continue
        if len(row) != len(header):
            raise BigmodelError(
                f"data file {path} line {number}: {len(row)} fields, the header has {len(header)} "
                "(a stray tab, or a quoted field spanning lines?)"
            )
        record = dict(zip(header, row))
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
