"""Running a sequence classifier: logits in length-sorted batches, the task's scores, predictions.

`evaluate_classifier` is what finetune writes in `metrics.json` and what `bigmodel eval` prints, so
evaluating a finetune run reproduces its dev metrics. `write_predictions` streams a file through a
classifier into JSON lines, for `bigmodel predict` and finetune's `data.test_file`. Neither changes
the model it is given: the caller decides its kernels (`model.load_saved_classifier` folds a saved one).
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from bigmodel_cli.classification.metrics import score_logits, task_metrics
from bigmodel_cli.classification.reader import LABEL_COLUMNS, detect_text_columns, iter_rows
from bigmodel_cli.classification.tasks import Task
from bigmodel_cli.errors import BigmodelError

CHUNK = 2048  # examples tokenized and scored at a time when predicting a file

def predict_logits(model, tokenizer, features, batch_size: int = 32, progress: bool = False,
                   per_token: bool = False, bf16: bool = False) -> np.ndarray | list[np.ndarray]:
    """Logits for tokenized examples (dicts with `input_ids`, ...), in their original order: an
    array (examples, labels), or with `per_token` (a token classifier) one (tokens, labels) array
    per example. With `bf16`, under bfloat16 autocast (a run that trained in it is scored in it).

    Examples are sorted by length and cut into batches of at most `batch_size` that waste the
    fewest padded token slots (`length_batches`), padded in numpy (`pad_batch`), and run under
    `torch.inference_mode`. On a CPU with several cores, batches run side by side, one core
    each, rather than one at a time across all cores: each matrix product then runs on one core
    without waiting for the others, and the small operations between them overlap too. Results are
    the same either way (`BIGMODEL_EVAL_THREADS=1` turns it off).
    """
    from concurrent.futures import ThreadPoolExecutor

    import torch
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    keys = [k for k in ("input_ids", "token_type_ids", "attention_mask") if k in features[0]]
    columns = read_columns(features, keys)
    order = sorted(range(len(features)), key=lambda i: len(columns["input_ids"][i]), reverse=True)
    rows = [{k: columns[k][i] for k in keys} for i in order]
    device = next(model.parameters()).device
    spans = length_batches([len(row["input_ids"]) for row in rows], batch_size)

    left = tokenizer.padding_side == "left"

    def run(span: tuple[int, int]):
        # per thread: grad mode and autocast are thread-local
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            batch = pad_batch(rows[span[0] : span[1]], tokenizer)
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu().numpy()
        if not per_token:
            return logits
        sizes = [len(row["input_ids"]) for row in rows[span[0] : span[1]]]
        return [one[-n:] if left else one[:n] for one, n in zip(logits, sizes)]

    out = [None] * len(order) if per_token else np.empty((len(order), model.config.num_labels), dtype=np.float32)
    threads = eval_threads(device, len(spans))
    intra = torch.get_num_threads()
    # Each worker thread sets its own OpenMP count; MKL's is global, so it is restored after.
    pool = ThreadPoolExecutor(threads, initializer=torch.set_num_threads,
                              initargs=(max(intra // threads, 1),)) if threads > 1 else None
    bar = tqdm(total=len(order), desc="evaluating", disable=not progress, unit="example")
    try:
        for (start, end), logits in zip(spans, (pool.map if pool else map)(run, spans)):
            out[start:end] = logits
            bar.update(end - start)
    finally:
        if pool:
            pool.shutdown()
            torch.set_num_threads(intra)
        model.train(was_training)
    bar.close()
    if per_token:
        result = [None] * len(order)
        for place, original in enumerate(order):
            result[original] = out[place]
        return result
    result = np.empty_like(out)
    result[order] = out
    return result


def length_batches(lengths, most: int, per_batch: int = 64) -> list[tuple[int, int]]:
    """Cut examples sorted longest first into batches of consecutive examples: (start, end) spans of
    at most `most` examples. Each batch pads to its first member, so its cost is its size times
    that length in token slots, plus `per_batch` slots for what every batch costs regardless (the
    model's Python, small matrix products); the spans minimise the total (dynamic programming over
    the last cut). On MRPC's dev set, batches of 32 cut every 32 examples computed 4.4 % padding,
    these 1.7 %."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) and np.any(lengths[1:] > lengths[:-1]):
        raise ValueError("length_batches needs lengths sorted longest first")
    n = len(lengths)
    best, cut = np.zeros(n + 1), np.zeros(n + 1, dtype=np.int64)
    for end in range(1, n + 1):
        starts = np.arange(max(0, end - most), end)
        costs = best[starts] + (end - starts) * lengths[starts] + per_batch
        pick = int(costs.argmin())  # ties: the first, i.e. the largest batch
        best[end], cut[end] = costs[pick], starts[pick]
    spans, end = [], n
    while end:
        spans.append((int(cut[end]), end))
        end = int(cut[end])
    return spans[::-1]


