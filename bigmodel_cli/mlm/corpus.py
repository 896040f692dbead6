"""The pretraining corpus as people have it: files, globs, compressed text, JSON Lines, or a hub data set.

- `data.train_files` / `data.eval_files`: paths or glob patterns (`corpus/*.txt`, `**/*.txt.gz`), in
  sorted order. Plain text is one example per line; `.gz` and `.zst` are read decompressed; `.jsonl`
  (`.json`, `.ndjson`, compressed too) holds one JSON object per line whose `data.text_column` is the text.
- A file that holds nothing but whitespace is skipped and said, unless every file is blank.
- Text is read in `data.encoding` (UTF-8). A byte that does not decode stops the run with one line that
  names the file and the offset of the byte.
- Blank and whitespace-only lines are dropped; a line longer than `MAX_LINE_CHARS` reaches the tokenizer in
  pieces cut at whitespace (`pieces`), so a file that is one 50 MB line is tokenized, not a crash.

Nothing here holds the corpus in Python objects: `datasets` writes it to Arrow files and every later step
reads them batch by batch.
"""

from __future__ import annotations

import codecs
import glob
import gzip
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.recipe import PretrainRecipe
from bigmodel_cli.seeds import derive_seed

if TYPE_CHECKING:
    import numpy as np

COMPRESSED = (".gz", ".zst", ".zstd")
JSON_LINES = (".jsonl", ".json", ".ndjson")
MAX_LINE_CHARS = 100_000  # longer lines reach the tokenizer in pieces of at most this many characters
CHUNK_BYTES = 1 << 20


@dataclass
class Corpus:
    """The training and held-out lines (a DatasetDict of `text`), the files they came from (by split;
    empty for a hub data set), and what the run header says of them (skipped files)."""

    raw: object
    files: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    make_stream: object = None  # a streamed corpus (`stream_corpus`): the training stream, made anew
    documents: dict | None = None  # mlm+nsp: each split's lines' document numbers (`pairs.document_splits`)

    @property
    def streamed(self) -> bool:
        return self.make_stream is not None


def expand(patterns: list[str], key: str) -> list[str]:
    """Each path as given, each glob pattern as the files it matches (sorted); a missing path or a
    pattern that matches nothing is an error naming it."""
    files: list[str] = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            matched = sorted(p for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
            if not matched:
                raise BigmodelError(f"{key}: '{pattern}' matches no file (relative paths start at {Path.cwd()})")
            files.extend(matched)
        else:
            path = Path(pattern)
            if not path.exists():
                raise BigmodelError(f"{key}: {pattern} not found; check the path (relative paths start at {Path.cwd()})")
            if not path.is_file():
                raise BigmodelError(f"{key}: {pattern} is a folder; give its files, e.g. {pattern.rstrip('/')}/*.txt")
            files.append(pattern)
    return files


def is_json_lines(path: str) -> bool:
    name = path.lower()
    for suffix in COMPRESSED:
        name = name.removesuffix(suffix)
    return name.endswith(JSON_LINES)


def open_bytes(path: str):
    """The file's bytes, decompressed where its name says `.gz` or `.zst`."""
    lower = path.lower()
    if lower.endswith(".gz"):
        return gzip.open(path, "rb")
    if lower.endswith((".zst", ".zstd")):
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)
    return open(path, "rb")


def read_error(path: str, key: str, error: Exception) -> BigmodelError:
    return BigmodelError(f"{key}: {path} cannot be read ({type(error).__name__}: {error})")


def is_blank(path: str, key: str) -> bool:
    """Whether the file holds nothing but whitespace (read only as far as its first other byte)."""
    try:
        with open_bytes(path) as f:
            while chunk := f.read(CHUNK_BYTES):
                if chunk.strip():
                    return False
    except (OSError, EOFError, ValueError) as e:
        raise read_error(path, key, e) from None
    return True


def first_bad_byte(path: str, encoding: str) -> int | None:
    """The offset (in the decompressed text) of the first byte that `encoding` cannot decode, or None."""
    decoder = codecs.getincrementaldecoder(encoding)()
    offset = 0
    with open_bytes(path) as f:
        while True:
            chunk = f.read(CHUNK_BYTES)
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as e:
                return offset + e.start - len(decoder.getstate()[0])
            if not chunk:
                return None
            offset += len(chunk)


def check_binary(path: str, key: str) -> None:
    with open_bytes(path) as f:
        if b"\x00" in f.read(CHUNK_BYTES):
            raise BigmodelError(f"{key}: {path} is binary, not text; give text files (plain, .gz, .zst or .jsonl)")


