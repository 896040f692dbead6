"""Lines to training rows: one example per line, long lines split, lines packed into rows.

- `tokenize_lines`: one example per line; a line longer than `max_seq_length` is split into
  several examples rather than truncated (truncation dropped ~29 % of WikiText's tokens).
- `pack`: several lines share one sequence; the collator gives each its own block of the attention
  mask and its own positions, so every line still sees only itself (exact, no cross-talk).
- `tokenize_corpus`: both, once per corpus and settings: the rows are written with Arrow and numpy
  (no token id becomes a Python object), cached on disk and memory-mapped by every later run.
"""

from __future__ import annotations

import bisect
import hashlib
import os
from pathlib import Path

import numpy as np

from bigmodel_cli.memory import MappedPages
from bigmodel_cli.mlm import cache
from bigmodel_cli.mlm.corpus import Corpus, bounded
from bigmodel_cli.recipe import PretrainRecipe


def chunk_line(ids: list[int], max_content: int) -> list[list[int]]:
    """Split one line's token ids into pieces of at most `max_content` tokens (none dropped)."""
    return [ids[i : i + max_content] for i in range(0, len(ids), max_content)] or [[]]


def tokenize_lines(dataset, tokenizer, max_seq_length: int, num_proc: int | None = None):
    """`text` lines -> examples with `input_ids` ([CLS] piece [SEP], at most max_seq_length) and a
    unique `example_id` that seeds the example's masks."""
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    # Each worker reads its part of the (shuffled) lines through the map, each line mapping the 64 KB
    # around it: handed back every batch, a worker holds one batch's pages (~80 MB), not its share of the text.
    read = MappedPages(every=1, random=True)

    def encode(batch):
        read()
        pieces = []
        for ids in tokenizer(bounded(batch["text"]), add_special_tokens=False)["input_ids"]:
            pieces.extend([cls_id, *piece, sep_id] for piece in chunk_line(ids, max_seq_length - 2))
        return {"input_ids": pieces}

    from datasets import Features, List, Value

    data = dataset.map(  # int32 ids: half the disk and memory of Python's int64
        encode, batched=True, remove_columns=dataset.column_names, num_proc=num_proc, desc="tokenizing",
        features=Features({"input_ids": List(Value("int32"))}),
    )
    return data.add_column("example_id", np.arange(len(data), dtype=np.int64))


def pack(lengths, capacity: int) -> list[list[int]]:
    """Best-fit-decreasing bin packing: indices of examples grouped so that each group's lengths
    sum to at most `capacity`. Deterministic: the longest example first (ties: the first), each into
    the bin with the least space that holds it (ties: the oldest bin)."""
    order, sizes = pack_order(np.asarray(lengths, dtype=np.int64), capacity)
    members = order.tolist()
    starts = np.concatenate([[0], np.cumsum(sizes)]).tolist()
    return [members[a:b] for a, b in zip(starts[:-1], starts[1:])]


def pack_order(lengths: np.ndarray, capacity: int) -> tuple[np.ndarray, np.ndarray]:
    """`pack`'s bins as two arrays: every example index, bin by bin (each bin's in the order placed),
    and each bin's size. The loop holds only integers: bins waiting for more are kept per space left
    (a heap of bin numbers for each space, and the sorted spaces that have any), so each example
    costs a bisect over at most `capacity` spaces and a heap operation."""
    import heapq

    order = np.lexsort((np.arange(len(lengths)), -lengths))  # longest first, ties by index
    waiting: dict[int, list[int]] = {}  # space left -> heap of bin numbers with that space
    spaces: list[int] = []  # the spaces that have a waiting bin, sorted
    bin_of = np.empty(len(lengths), dtype=np.int64)
    bins = 0
    for i, n in zip(order.tolist(), lengths[order].tolist()):
        at = bisect.bisect_left(spaces, n)
        if at < len(spaces):
            space = spaces[at]
            heap = waiting[space]
            b = heapq.heappop(heap)
            if not heap:
                spaces.pop(at)
                del waiting[space]
        else:
            b, space, bins = bins, capacity, bins + 1
        bin_of[i] = b
        left = space - n
        if left > 0:
            if left not in waiting:
                waiting[left] = []
                bisect.insort(spaces, left)
            heapq.heappush(waiting[left], b)
    placed = np.argsort(bin_of[order], kind="stable")  # bin by bin, each in the order its examples came
    return order[placed], np.bincount(bin_of, minlength=bins)


