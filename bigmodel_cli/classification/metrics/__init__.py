"""The official metrics of the tasks, through `evaluate`, from the modules shipped beside this file.

Each metric is a folder `<name>/<name>.py` loaded by path, so it works with the hub unreachable and
`HF_HUB_OFFLINE=1`. To add a metric, add such a folder (copy `accuracy/`) and name it in a task's
`metrics`.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np

METRICS_DIR = Path(__file__).resolve().parent


@cache
def load_metric(name: str):
    import evaluate

    module = METRICS_DIR / name / f"{name}.py"
    if not module.is_file():
        shipped = sorted(p.name for p in METRICS_DIR.iterdir() if (p / f"{p.name}.py").is_file())
        raise ValueError(f"no shipped metric module '{name}' (have: {shipped})")
    return evaluate.load(str(module), keep_in_memory=True)  # no Arrow cache files on disk: half the time


def task_metrics(metric_names: tuple[str, ...], predictions, references) -> dict[str, float]:
    """The named metrics over predictions and references; several are also averaged (run_glue.py's
    `combined_score`)."""
    scores: dict[str, float] = {}
    for name in metric_names:
        scores.update(load_metric(name).compute(predictions=predictions, references=references))
    if len(scores) > 1:
        scores["combined_score"] = float(np.mean(list(scores.values())))
    return scores


def score_logits(logits: np.ndarray, labels: np.ndarray, metric_names, is_regression: bool) -> dict[str, float]:
    """Loss and metrics of classifier outputs. The loss is the mean cross-entropy (MSE for
    regression), as the model's own forward computes it."""
    logits = np.asarray(logits, dtype=np.float64)
    if is_regression:
        predictions = logits.reshape(-1)
        loss = float(np.mean((predictions - labels) ** 2))
    else:
        shifted = logits - logits.max(axis=-1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
        loss = float(-log_probs[np.arange(len(labels)), labels.astype(int)].mean())
        predictions = logits.argmax(axis=-1)
    scores = task_metrics(tuple(metric_names), predictions, labels)
    return {"loss": loss, **scores}
