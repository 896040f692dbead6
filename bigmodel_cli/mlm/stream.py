"""`data.streaming: true`: training rows made on the fly from a stream of lines, resumable exactly.

The lines come from `datasets`' streaming `IterableDataset` (local files of any size, or a hub data
set), never written to disk. They are read in windows of `WINDOW_LINES`; each window is tokenized
(long lines split, as `text.tokenize_lines` does), packed (`text.pack_order`, the same per-line
attention) and its rows given in an order drawn from (seed, pass, window). After the last line the
stream starts again (the next pass). Each example's id, which seeds its masks, counts the examples
from the start of the first pass.

Exact resume: `StreamedRows` remembers where each recent window began (the stream's own
`state_dict()`, the pass, the window, the examples and rows before it). A checkpoint saves, for the
rows trained so far, the window they reached and how many of its rows were used
(`position_after`); a resumed run loads the stream there, remakes that one window and skips those
rows. Nothing before it is read again by the tokenizer.

With several processes the stream is read once, by the main process, and Accelerate hands each
process its share of every batch (its `dispatch_batches`, the default for iterable data), so a
resumed or rescaled run trains on the same global batches.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import torch

from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.mlm.corpus import bounded
from bigmodel_cli.mlm.text import chunk_line, pack_order
from bigmodel_cli.seeds import derive_seed

WINDOW_LINES = 10_000  # lines tokenized and packed together
REMEMBERED_WINDOWS = 4096  # window starts kept: more than the loader can read ahead of training


class StreamedRows(torch.utils.data.IterableDataset):
    """Rows (`input_ids`, `lengths`, `example_ids`, as `text.packed_dataset` makes them) from `make_stream()`,
    an IterableDataset of `text` lines made anew for each pass, without end."""

    def __init__(self, make_stream, tokenizer, max_seq_length: int, packing: bool, seed: int,
                 window_lines: int | None = None):
        self.make_stream, self.tokenizer = make_stream, tokenizer
        self.max_seq_length, self.packing, self.seed = max_seq_length, packing, seed
        self.window_lines = window_lines or WINDOW_LINES
        self.start = {"pass": 0, "window": 0, "stream": None, "examples": 0, "rows": 0, "skip": 0}
        self.windows: deque[dict] = deque(maxlen=REMEMBERED_WINDOWS)

    def load_state_dict(self, state: dict) -> None:
        """Start where a checkpoint's `position_after` says."""
        self.start = dict(state)

    def position_after(self, rows: int) -> dict:
        """The position after `rows` rows (counted from the start of the first pass): the window they
        reached and how many of its rows were given."""
        for window in reversed(self.windows):
            if window["rows"] <= rows:
                return {**window, "skip": rows - window["rows"]}
        if rows == self.start["rows"] + self.start["skip"]:  # nothing given since the start
            return dict(self.start)
        raise BigmodelError(f"the stream's position after {rows} rows is no longer known (loader too far ahead)")

    def __iter__(self):
        position = dict(self.start)
        skip = position.pop("skip")
        while True:
            stream = self.make_stream()
            if position["stream"] is not None:
                stream.load_state_dict(position["stream"])
            given_in_pass = 0
            batches = stream.iter(batch_size=self.window_lines)
            while True:
                state = stream.state_dict()
                try:
                    lines = next(batches)["text"]
                except StopIteration:
                    break
                window = {**position, "stream": state}
                self.windows.append(window)
                rows = self.window_rows(lines, window)
                position = {**window, "window": window["window"] + 1, "examples": window["examples"] + rows.examples,
                            "rows": window["rows"] + len(rows)}
                for row in rows[skip:]:
                    given_in_pass += 1
                    yield row
                skip = 0
            if given_in_pass == 0 and position["window"] == 0:
                raise BigmodelError("the training stream has no lines; check data.train_files or data.dataset_name")
            position = {"pass": position["pass"] + 1, "window": 0, "stream": None, "examples": position["examples"],
                        "rows": position["rows"]}

    def window_rows(self, lines: list[str], window: dict) -> WindowRows:
        """One window's rows: its lines tokenized and split into examples, packed, in a seeded order."""
        cls_id, sep_id, content = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id, self.max_seq_length - 2
        examples = [[cls_id, *piece, sep_id]
                    for ids in self.tokenizer(bounded(lines), add_special_tokens=False)["input_ids"]
                    for piece in chunk_line(ids, content)]
        lengths = np.array([len(e) for e in examples], dtype=np.int64)
        if self.packing:
            members, sizes = pack_order(lengths, self.max_seq_length)
        else:
            members, sizes = np.arange(len(examples)), np.ones(len(examples), dtype=np.int64)
        bounds = np.concatenate([[0], np.cumsum(sizes)]).tolist()
        members = members.tolist()
        order = torch.randperm(len(sizes), generator=torch.Generator().manual_seed(
            derive_seed(self.seed, "order", window["pass"], window["window"]))).tolist()
        first = window["examples"]
        rows = WindowRows()
        rows.examples = len(examples)
        for r in order:
            chosen = members[bounds[r]:bounds[r + 1]]
            rows.append({"input_ids": [t for e in chosen for t in examples[e]],
                         "lengths": [len(examples[e]) for e in chosen],
                         "example_ids": [first + e for e in chosen]})
        return rows


class WindowRows(list):
    """A window's rows, and how many examples its lines made."""

    examples = 0


def stream_rows(recipe, tokenizer, corpus, packing: bool) -> list:
    """[training rows made on the fly from the corpus's stream, held-out rows packed in memory]."""
    from bigmodel_cli.mlm.text import packed_dataset, tokenize_lines

    length = recipe.data.max_seq_length
    held_out = packed_dataset(tokenize_lines(corpus.raw["validation"], tokenizer, length), length, packing, None)
    return [StreamedRows(corpus.make_stream, tokenizer, length, packing, recipe.training.seed), held_out]