SHARD_EXAMPLES = 100_000  # examples packed at a time: memory stays flat however long the corpus (~50 MB of ids)


def packed_dataset(examples, max_seq_length: int, packing: bool, path: Path | None = None):
    """Rows of one or more examples: `input_ids` (concatenated), `lengths` and `example_ids`, in the
    corpus order of each row's first example (the sampler shuffles). Built with Arrow and numpy shard
    by shard (no token id becomes a Python object) and written to `path`, from which the rows are
    memory-mapped (in memory when `path` is None: a held-out file scored once)."""
    import pyarrow as pa
    from datasets import Dataset
    from datasets.table import InMemoryTable

    if examples._indices is not None:  # a selection: its rows in order, as a plain table
        examples = examples.flatten_indices()
    table = examples.data.table
    ids_type, eid_column = table.column("input_ids").type.value_type, table.column("example_id")
    schema = pa.schema([("input_ids", pa.list_(ids_type)), ("lengths", pa.list_(pa.int64())),
                        ("example_ids", pa.list_(pa.int64()))])
    batches = row_batches(id_shards(examples, SHARD_EXAMPLES), eid_column, max_seq_length, packing, schema)
    if path is None:
        return Dataset(InMemoryTable(pa.Table.from_batches(list(batches), schema=schema)))
    path.parent.mkdir(parents=True, exist_ok=True)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for batch in batches:
            writer.write_batch(batch)
    return Dataset.from_file(str(path))


def id_shards(examples, size: int):
    """The examples' `input_ids`, one array per `size` examples (the last one shorter; one empty
    array for no examples). Read from the Arrow files that hold them, batch by batch, rather than
    through their memory map: every page read through a map stays in the process's resident memory
    (1.9 GB of it while packing a 1 GB corpus). From the table where the examples live in memory."""
    import pyarrow as pa

    files = [f["filename"] for f in examples.cache_files]
    if not files or examples._indices is not None:
        column = examples.data.table.column("input_ids")
        for start in range(0, max(len(column), 1), size):
            yield column.slice(start, size).combine_chunks()
        return
    pending, count, total = [], 0, 0
    for name in files:
        with pa.OSFile(name) as source:
            for batch in pa.ipc.open_stream(source):
                pending.append(batch.column("input_ids"))
                count += len(batch)
                while count >= size:
                    joined = pa.chunked_array(pending).combine_chunks()
                    yield joined.slice(0, size)
                    total += size
                    pending, count = [joined.slice(size)], count - size
    if count or not total:
        yield pa.chunked_array(pending, type=examples.features.arrow_schema.field("input_ids").type).combine_chunks()
        total += count
    if total != len(examples):  # the files are not the data set's rows: never pack the wrong rows
        raise RuntimeError(f"read {total} examples from {len(files)} files of a data set of {len(examples)}")


