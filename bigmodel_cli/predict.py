"""`bigmodel predict`: label names (or scores) and probabilities from a saved classifier.

Files stream through in chunks: memory stays bounded whatever the file size. One JSON line per
example: its inputs, the predicted `label` name and `probabilities` per label (or `score` for
regression).
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.files import check_text_file
from bigmodel_cli.labelled import FORMATS

CHUNK = 2048  # examples tokenized and scored at a time


def iter_rows(path: Path) -> Iterator[dict]:
    """Rows of a CSV, TSV (GLUE-style), JSON Lines or JSON file, one at a time where the format allows."""
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise BigmodelError(f"--input-file {path}: unknown format '{path.suffix}'; use .csv, .tsv, .json or .jsonl")
    with path.open(encoding="utf-8-sig", newline="") as f:
        if kind in ("csv", "tsv"):
            quoting = csv.QUOTE_NONE if kind == "tsv" else csv.QUOTE_MINIMAL
            reader = csv.reader(f, delimiter="\t" if kind == "tsv" else ",", quoting=quoting)
            header = next(reader, None)
            for number, row in enumerate(reader, start=2):
                if not row:
                    continue
                if len(row) != len(header):
                    raise BigmodelError(f"--input-file {path} line {number}: {len(row)} fields, the header has {len(header)}")
                yield dict(zip(header, row))
        elif kind == "json" and f.read(1) == "[":
            f.seek(0)
            yield from json.load(f)
        else:
            f.seek(0)
            for number, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as e:
                        raise BigmodelError(f"--input-file {path} line {number}: not valid JSON ({e.msg})") from None


def text_columns(config, first: dict, path) -> list[str]:
    """The columns that hold the model's inputs: those it was trained on, else sentence1/2, else
    the first columns that are not all numbers and not a label."""
    from bigmodel_cli.labelled import LABEL_COLUMNS, _is_number

    wanted = list(getattr(config, "text_columns", None) or [])
    if wanted and all(c in first for c in wanted):
        return wanted
    count = len(wanted) or 2
    if "sentence1" in first:
        return ["sentence1", "sentence2"][: count if "sentence2" in first else 1]
    candidates = [c for c in first if c not in LABEL_COLUMNS and not _is_number(first[c])]
    if not candidates:
        raise BigmodelError(f"--input-file {path}: no text column found (have {', '.join(first)})")
    return candidates[:count]


def predict_rows(model, tokenizer, rows: list[dict], columns: list[str], batch_size: int) -> list[dict]:
    import numpy as np

    from bigmodel_cli.scoring import predict_logits

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


def run(model_dir: str, texts: list[str], input_file: str | None, output: str | None,
        batch_size: int, progress: bool) -> int:
    """Predict and write JSON lines to `output` (or stdout). Returns the number of examples."""
    from transformers import AutoModelForSequenceClassification

    from bigmodel_cli.models import load_tokenizer, model_error, resolve_model_path

    if bool(texts) == bool(input_file):
        raise BigmodelError("give either --text (and --text-pair) or --input-file")
    if output and Path(output).exists():
        raise BigmodelError(f"--output {output} already exists; choose another file (nothing was overwritten)")
    path = check_text_file(input_file, "--input-file") if input_file else None
    try:
        model = AutoModelForSequenceClassification.from_pretrained(resolve_model_path(model_dir), use_safetensors=True)
    except Exception as e:
        raise model_error(model_dir, e) from None
    tokenizer = load_tokenizer(model_dir)
    if texts:
        columns = ["sentence1", "sentence2"][: len(texts)]
        with _sink(output) as sink:
            for record in predict_rows(model, tokenizer, [dict(zip(columns, texts))], columns, batch_size):
                sink.write(json.dumps(record, ensure_ascii=False) + "\n")
        return 1
    return write_predictions(model, tokenizer, path, output, batch_size, progress)


def write_predictions(model, tokenizer, path: Path, output: str | None, batch_size: int, progress: bool) -> int:
    """Stream `path` through a loaded classifier, CHUNK examples at a time, into JSON lines at
    `output` (or stdout). Returns the number of examples."""
    from tqdm.auto import tqdm

    rows = iter_rows(Path(path))
    first = next(rows, None)
    if first is None:
        raise BigmodelError(f"--input-file {path} has no examples")
    columns = text_columns(model.config, first, path)
    count = 0
    with _sink(output) as sink, tqdm(desc="predicting", unit="ex", disable=not progress) as bar:
        chunk = [first]
        for row in rows:
            chunk.append(row)
            if len(chunk) == CHUNK:
                count += _flush(model, tokenizer, chunk, columns, batch_size, sink, bar)
                chunk = []
        count += _flush(model, tokenizer, chunk, columns, batch_size, sink, bar) if chunk else 0
    return count


@contextmanager
def _sink(output: str | None):
    """The output file (closed afterwards), or stdout (left open)."""
    if output is None:
        yield sys.stdout
        return
    with open(output, "w", encoding="utf-8") as f:
        yield f


def _flush(model, tokenizer, chunk, columns, batch_size, sink, bar) -> int:
    for record in predict_rows(model, tokenizer, chunk, columns, batch_size):
        sink.write(json.dumps(record, ensure_ascii=False) + "\n")
    bar.update(len(chunk))
    return len(chunk)
