"""Scoring a sequence classifier: batched inference and the task's official metrics.

Metrics go through `evaluate`, from the modules shipped in `bigmodel_cli/metrics/` and loaded by
path, so they work with the hub unreachable and `HF_HUB_OFFLINE=1`.
"""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path

import numpy as np

METRICS_DIR = Path(__file__).resolve().parent / "metrics"


@cache
def load_metric(name: str):
    import evaluate

    module = METRICS_DIR / name / f"{name}.py"
    if not module.is_file():
        raise ValueError(f"no shipped metric module '{name}' (have: {sorted(p.name for p in METRICS_DIR.iterdir())})")
    return evaluate.load(str(module))


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


def predict_logits(model, tokenizer, features, batch_size: int = 32, progress: bool = False) -> np.ndarray:
    """Logits for tokenized examples (dicts with `input_ids`, ...), in their original order.

    Examples are sorted by length so that each batch pads only to its own longest member, and run
    under `torch.inference_mode`. On a CPU with several cores, batches run side by side, one core
    each, rather than one at a time across all cores: each matrix product then runs on one core
    without waiting for the others, and the small operations between them overlap too. Results are
    the same either way (`BIGMODEL_EVAL_THREADS=1` turns it off).
    """
    from concurrent.futures import ThreadPoolExecutor

    import torch
    from tqdm.auto import tqdm

    from bigmodel_cli.kernels import classify_from_first_token

    classify_from_first_token(model)  # a BERT classifier's last layer for [CLS] only: the same logits
    model.eval()
    keys = [k for k in ("input_ids", "token_type_ids", "attention_mask") if k in features[0]]
    columns = read_columns(features, keys)
    order = sorted(range(len(features)), key=lambda i: len(columns["input_ids"][i]), reverse=True)
    rows = [{k: columns[k][i] for k in keys} for i in order]
    device = next(model.parameters()).device
    starts = range(0, len(order), batch_size)

    def run(start: int) -> np.ndarray:
        with torch.inference_mode():  # per thread: grad mode is thread-local
            batch = tokenizer.pad(rows[start : start + batch_size], return_tensors="pt")
            return model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu().numpy()

    out = np.empty((len(order), model.config.num_labels), dtype=np.float32)
    threads = eval_threads(device, len(starts))
    intra = torch.get_num_threads()
    # Each worker thread sets its own OpenMP count; MKL's is global, so it is restored after.
    pool = ThreadPoolExecutor(threads, initializer=torch.set_num_threads,
                              initargs=(max(intra // threads, 1),)) if threads > 1 else None
    bar = tqdm(total=len(starts), desc="evaluating", disable=not progress, unit="batch")
    try:
        for start, logits in zip(starts, (pool.map if pool else map)(run, starts)):
            out[start : start + len(logits)] = logits
            bar.update()
    finally:
        if pool:
            pool.shutdown()
            torch.set_num_threads(intra)
    bar.close()
    result = np.empty_like(out)
    result[order] = out
    return result


def read_columns(features, keys) -> dict[str, list]:
    """Columns of examples: a `datasets.Dataset`'s read at once (row by row took 0.1 s of a 3.5 s
    pass over MRPC's dev set), or a list of dicts' gathered."""
    if hasattr(features, "select_columns"):
        return features.select_columns(list(keys))[:]
    return {k: [row[k] for row in features] for k in keys}


def eval_threads(device, batches: int) -> int:
    """How many batches to run side by side: one per core on a CPU, one on an accelerator."""
    import os

    import torch

    if device.type != "cpu":
        return 1
    wanted = int(os.environ.get("BIGMODEL_EVAL_THREADS", torch.get_num_threads()))
    return max(1, min(wanted, batches))


def perplexity(loss: float) -> float:
    try:
        return math.exp(loss)
    except OverflowError:
        return float("inf")
