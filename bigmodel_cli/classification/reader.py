"""The one reader of labelled and unlabelled example files, and the one text-column detector.

Formats by suffix: CSV (quoted fields), TSV (GLUE's style: tabs, quotes are literal text), JSON (a
list of objects, or {"data": [...]}; JSON Lines under a .json name too) and JSON Lines. Every file
is read as UTF-8 (a BOM is skipped) and streamed where the format allows, so `bigmodel predict`
holds one chunk of a large file at a time. Problems are one line naming the file, the line and
what to do.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.files import check_text_file

FORMATS = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "jsonl"}
LABEL_COLUMNS = ("label", "labels", "Quality", "gold_label", "score", "is_duplicate")


def file_format(path: Path, what: str) -> str:
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise BigmodelError(f"{what} {path}: unknown format '{path.suffix}'; use .csv, .tsv, .json or .jsonl")
    return kind


def iter_rows(path: str | Path, what: str = "data file", kind: str | None = None,
              headerless: tuple[str, ...] = ()) -> Iterator[tuple[int, dict]]:
    """(line number, row) for each example of `path`; `what` names the file in errors (a flag or
    a recipe key). `kind` overrides the suffix's format; `headerless` names the columns of a TSV or
    CSV file that may come without a header line (GLUE's CoLA), recognised when its first line has
    that many fields and not the last name among them."""
    path = check_text_file(path, what)
    kind = kind or file_format(path, what)
    with path.open(encoding="utf-8-sig", newline="") as f:
        if kind in ("csv", "tsv"):
            yield from _delimited(f, path, what, kind, headerless)
            return
        if kind == "json" and f.read(1) in "[{":  # one JSON document; else JSON Lines under a .json name
            f.seek(0)
            try:
                loaded = json.load(f)
            except json.JSONDecodeError:
                loaded = None
            if isinstance(loaded, dict) and isinstance(loaded.get("data"), list):
                loaded = loaded["data"]
            if isinstance(loaded, list):
                for number, row in enumerate(loaded, start=1):
                    yield number, _object(row, path, what)
                return
        f.seek(0)
        for number, line in enumerate(f, start=1):
            if line.strip():
                try:
                    yield number, _object(json.loads(line), path, what)
                except json.JSONDecodeError as e:
                    raise BigmodelError(f"{what} {path} line {number}: not valid JSON ({e.msg})") from None


def _delimited(f, path: Path, what: str, kind: str, headerless: tuple[str, ...]) -> Iterator[tuple[int, dict]]:
    quoting = csv.QUOTE_NONE if kind == "tsv" else csv.QUOTE_MINIMAL
    reader = csv.reader(f, delimiter="\t" if kind == "tsv" else ",", quoting=quoting)
    first = next(reader, None)
    if first is None:
        return
    if headerless and headerless[-1] not in first and len(first) == len(headerless):
        header = list(headerless)
        yield 1, dict(zip(header, first))
    else:
        header = first
    for row in reader:
        if not row:
            continue
        if len(row) != len(header):
            raise BigmodelError(
                f"{what} {path} line {reader.line_num}: {len(row)} fields, the header has {len(header)} "
                "(a stray tab or comma, or a quoted field spanning lines?)"
            )
        yield reader.line_num, dict(zip(header, row))


def _object(row, path: Path, what: str) -> dict:
    if not isinstance(row, dict):
        raise BigmodelError(f"{what} {path}: expected a list of objects, one per example")
    return row


def read_rows(path: str | Path, what: str = "data file") -> list[dict]:
    """Every row of a file, which must hold at least one example."""
    rows = [row for _, row in iter_rows(path, what)]
    if not rows:
        raise BigmodelError(f"{what} {path}: needs a header line and at least one example")
    return rows


def is_number(value) -> bool:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return True
    try:
        float(str(value))
        return True
    except ValueError:
        return False


def detect_text_columns(sample: list[dict], exclude, count: int = 2) -> list[str]:
    """The columns that hold a model's input texts, found as run_glue.py finds them: `sentence1`
    (and `sentence2`), else the first `count` columns not in `exclude` (labels) whose sampled values
    are not all numbers (which skips ID columns)."""
    columns = [c for c in sample[0] if c not in exclude]
    if "sentence1" in columns:
        return ["sentence1", "sentence2"][: count if "sentence2" in columns else 1]
    return [c for c in columns if not all(is_number(row.get(c, "")) for row in sample)][:count]
