"""What a task means: the columns it reads, the labels it predicts, the metrics that score it.

The GLUE table is data (`TASKS`); your own files become a `Task` named `custom` through
`custom_task`, whose metric choice (accuracy and F1 for two classes, accuracy for more, Pearson and
Spearman for regression) is written here once. To add a task, add a row to `TASKS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
    folder: str = ""  # the task's folder in GLUE's own download (CoLA, SST-2, ...)
    score: tuple[str, ...] = ()  # the metrics whose mean is the task's GLUE score

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
             headerless=("source", "label", "label_notes", "sentence"),
             folder="CoLA", score=("matthews_correlation",)),
        Task("sst2", ("sentence",), "label", ("negative", "positive"), ("accuracy",), "accuracy",
             ("sentence",), _DEV,
             folder="SST-2", score=("accuracy",)),
        Task("mrpc", ("#1 String", "#2 String"), "Quality", ("not_equivalent", "equivalent"),
             ("accuracy", "f1"), "f1", ("sentence1", "sentence2"), _DEV,
             folder="MRPC", score=("f1", "accuracy")),
        Task("qqp", ("question1", "question2"), "is_duplicate", ("not_duplicate", "duplicate"),
             ("accuracy", "f1"), "f1", ("question1", "question2"), _DEV,
             folder="QQP", score=("f1", "accuracy")),
        Task("stsb", ("sentence1", "sentence2"), "score", None, ("pearsonr", "spearmanr"), "pearson",
             ("sentence1", "sentence2"), _DEV,
             folder="STS-B", score=("pearson", "spearmanr")),
        Task("mnli", ("sentence1", "sentence2"), "gold_label", ("entailment", "neutral", "contradiction"),
             ("accuracy",), "accuracy", ("premise", "hypothesis"),
             {"train": "train.tsv", "validation_matched": "dev_matched.tsv",
              "validation_mismatched": "dev_mismatched.tsv", "test_matched": "test_matched.tsv",
              "test_mismatched": "test_mismatched.tsv"},
             folder="MNLI", score=("accuracy",)),
        Task("qnli", ("question", "sentence"), "label", ("entailment", "not_entailment"), ("accuracy",),
             "accuracy", ("question", "sentence"), _DEV,
             folder="QNLI", score=("accuracy",)),
        Task("rte", ("sentence1", "sentence2"), "label", ("entailment", "not_entailment"), ("accuracy",),
             "accuracy", ("sentence1", "sentence2"), _DEV,
             folder="RTE", score=("accuracy",)),
        Task("wnli", ("sentence1", "sentence2"), "label", ("not_entailment", "entailment"), ("accuracy",),
             "accuracy", ("sentence1", "sentence2"), _DEV,
             folder="WNLI", score=("accuracy",)),
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
    if task.name == "custom":  # your own files: the labels the training file has
        raise BigmodelError(f"{where}: label '{value}' is not one of the training labels ({', '.join(names)})")
    allowed = ", ".join([*map(str, range(len(names))), *names])
    raise BigmodelError(f"{where}: label '{value}' is not in the label set of {task.name} ({allowed})")


def custom_task(text_columns: tuple[str, ...], label_column: str, label_names: tuple[str, ...] | None) -> Task:
    """Your own data as a Task: `label_names` in id order, or None for regression (a float score)."""
    if label_names is None:
        metrics, best = ("pearsonr", "spearmanr"), "pearson"
    else:
        metrics, best = (("accuracy", "f1"), "f1") if len(label_names) == 2 else (("accuracy",), "accuracy")
    return Task("custom", tuple(text_columns), label_column, label_names, metrics, best, tuple(text_columns))


def task_from_model(config, name: str | None) -> Task:
    """The task a saved classifier was trained for: a GLUE task by name, else rebuilt from its
    config (labels from id2label, regression from problem_type)."""
    task_name = name or getattr(config, "finetuning_task", None)
    if task_name and task_name != "custom":
        return get_task(task_name)
    if config.problem_type == "regression":
        return custom_task(("text",), "label", None)
    return custom_task(("text",), "label", tuple(config.id2label[i] for i in range(config.num_labels)))