def pad_batch(rows, tokenizer) -> dict:
    """`tokenizer.pad(rows, return_tensors="pt")` for rows of token-id lists, filled in numpy (the
    tokenizer's own took 58 ms of a 3.4 s pass over MRPC's dev set, holding the GIL): the
    tokenizer's pad id and side, and an attention mask if the model takes one."""
    import torch

    if tokenizer.pad_token_id is None:  # let the tokenizer say what is missing
        return tokenizer.pad(rows, return_tensors="pt")
    lengths = [len(row["input_ids"]) for row in rows]
    longest, left = max(lengths), tokenizer.padding_side == "left"
    fill = {"input_ids": tokenizer.pad_token_id, "token_type_ids": tokenizer.pad_token_type_id}
    keys = list(rows[0])
    if "attention_mask" not in keys and "attention_mask" in tokenizer.model_input_names:
        keys.append("attention_mask")
    batch = {}
    for key in keys:
        array = np.full((len(rows), longest), fill.get(key, 0), dtype=np.int64)
        for i, (row, n) in enumerate(zip(rows, lengths)):
            span = slice(longest - n, None) if left else slice(None, n)
            array[i, span] = row[key] if key in row else 1  # a missing attention mask: all real tokens
        batch[key] = torch.from_numpy(array)
    return batch


def read_columns(features, keys) -> dict[str, list]:
    """Columns of examples: a `datasets.Dataset`'s read at once (row by row took 0.1 s of a 3.5 s
    pass over MRPC's dev set), or a list of dicts' gathered."""
    if hasattr(features, "select_columns"):
        return features.select_columns(list(keys))[:]
    return {k: [row[k] for row in features] for k in keys}


def as_rows(columns: dict[str, list]) -> list[dict]:
    """Columns -> one dict per example, the form `predict_logits` takes a list in."""
    return [dict(zip(columns, values)) for values in zip(*columns.values())]


def eval_threads(device, batches: int) -> int:
    """How many batches to run side by side: one per core on a CPU, one on an accelerator."""
    import os

    import torch

    if device.type != "cpu":
        return 1
    wanted = int(os.environ.get("BIGMODEL_EVAL_THREADS", torch.get_num_threads()))
    return max(1, min(wanted, batches))


def spread_logits(model, tokenizer, features, batch_size: int = 32, progress: bool = False,
                  per_token: bool = False, bf16: bool = False) -> tuple[np.ndarray | list[np.ndarray], int]:
    """`predict_logits` with the examples dealt out over a launch's processes (every `world_size`-th
    to each), gathered back in order on every process; and how many examples the processes scored
    together. The model must run alone in each process: DDP's inference needs no collective, FSDP's does."""
    from bigmodel_cli.processes import gathered, rank, world_size

    processes = world_size()
    if processes == 1:
        return predict_logits(model, tokenizer, features, batch_size, progress, per_token, bf16), len(features)
    mine = list(range(rank(), len(features), processes))
    empty = [] if per_token else np.empty((0, model.config.num_labels), dtype=np.float32)
    part = (predict_logits(model, tokenizer, features.select(mine) if hasattr(features, "select") else
                           [features[i] for i in mine], batch_size, progress and rank() == 0, per_token, bf16)
            if mine else empty)
    parts = gathered(part)
    logits = [None] * len(features) if per_token else np.empty((len(features), model.config.num_labels), dtype=np.float32)
    for r, share in enumerate(parts):
        logits[r::processes] = share
    return logits, sum(len(share) for share in parts)


def evaluate_classifier(model, tokenizer, features, task: Task, batch_size: int = 128,
                        progress: bool = False, spread: bool = False) -> dict[str, float]:
    """`eval_loss`, the task's metrics and (classes) the confusion matrix of tokenized examples; with
    `spread`, the examples shared out over a launch's processes (`spread_logits`)."""
    if spread:
        logits, _ = spread_logits(model, tokenizer, features, batch_size, progress)
    else:
        logits = predict_logits(model, tokenizer, features, batch_size, progress)
    return classifier_scores(logits, features, task)


