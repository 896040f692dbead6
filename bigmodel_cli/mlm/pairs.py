"""BERT's own pretraining (`model.objective: mlm+nsp`): sentence pairs, masked and told apart.

- Documents (`corpus.document_splits`): blank lines end a document (or lines matching
  `data.document_separator`, which are dropped, blank lines then skipped). The held-out split is whole
  documents, `validation_split_percentage` of them, chosen by the run's split seed.
- Pairs (`pair_rows`): every two consecutive lines of a document, A then B; for half of them, drawn by the
  `pairs` stream, B is a line of another document of the same `SHARD_LINES` lines instead (`next_sentence_label` 1, as
  `BertForPreTraining` reads it). Each row is `[CLS] A [SEP] B [SEP]`, cut to `max_seq_length` by taking
  tokens off the end of the longer segment first (BERT's `truncate_seq_pair`), built with numpy.
- `PairCollator`: `MLMCollator`'s masks, plus token types (B's tokens are type 1) and the labels.
- `SparseHeadBertForPreTraining`: `BertForPreTraining` whose MLM head projects only the masked positions;
  the loss is the masked-LM loss plus the next-sentence loss; saved as the stock class.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from transformers import BertForPreTraining
from transformers.utils import ModelOutput

from bigmodel_cli.memory import MappedPages
from bigmodel_cli.mlm.corpus import MAX_LINE_CHARS
from bigmodel_cli.mlm.masking import MLMCollator
from bigmodel_cli.seeds import derive_seed

RANDOM_NEXT = 1  # BertForPreTraining's next_sentence_label: 0 B follows A, 1 B is a random sentence
SHARD_LINES = 100_000  # lines paired at a time, random second sentences drawn among them: memory flat in the corpus


def pairs(documents: np.ndarray, key: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first line, second line, label) of every pair: each two consecutive lines of a document, half of them
    (drawn from `key`'s generator) with a line of another document second instead (label 1)."""
    rng = np.random.default_rng(key)
    first = np.flatnonzero(documents[1:] == documents[:-1])
    second = first + 1
    swap = rng.random(len(first)) < 0.5
    picks = rng.integers(0, len(documents), len(first))
    for _ in range(64):  # a pick from the pair's own document is drawn again
        again = swap & (documents[picks] == documents[first])
        if not again.any():
            break
        picks[again] = rng.integers(0, len(documents), int(again.sum()))
    swap &= documents[picks] != documents[first]
    return first, np.where(swap, picks, second), swap.astype(np.int64) * RANDOM_NEXT


def truncated(la: np.ndarray, lb: np.ndarray, room: int) -> tuple[np.ndarray, np.ndarray]:
    """The lengths BERT's `truncate_seq_pair` leaves two segments of `la` and `lb` tokens in `room`: one
    token off the longer at a time (B when equal) until they fit."""
    low, high = room // 2, room - room // 2
    fit = la + lb <= room
    a = np.where(fit | (la <= low), la, np.where(lb <= low, room - lb, high))
    b = np.where(fit | (lb <= low), lb, np.where(la <= low, room - la, low))
    return a, b


def runs(lengths: np.ndarray) -> np.ndarray:
    """0..n-1 for each n of `lengths`, concatenated."""
    return np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)


def pair_rows(ids, documents: np.ndarray, max_seq_length: int, cls_id: int, sep_id: int, key: int, first_id: int = 0):
    """Rows of `[CLS] A [SEP] B [SEP]` (Arrow record batch): `input_ids`, `lengths` ([row length]),
    `example_ids` ([pair number from `first_id`]: seeds its masks), `segment_a` (where B starts) and
    `next_sentence_label`. `ids`: the lines' token ids (an Arrow list array, no special tokens)."""
    import pyarrow as pa

    ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    offsets = ids.offsets.to_numpy().astype(np.int64)
    values = ids.values.to_numpy(zero_copy_only=False)
    lengths = np.diff(offsets)
    first, second, label = pairs(documents, key)
    a, b = truncated(lengths[first], lengths[second], max_seq_length - 3)
    n = a + b + 3
    starts = np.concatenate([[0], np.cumsum(n)])
    tokens = np.empty(int(starts[-1]), dtype=values.dtype)
    tokens[starts[:-1]] = cls_id
    tokens[starts[:-1] + 1 + a] = sep_id
    tokens[starts[1:] - 1] = sep_id
    tokens[np.repeat(starts[:-1] + 1, a) + runs(a)] = values[np.repeat(offsets[first], a) + runs(a)]
    tokens[np.repeat(starts[:-1] + 2 + a, b) + runs(b)] = values[np.repeat(offsets[second], b) + runs(b)]
    each = pa.array(np.arange(len(n) + 1, dtype=np.int32))
    return pa.record_batch([
        pa.ListArray.from_arrays(pa.array(starts.astype(np.int32)), pa.array(tokens)),
        pa.ListArray.from_arrays(each, pa.array(n.astype(np.int64))),
        pa.ListArray.from_arrays(each, pa.array(np.arange(first_id, first_id + len(n), dtype=np.int64))),
        pa.array((a + 2).astype(np.int64)),
        pa.array(label),
    ], names=["input_ids", "lengths", "example_ids", "segment_a", "next_sentence_label"])