def check_text_column(path: str, column: str, key: str) -> None:
    """The first object of a JSON Lines file has `column`, or one line says which keys it has."""
    with open_bytes(path) as f:
        first = next((line for line in f if line.strip()), b"")
    try:
        obj = json.loads(first)
    except ValueError:
        raise BigmodelError(f"{key}: {path} is not JSON Lines (its first line is not a JSON object); "
                            "give one object per line, or name it .txt for plain text") from None
    if not isinstance(obj, dict) or column not in obj:
        keys = ", ".join(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
        raise BigmodelError(f"data.text_column '{column}' is not in {path} (it has: {keys}); "
                            "set data.text_column to the key that holds the text")


def usable_files(files: list[str], key: str, recipe: PretrainRecipe) -> tuple[list[str], list[str]]:
    """The files of one split that hold text, checked, and the blank ones (skipped)."""
    kept, blank = [], []
    compressed = [f for f in files if f.lower().endswith(COMPRESSED)]
    if compressed and codecs.lookup(recipe.data.encoding).name != "utf-8":
        raise BigmodelError(f"{key}: {compressed[0]} is compressed and data.encoding is {recipe.data.encoding}: compressed "
                            "files are read as UTF-8; convert it (e.g. zcat F | iconv -f LATIN1 -t UTF-8 | gzip)")
    for path in files:
        if is_blank(path, key):
            blank.append(path)
            continue
        check_binary(path, key)
        if is_json_lines(path):
            check_text_column(path, recipe.data.text_column, key)
        kept.append(path)
    if not kept:
        raise BigmodelError(f"{key}: {', '.join(files)} {'is' if len(files) == 1 else 'are'} empty; give files with text")
    return kept, blank


def load_split(files: list[str], key: str, recipe: PretrainRecipe):
    """One split's files as a Dataset of `text` (text files and JSON Lines files each by their builder,
    concatenated in the order given)."""
    from datasets import concatenate_datasets, load_dataset

    data = recipe.data
    parts, run = [], []

    def flush():
        if not run:
            return
        json_lines = is_json_lines(run[0])
        try:
            if json_lines:
                part = load_dataset("json", data_files={"train": list(run)}, split="train", encoding=data.encoding)
                part = part.select_columns([data.text_column])
                if data.text_column != "text":
                    part = part.rename_column(data.text_column, "text")
                if getattr(part.features["text"], "dtype", None) not in ("string", "large_string"):
                    raise BigmodelError(f"data.text_column '{data.text_column}' of {run[0]} holds "
                                        f"{part.features['text']}, not text; name the key that holds the text")
            else:
                part = load_dataset("text", data_files={"train": list(run)}, split="train", encoding=data.encoding)
        except BigmodelError:
            raise
        except Exception as e:  # datasets wraps what went wrong: find the file and byte ourselves
            raise undecodable(list(run), key, data.encoding) or read_error(", ".join(run), key, e.__cause__ or e) from None
        parts.append(part)
        run.clear()

    for path in files:  # runs of one kind, in order
        if run and is_json_lines(path) != is_json_lines(run[0]):
            flush()
        run.append(path)
    flush()
    return parts[0] if len(parts) == 1 else concatenate_datasets(parts)


def undecodable(files: list[str], key: str, encoding: str) -> BigmodelError | None:
    for path in files:
        try:
            offset = first_bad_byte(path, encoding)
        except (OSError, EOFError, LookupError):
            continue
        if offset is not None:
            where = " (decompressed)" if path.lower().endswith(COMPRESSED) else ""
            return BigmodelError(
                f"{key}: {path} is not {encoding.upper()} at byte {offset}{where}; "
                "convert it (iconv -f LATIN1 -t UTF-8) or set data.encoding to its encoding")
    return None


def load_corpus(recipe: PretrainRecipe) -> Corpus:
    """Train and held-out lines; blank and whitespace-only lines dropped, blank files skipped and said."""
    from datasets import DatasetDict, load_dataset

    data = recipe.data
    files: dict[str, list[str]] = {}
    notes: list[str] = []
    if data.train_files:
        raw = DatasetDict()
        for split, key, patterns in (("train", "data.train_files", data.train_files),
                                     ("validation", "data.eval_files", data.eval_files)):
            if not patterns:
                continue
            kept, blank = usable_files(expand(patterns, key), key, recipe)
            if blank:
                notes.append(f"skipped {len(blank)} blank file{'s' if len(blank) > 1 else ''} of {key}: "
                             + ", ".join(Path(b).name for b in blank[:3]) + (" ..." if len(blank) > 3 else ""))
            files[split] = kept
            raw[split] = load_split(kept, key, recipe)
    else:
        try:
            raw = load_dataset(data.dataset_name, data.dataset_config_name)
        except Exception as e:  # connection, offline mode, unknown name: all say the same to a user
            raise BigmodelError(
                f"data.dataset_name '{data.dataset_name}' could not be loaded ({type(e).__name__}); "
                "offline, give local text files: --train-file FILE, or data.train_files"
            ) from None
        if data.text_column not in raw["train"].column_names:
            raise BigmodelError(f"data.text_column '{data.text_column}' is not a column of {data.dataset_name} "
                                f"(it has: {', '.join(raw['train'].column_names)}); set data.text_column")
        raw = raw.select_columns([data.text_column])
        if data.text_column != "text":
            raw = raw.rename_column(data.text_column, "text")
    if recipe.model.objective == "mlm+nsp":  # documents, whose consecutive lines make the sentence pairs
        lines, documents = document_splits(raw, recipe)
        return Corpus(DatasetDict(lines), files, notes, documents=documents)
    raw = DatasetDict({split: non_blank(lines) for split, lines in raw.items()})
    if len(raw["train"]) == 0:
        raise BigmodelError("the training corpus has no non-blank lines; check data.train_files")
    if "validation" not in raw:
        split = raw["train"].train_test_split(
            test_size=data.validation_split_percentage / 100, seed=derive_seed(recipe.training.seed, "split")
        )
        raw["train"], raw["validation"] = split["train"], split["test"]
    if data.max_train_samples:
        raw["train"] = raw["train"].select(range(min(data.max_train_samples, len(raw["train"]))))
    if data.max_eval_samples:
        raw["validation"] = raw["validation"].select(range(min(data.max_eval_samples, len(raw["validation"]))))
    if len(raw["validation"]) == 0:
        raise BigmodelError("no held-out lines; raise data.validation_split_percentage or give data.eval_files")
    return Corpus(raw, files, notes)


def pieces(text: str, limit: int = MAX_LINE_CHARS) -> list[str]:
    """A line cut into pieces of at most `limit` characters, at the last whitespace before each cut
    where there is one (a line within the limit is itself)."""
    if len(text) <= limit:
        return [text]
    out, start = [], 0
    while len(text) - start > limit:
        cut = max(text.rfind(" ", start, start + limit), text.rfind("\n", start, start + limit))
        cut = cut + 1 if cut > start else start + limit
        out.append(text[start:cut])
        start = cut
    out.append(text[start:])
    return out


def bounded(texts: list[str]) -> list[str]:
    """A batch of lines with every over-long line in `pieces`."""
    if all(len(t) <= MAX_LINE_CHARS for t in texts):
        return texts
    return [p for t in texts for p in pieces(t)]



SAME_ROWS = {"replace_schema_metadata", "select", "drop", "cast"}  # table operations that keep a file's rows


def file_window(part) -> tuple[int, int | None] | None:
    """The rows [start, stop) of its Arrow file that a memory-mapped table holds (stop None: to the end),
    from its recorded operations; None where one of them changes more than which rows (a renamed column)."""
    start, stop = 0, None
    for name, args, kwargs in part.replays or ():
        if name == "slice":
            offset = args[0] if args else kwargs.get("offset", 0)
            length = args[1] if len(args) > 1 else kwargs.get("length")
            start += offset
            if length is not None:
                stop = start + length if stop is None else min(stop, start + length)
        elif name not in SAME_ROWS:
            return None
    return start, stop


def file_order_columns(dataset):
    """The `text` of a data set's rows as Arrow arrays, one per record batch, read in the order of its Arrow
    files with plain reads (not memory-mapped), keeping the rows its selection holds; None where the data
    set is not rows of Arrow files with a `text` column (the caller then reads it as datasets does).

    For work that does not depend on the order of the lines (dropping blank lines, tokenizer training's word
    counts): a data set read through its memory map, a shuffled selection most of all, leaves every page of
    the text it touched in the process's resident memory, the size of the corpus. Read here, a process
    holds one record batch at a time."""
    import numpy as np
    import pyarrow as pa
    from datasets.table import ConcatenationTable, MemoryMappedTable

    table = getattr(dataset, "data", None)  # an IterableDataset (a stream) has none: read as it is
    if isinstance(table, MemoryMappedTable):
        parts = [table]
    elif isinstance(table, ConcatenationTable) and all(len(row) == 1 for row in table.blocks):
        parts = [row[0] for row in table.blocks]
    else:
        return None
    if not all(isinstance(p, MemoryMappedTable) and "text" in p.column_names for p in parts):
        return None
    windows = [file_window(p) for p in parts]
    if any(w is None for w in windows):
        return None
    keep = None
    if dataset._indices is not None:
        keep = np.zeros(table.num_rows, dtype=bool)
        keep[dataset._indices.column(0).to_numpy()] = True

    def columns():
        offset = 0  # rows of the table before this batch's
        for part, (start, stop) in zip(parts, windows):
            at, read = 0, 0  # the file's rows before this batch; the part's rows read
            with pa.OSFile(part.path) as source:
                for record in pa.ipc.open_stream(source):
                    first, last = max(start, at), record.num_rows + at if stop is None else min(stop, record.num_rows + at)
                    at += record.num_rows
                    if last <= first:
                        if stop is not None and at >= stop:
                            break
                        continue
                    column = record.column("text").slice(first - (at - record.num_rows), last - first)
                    if keep is not None:
                        column = column.filter(pa.array(keep[offset + read:offset + read + len(column)]))
                    read += last - first
                    yield column
            if read != part.num_rows:  # the files are not the table's rows: never read the wrong lines
                raise RuntimeError(f"read {read} rows of {part.path} for a table of {part.num_rows}")
            offset += part.num_rows

    return columns()


def file_order_batches(dataset, batch_size: int):
    """`file_order_columns` as lists of at most `batch_size` lines (None where it is None)."""
    columns = file_order_columns(dataset)
    if columns is None:
        return None
    return (column.slice(start, batch_size).to_pylist() for column in columns
            for start in range(0, len(column), batch_size))


def non_blank(dataset):
    """The data set without its blank and whitespace-only lines: its lines read in file order
    (`file_order_batches`, no memory map), the rest selected by index; datasets' filter where they cannot."""
    import numpy as np

    batches = file_order_batches(dataset, 10_000) if dataset._indices is None else None
    if batches is None:
        return dataset.filter(lambda batch: [bool(t and t.strip()) for t in batch["text"]], batched=True,
                              desc="dropping blank lines")
    keep = np.concatenate([np.fromiter((bool(t and t.strip()) for t in batch), dtype=bool, count=len(batch))
                           for batch in batches] or [np.zeros(0, dtype=bool)])
    return dataset if keep.all() else dataset.select(np.flatnonzero(keep))


def line_documents(lines, separator: str | None) -> tuple[np.ndarray, np.ndarray]:
    """(the rows of `lines` that are text, their document numbers): blank lines end a document, or, with
    `separator` (a regular expression), the lines it matches whole (stripped), blank lines then skipped."""
    import numpy as np

    pattern = re.compile(separator) if separator else None
    batches = file_order_batches(lines, 10_000) if lines._indices is None else None
    if batches is None:
        batches = (batch["text"] for batch in lines.iter(batch_size=10_000))
    rows, documents, document, row = [], [], 0, 0
    for batch in batches:
        for text in batch:
            stripped = (text or "").strip()
            if (not stripped) if pattern is None else (stripped and pattern.fullmatch(stripped)):
                document += 1
            elif stripped:
                rows.append(row)
                documents.append(document)
            row += 1
    return np.asarray(rows, dtype=np.int64), np.asarray(documents, dtype=np.int64)


def document_splits(raw: dict, recipe) -> tuple[dict, dict]:
    """The training and held-out lines (text only, in file order) and their documents' numbers: held-out
    documents from `data.eval_files`, else `validation_split_percentage` of the training file's documents.
    `model.objective: mlm+nsp` reads its corpus so: consecutive lines of a document make its sentence pairs."""
    import numpy as np

    data, seed = recipe.data, recipe.training.seed
    lines, documents = {}, {}
    for split in raw:
        rows, documents[split] = line_documents(raw[split], data.document_separator)
        lines[split] = raw[split].select(rows)
    if "validation" not in raw:
        names = np.unique(documents["train"])
        if len(names) < 3:
            raise BigmodelError(
                f"model.objective mlm+nsp: the corpus holds {len(names)} document{'s' if len(names) != 1 else ''}; "
                "held-out pairs and random next sentences need at least 3 (blank lines end a document, or set "
                "data.document_separator)")
        held = max(1, round(len(names) * data.validation_split_percentage / 100))
        chosen = np.random.default_rng(derive_seed(seed, "split")).choice(names, held, replace=False)
        out = np.isin(documents["train"], chosen)
        lines["validation"] = lines["train"].select(np.flatnonzero(out))
        lines["train"] = lines["train"].select(np.flatnonzero(~out))
        documents["validation"], documents["train"] = documents["train"][out], documents["train"][~out]
    for split, limit in (("train", data.max_train_samples), ("validation", data.max_eval_samples)):
        if limit and limit < len(lines[split]):
            lines[split], documents[split] = lines[split].select(range(limit)), documents[split][:limit]
        if not (documents[split][1:] == documents[split][:-1]).any() or len(np.unique(documents[split])) < 2:
            key = "data.eval_files" if split == "validation" and data.eval_files else "the corpus"
            raise BigmodelError(
                f"model.objective mlm+nsp: {key} has no two documents with a pair of consecutive lines in its "
                f"{'held-out' if split == 'validation' else 'training'} part; sentence pairs come from consecutive "
                "lines of a document (blank lines end one, or set data.document_separator)")
    return lines, documents

STREAM_HELD_OUT_LINES = 1000  # held out from the stream's start when no data.eval_files are given
STREAM_TOKENIZER_LINES = 1_000_000  # a streamed corpus trains its tokenizer on this many of its first lines


def stream_corpus(recipe: PretrainRecipe) -> Corpus:
    """`data.streaming`: the training lines as a stream (`datasets`' IterableDataset, read as it is
    consumed, never written to disk) and the held-out lines in memory: `data.eval_files`, else the
    stream's first `data.max_eval_samples` (1000) lines, which training then skips. `corpus.make_stream()`
    gives the training stream anew, for each pass."""
    from datasets import Dataset, load_dataset

    data = recipe.data
    files: dict[str, list[str]] = {}
    notes: list[str] = ["lines streamed"]
    if data.train_files:
        kept, blank = usable_files(expand(data.train_files, "data.train_files"), "data.train_files", recipe)
        if blank:
            notes.append(f"skipped {len(blank)} blank file{'s' if len(blank) > 1 else ''} of data.train_files")
        if any(is_json_lines(f) for f in kept) and not all(is_json_lines(f) for f in kept):
            raise BigmodelError("data.train_files: a stream reads one kind of file; give text files or JSON Lines files, "
                                "not both (or set data.streaming=false)")
        files["train"] = kept
        builder = "json" if is_json_lines(kept[0]) else "text"

        def open_stream():
            return load_dataset(builder, data_files={"train": kept}, split="train", streaming=True, encoding=data.encoding)
    else:
        def open_stream():
            try:
                return load_dataset(data.dataset_name, data.dataset_config_name, split="train", streaming=True)
            except Exception as e:
                raise BigmodelError(f"data.dataset_name '{data.dataset_name}' could not be streamed ({type(e).__name__}); "
                                    "offline, give local text files: --train-file FILE, or data.train_files") from None

    def lines():
        stream = open_stream()
        if data.text_column not in (stream.column_names or [data.text_column]):
            raise BigmodelError(f"data.text_column '{data.text_column}' is not a column of the stream "
                                f"(it has: {', '.join(stream.column_names)}); set data.text_column")
        stream = stream.select_columns([data.text_column])
        if data.text_column != "text":
            stream = stream.rename_column(data.text_column, "text")
        return stream.filter(lambda batch: [bool(t and t.strip()) for t in batch["text"]], batched=True)

    held_out_count = 0
    if data.eval_files:
        kept, _ = usable_files(expand(data.eval_files, "data.eval_files"), "data.eval_files", recipe)
        files["validation"] = kept
        held_out = load_split(kept, "data.eval_files", recipe).filter(
            lambda batch: [bool(t and t.strip()) for t in batch["text"]], batched=True)
        if data.max_eval_samples:
            held_out = held_out.select(range(min(data.max_eval_samples, len(held_out))))
    else:
        held_out_count = data.max_eval_samples or STREAM_HELD_OUT_LINES
        held_out = Dataset.from_dict({"text": [row["text"] for row in lines().take(held_out_count)]})
        if len(held_out) < held_out_count:
            raise BigmodelError(f"data.streaming: the stream's first {held_out_count} lines are held out and it has only "
                                f"{len(held_out)}, none left to train on; give data.eval_files or a smaller data.max_eval_samples")
    if len(held_out) == 0:
        raise BigmodelError("no held-out lines; give data.eval_files")

    def make_stream():
        stream = lines().skip(held_out_count) if held_out_count else lines()
        return stream.take(data.max_train_samples) if data.max_train_samples else stream

    corpus = Corpus({"train": make_stream(), "validation": held_out}, files, notes)
    corpus.make_stream = make_stream
    return corpus