def row_batches(id_arrays, eid_column, max_seq_length: int, packing: bool, schema):
    """`packed_dataset`'s rows as Arrow record batches, one per array of examples' ids in `id_arrays`
    (`id_shards`: `SHARD_EXAMPLES` examples each)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    start = 0
    for ids in id_arrays:
        eids = eid_column.slice(start, len(ids)).to_numpy()
        start += len(ids)
        lengths = pc.list_value_length(ids).to_numpy(zero_copy_only=False).astype(np.int64)
        if packing:
            members, sizes = pack_order(lengths, max_seq_length)
        else:
            members, sizes = np.arange(len(lengths)), np.ones(len(lengths), dtype=np.int64)
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        firsts = np.minimum.reduceat(eids[members], bounds[:-1]) if len(members) else members
        by_first = np.argsort(firsts, kind="stable")  # the rows in corpus order
        rank = np.empty(len(sizes), dtype=np.int64)
        rank[by_first] = np.arange(len(sizes))  # each row's place in that order
        members = members[np.argsort(np.repeat(rank, sizes), kind="stable")]  # row by row in that order
        sizes = sizes[by_first]
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        member_lengths = lengths[members]
        tokens = pc.take(ids, pa.array(members)).flatten()
        token_bounds = np.concatenate([[0], np.cumsum(member_lengths)])[bounds]
        offsets = pa.array(bounds.astype(np.int32))
        yield pa.record_batch([
            pa.ListArray.from_arrays(pa.array(token_bounds.astype(np.int32)), tokens),
            pa.ListArray.from_arrays(offsets, pa.array(member_lengths)),
            pa.ListArray.from_arrays(offsets, pa.array(eids[members].astype(np.int64))),
        ], schema=schema)


def rows_folder(recipe: PretrainRecipe, tokenizer, corpus: Corpus, packing: bool) -> Path:
    """The cache folder of the training and held-out rows: the corpus and its split, the tokenizer,
    the row length and packing decide them."""
    return cache.folder_for("rows", {
        "corpus": cache.corpus_identity(recipe, corpus, ("train", "validation")), "max_seq_length": recipe.data.max_seq_length,
        "packing": packing, "shard_examples": SHARD_EXAMPLES,
        "tokenizer": hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest(),
        "specials": [tokenizer.cls_token_id, tokenizer.sep_token_id]})


def preprocessing_processes(recipe: PretrainRecipe, lines: int) -> int:
    """`data.preprocessing_num_workers`, or the machine's cores; at most one per 50 000 lines (fewer
    are not worth starting a process for)."""
    wanted = recipe.data.preprocessing_num_workers or os.cpu_count() or 1
    return max(1, min(wanted, lines // 50_000))


def tokenize_corpus(recipe: PretrainRecipe, tokenizer, corpus: Corpus, packing: bool,
                    seconds: dict[str, float] | None = None) -> tuple[list, bool]:
    """Lines -> examples (long lines split, not dropped) -> rows (packed when `packing`), memory-mapped
    from the cache (`cache.py`: `rows/KEY`), which is made on the first run and read by every later
    one with the same corpus and settings. Returns ([train rows, held-out rows], whether they came
    from the cache); adds the seconds spent tokenizing and packing to `seconds`."""
    import time

    from datasets import Dataset

    seconds = {} if seconds is None else seconds
    seconds.setdefault("tokenize", 0.0)
    seconds.setdefault("pack", 0.0)
    raw = corpus.raw
    folder = rows_folder(recipe, tokenizer, corpus, packing)
    splits = ("train", "validation")
    cached = cache.is_complete(folder)
    if not cached and corpus.documents is not None:  # mlm+nsp: sentence pairs
        from bigmodel_cli.mlm.pairs import tokenize_pairs

        def fill(staging: Path) -> None:
            start = time.perf_counter()
            for split in splits:
                tokenize_pairs(recipe, tokenizer, raw[split], corpus.documents[split], staging / f"{split}.arrow",
                               preprocessing_processes(recipe, len(raw[split])),
                               recipe.data.dupe_factor if split == "train" else 1)
            seconds["tokenize"] += time.perf_counter() - start

        cache.build(folder, fill)
    elif not cached:
        def fill(staging: Path) -> None:
            for split in splits:
                start = time.perf_counter()
                examples = tokenize_lines(raw[split], tokenizer, recipe.data.max_seq_length,
                                          preprocessing_processes(recipe, len(raw[split])))
                packed_at = time.perf_counter()
                packed_dataset(examples, recipe.data.max_seq_length, packing, staging / f"{split}.arrow")
                seconds["tokenize"] += packed_at - start
                seconds["pack"] += time.perf_counter() - packed_at

        cache.build(folder, fill)
    return [Dataset.from_file(str(folder / f"{split}.arrow")) for split in splits], cached