def tokenize_pairs(recipe, tokenizer, lines, documents: np.ndarray, path, num_proc: int | None = None, copies: int = 1):
    """A split's lines -> its pair rows, written to `path` (Arrow) and memory-mapped from there; made
    `copies` times, each with other random second sentences (`data.dupe_factor`)."""
    import pyarrow as pa
    from datasets import Dataset, Features, List, Value

    read = MappedPages()  # the text read through the map is not kept resident (`tokenize_lines`)

    def encode(batch):  # one row per line (a pair's segment is cut to fit anyway)
        read()
        texts = [t[:MAX_LINE_CHARS] for t in batch["text"]]
        return {"input_ids": tokenizer(texts, add_special_tokens=False)["input_ids"]}

    tokens = lines.map(encode, batched=True, remove_columns=lines.column_names, num_proc=num_proc,
                       desc="tokenizing", features=Features({"input_ids": List(Value("int32"))}))
    column = tokens.data.table.column("input_ids")
    path.parent.mkdir(parents=True, exist_ok=True)
    writer, made = None, 0
    with pa.OSFile(str(path), "wb") as sink:
        for copy in range(copies):
            for number, (start, stop) in enumerate(shards(documents, SHARD_LINES)):
                batch = pair_rows(column.slice(start, stop - start), documents[start:stop], recipe.data.max_seq_length,
                                  tokenizer.cls_token_id, tokenizer.sep_token_id,
                                  derive_seed(recipe.training.seed, "pairs", copy, number), made)
                writer = writer or pa.ipc.new_stream(sink, batch.schema)
                writer.write_batch(batch)
                made += batch.num_rows
        writer.close()
    return Dataset.from_file(str(path))


def shards(documents: np.ndarray, size: int) -> list[tuple[int, int]]:
    """[start, stop) line ranges of about `size` lines each, cut where a document starts (a document longer
    than `size` stays whole): pairs, and their random second sentences, are drawn shard by shard."""
    starts = np.flatnonzero(np.concatenate([[True], documents[1:] != documents[:-1]]))
    cuts = [0]
    while cuts[-1] < len(documents):
        after = np.searchsorted(starts, cuts[-1] + size)  # the first document to start `size` lines on
        cuts.append(int(starts[after]) if after < len(starts) else len(documents))
    return list(zip(cuts[:-1], cuts[1:]))


class PairCollator(MLMCollator):
    """`MLMCollator` for sentence-pair rows: its masks, plus `token_type_ids` (1 from B's first token to
    the row's end) and `next_sentence_label`."""

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        out = super().__call__(rows)
        width = out["input_ids"].shape[1]
        column = torch.arange(width)[None]
        b_start = torch.tensor([r["segment_a"] for r in rows])[:, None]
        end = torch.tensor([r["lengths"][0] for r in rows])[:, None]
        out["token_type_ids"] = ((column >= b_start) & (column < end)).long()
        out["next_sentence_label"] = torch.tensor([r["next_sentence_label"] for r in rows], dtype=torch.long)
        return out


@dataclass
class PreTrainingLoss(ModelOutput):
    """The loss (masked LM + next sentence), its masked-LM part (a sum over the masked tokens where the
    caller counts them: `num_items_in_batch`), and the next-sentence logits."""

    loss: torch.Tensor | None = None
    mlm_loss: torch.Tensor | None = None
    seq_relationship_logits: torch.Tensor | None = None


class SparseHeadBertForPreTraining(BertForPreTraining):
    """`BertForPreTraining` whose MLM head projects only the masked positions onto the vocabulary (as
    `SparseHeadBertForMaskedLM`); the same parameters, saved and loaded as the stock class."""

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, labels=None,
                next_sentence_label=None, num_items_in_batch=None, masked_positions=None, **kwargs):
        if labels is None:
            return super().forward(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                                   position_ids=position_ids, **kwargs)
        out = self.bert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                        position_ids=position_ids, return_dict=True)
        hidden = out.last_hidden_state
        if masked_positions is None:
            targets = labels != -100
            hidden, masked = hidden[targets], labels[targets]
        else:
            hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, masked_positions)
            masked = labels.reshape(-1).index_select(0, masked_positions)
        logits = self.cls.predictions(hidden).float()
        nsp_logits = self.cls.seq_relationship(out.pooler_output).float()
        nsp = F.cross_entropy(nsp_logits, next_sentence_label) if next_sentence_label is not None else 0.0
        if num_items_in_batch is None:
            mlm = F.cross_entropy(logits, masked)
            loss = mlm + nsp
        else:  # the step's masked tokens (all micro-batches): the MLM sum over them exact; the NSP mean of
            # this micro-batch weighted by its share of them, so the micro-batches add up to one mean
            mlm = F.cross_entropy(logits, masked, reduction="sum")
            share = (labels != -100).sum() / num_items_in_batch
            loss = mlm / num_items_in_batch + nsp * share
        return PreTrainingLoss(loss=loss, mlm_loss=mlm, seq_relationship_logits=nsp_logits)