def classifier_scores(logits: np.ndarray, features, task: Task) -> dict:
    """`eval_loss`, the task's metrics and (classes) the confusion matrix of `logits` against the
    examples' labels."""
    labels = np.asarray(read_columns(features, ["label"])["label"])
    scores = {f"eval_{k}": v for k, v in score_logits(logits, labels, task.metrics, task.is_regression).items()}
    if not task.is_regression:  # rows: true label, columns: predicted
        n = len(task.label_names)
        matrix = np.zeros((n, n), dtype=int)
        np.add.at(matrix, (labels.astype(int), logits.argmax(axis=-1)), 1)
        scores["eval_confusion_matrix"] = matrix.tolist()
        scores["eval_label_names"] = list(task.label_names)
    return scores


def trainer_metrics(task: Task):
    """Trainer's `compute_metrics` for the task: the per-epoch evaluations that pick the best epoch."""

    def compute(prediction):
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        predictions = logits.reshape(-1) if task.is_regression else np.argmax(logits, axis=-1)
        scores = task_metrics(task.metrics, predictions, prediction.label_ids)
        scores["examples"] = len(prediction.label_ids)  # gathered from every process, each example once
        return scores

    return compute


def input_columns(config, first: dict, path) -> list[str]:
    """The columns of a file to predict that hold the model's inputs: those it was trained on,
    else as `reader.detect_text_columns` finds them."""
    wanted = list(getattr(config, "text_columns", None) or [])
    if wanted and all(c in first for c in wanted):
        return wanted
    found = detect_text_columns([first], exclude=LABEL_COLUMNS, count=len(wanted) or 2)
    if not found:
        raise BigmodelError(f"--input-file {path}: no text column found (have {', '.join(first)})")
    return found


def predict_rows(model, tokenizer, rows: list[dict], columns: list[str], batch_size: int) -> list[dict]:
    """One record per row: its inputs, the predicted `label` and `probabilities` (or `score`)."""
    texts = [[str(r.get(c, "")) for r in rows] for c in columns]
    encoded = tokenizer(*texts, truncation=True)
    features = [{k: encoded[k][i] for k in encoded} for i in range(len(rows))]
    logits = predict_logits(model, tokenizer, features, batch_size)
    out = []
    regression = model.config.problem_type == "regression"
    for i, row in enumerate(rows):
        record = {c: row.get(c) for c in columns}
        if regression:
            record["score"] = float(logits[i][0])
        else:
            z = logits[i] - logits[i].max()
            p = np.exp(z) / np.exp(z).sum()
            record["label"] = model.config.id2label[int(p.argmax())]
            record["probabilities"] = {model.config.id2label[j]: round(float(v), 6) for j, v in enumerate(p)}
        out.append(record)
    return out


def write_predictions(model, tokenizer, path: Path, output: str | None, batch_size: int, progress: bool) -> int:
    """Stream `path` through a loaded classifier, CHUNK examples at a time, into JSON lines at
    `output` (or stdout). Returns the number of examples."""
    from tqdm.auto import tqdm

    rows = (row for _, row in iter_rows(Path(path), "--input-file"))
    first = next(rows, None)
    if first is None:
        raise BigmodelError(f"--input-file {path} has no examples")
    columns = input_columns(model.config, first, path)
    count = 0
    with sink(output) as out, tqdm(desc="predicting", unit="ex", disable=not progress) as bar:
        chunk = [first]
        for row in rows:
            chunk.append(row)
            if len(chunk) == CHUNK:
                count += _flush(model, tokenizer, chunk, columns, batch_size, out, bar)
                chunk = []
        count += _flush(model, tokenizer, chunk, columns, batch_size, out, bar) if chunk else 0
    return count


@contextmanager
def sink(output: str | None):
    """The output file (closed afterwards), or stdout (left open). The file is written beside it under
    a hidden name and renamed when complete: a crash leaves no partial file that blocks the rerun."""
    if output is None:
        yield sys.stdout
        return
    import os

    partial = Path(output).with_name(f".{Path(output).name}.partial")
    try:
        with open(partial, "w", encoding="utf-8") as f:
            yield f
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)


def _flush(model, tokenizer, chunk, columns, batch_size, out, bar) -> int:
    for record in predict_rows(model, tokenizer, chunk, columns, batch_size):
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
    bar.update(len(chunk))
    return len(chunk)
