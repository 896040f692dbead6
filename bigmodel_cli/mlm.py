"""The pieces of masked-language-model pretraining that the stock ones get wrong or make slow.

- `train_wordpiece`: a BERT WordPiece tokenizer trained on the corpus with the `tokenizers` library.
- `tokenize_lines`: one example per line; a line longer than `max_seq_length` is split into
  several examples rather than truncated (truncation dropped ~29 % of WikiText's tokens).
- `pack`: several lines share one sequence; the collator gives each its own block of the attention
  mask and its own positions, so every line still sees only itself (exact, no cross-talk).
- `MLMCollator`: masks drawn from a generator seeded by (seed, epoch, example index), not from the
  global RNG, so a resumed run masks exactly as the uninterrupted one did.
- `SparseHeadBertForMaskedLM`: the vocabulary projection only on masked positions: the same loss,
  and ~15 % of the head's cost.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from transformers import BertForMaskedLM
from transformers.modeling_outputs import MaskedLMOutput

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def train_wordpiece(lines: Iterable[str], vocab_size: int, lowercase: bool, min_frequency: int, length=None):
    """A BERT-style WordPiece tokenizer (BERT normalizer and pre-tokenizer, [CLS]/[SEP] template)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=lowercase or None)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS, show_progress=True
    )
    tok.train_from_iterator(lines, trainer=trainer, length=length)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    # `tokenizer_object=`, never `vocab_file=`: the latter silently builds a 5-token tokenizer in 5.x.
    return BertTokenizerFast(
        tokenizer_object=tok,
        do_lower_case=lowercase,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def unknown_rate(tokenizer, lines: list[str]) -> float:
    """Share of word-piece tokens that are [UNK]: a tokenizer that does not fit the corpus shows
    here before any training."""
    ids = tokenizer(lines, add_special_tokens=False)["input_ids"]
    total = sum(len(x) for x in ids)
    unk = sum(x.count(tokenizer.unk_token_id) for x in ids)
    return unk / max(total, 1)


def chunk_line(ids: list[int], max_content: int) -> list[list[int]]:
    """Split one line's token ids into pieces of at most `max_content` tokens (none dropped)."""
    return [ids[i : i + max_content] for i in range(0, len(ids), max_content)] or [[]]


def tokenize_lines(dataset, tokenizer, max_seq_length: int, num_proc: int | None = None):
    """`text` lines -> examples with `input_ids` ([CLS] piece [SEP], at most max_seq_length) and a
    unique `example_id` that seeds the example's masks."""
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id

    def encode(batch):
        pieces = []
        for ids in tokenizer(batch["text"], add_special_tokens=False)["input_ids"]:
            pieces.extend([cls_id, *piece, sep_id] for piece in chunk_line(ids, max_seq_length - 2))
        return {"input_ids": pieces}

    data = dataset.map(
        encode, batched=True, remove_columns=dataset.column_names, num_proc=num_proc, desc="tokenizing"
    )
    return data.add_column("example_id", list(range(len(data))))


def pack(lengths: list[int], capacity: int) -> list[list[int]]:
    """Best-fit-decreasing bin packing: indices of examples grouped so that each group's lengths
    sum to at most `capacity`. Deterministic."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    free: list[tuple[int, int]] = []  # (space left, bin index), sorted
    bins: list[list[int]] = []
    for i in order:
        n = lengths[i]
        at = bisect.bisect_left(free, (n, -1))
        if at < len(free):
            space, b = free.pop(at)
            bins[b].append(i)
            if space - n > 0:
                bisect.insort(free, (space - n, b))
        else:
            bins.append([i])
            if capacity - n > 0:
                bisect.insort(free, (capacity - n, len(bins) - 1))
    return bins


def packed_dataset(examples, max_seq_length: int, packing: bool):
    """Rows of one or more examples: `input_ids` (concatenated), `lengths` and `example_ids`."""
    from datasets import Dataset

    ids, eids = examples["input_ids"], examples["example_id"]
    groups = pack([len(x) for x in ids], max_seq_length) if packing else [[i] for i in range(len(ids))]
    groups.sort(key=lambda g: min(eids[i] for i in g))  # keep corpus order; the sampler shuffles
    return Dataset.from_dict(
        {
            "input_ids": [[t for i in g for t in ids[i]] for g in groups],
            "lengths": [[len(ids[i]) for i in g] for g in groups],
            "example_ids": [[eids[i] for i in g] for g in groups],
        }
    )


class MLMCollator:
    """Pads rows, builds the attention mask (block-diagonal for packed rows) and per-line
    positions, and masks `mlm_probability` of the tokens, BERT's 80/10/10 way.

    Each line's masks come from a generator seeded by (seed, epoch, example id): the same line in the
    same epoch is masked the same way whatever the batch, worker or restart.
    """

    def __init__(self, tokenizer, mlm_probability: float = 0.15, seed: int = 42):
        self.pad_id = tokenizer.pad_token_id
        self.mask_id = tokenizer.mask_token_id
        self.special = torch.tensor(sorted(set(tokenizer.all_special_ids)))
        self.vocab_size = len(tokenizer)
        self.mlm_probability = mlm_probability
        self.seed = seed
        self.epoch = 0

    def _generator(self, example_id: int) -> torch.Generator:
        key = ((self.seed * 1_000_003 + self.epoch) * 1_000_003 + int(example_id)) % (2**63)
        return torch.Generator().manual_seed(key)

    def mask(self, ids: torch.Tensor, example_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = self._generator(example_id)
        n = ids.numel()
        draw, how, random_ids = torch.rand(n, generator=g), torch.rand(n, generator=g), torch.randint(
            self.vocab_size, (n,), generator=g
        )
        chosen = (draw < self.mlm_probability) & ~torch.isin(ids, self.special)
        labels = torch.where(chosen, ids, torch.full_like(ids, -100))
        inputs = torch.where(chosen & (how < 0.8), torch.full_like(ids, self.mask_id), ids)
        inputs = torch.where(chosen & (how >= 0.8) & (how < 0.9), random_ids, inputs)
        return inputs, labels

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        batch = len(rows)
        input_ids = torch.full((batch, width), self.pad_id, dtype=torch.long)
        labels = torch.full((batch, width), -100, dtype=torch.long)
        positions = torch.zeros((batch, width), dtype=torch.long)
        segment = torch.zeros((batch, width), dtype=torch.long)  # 0 = padding, k = k-th line
        for b, row in enumerate(rows):
            start = 0
            for k, (n, eid) in enumerate(zip(row["lengths"], row["example_ids"]), start=1):
                ids = torch.tensor(row["input_ids"][start : start + n], dtype=torch.long)
                input_ids[b, start : start + n], labels[b, start : start + n] = self.mask(ids, eid)
                positions[b, start : start + n] = torch.arange(n)
                segment[b, start : start + n] = k
                start += n
        if not (labels != -100).any():  # a tiny batch can draw no mask; the loss needs one target
            first = ((segment > 0) & ~torch.isin(input_ids, self.special)).nonzero()
            if len(first):
                b, t = first[0].tolist()
                labels[b, t], input_ids[b, t] = input_ids[b, t], self.mask_id
        out = {"input_ids": input_ids, "labels": labels, "position_ids": positions}
        if all(len(r["lengths"]) == 1 for r in rows):
            out["attention_mask"] = (segment > 0).long()
        else:  # (batch, 1, query, key): a token attends to the tokens of its own line only
            same = (segment[:, :, None] == segment[:, None, :]) & (segment[:, None, :] > 0)
            same |= torch.eye(width, dtype=torch.bool)  # padding rows attend to themselves (no NaN)
            out["attention_mask"] = same[:, None]
        return out


class SparseHeadBertForMaskedLM(BertForMaskedLM):
    """`BertForMaskedLM` whose training loss projects only the masked positions onto the
    vocabulary. Same parameters, same loss; saved and loaded as a plain `BertForMaskedLM`."""

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                labels=None, num_items_in_batch=None, **kwargs):
        if labels is None:
            return super().forward(input_ids=input_ids, attention_mask=attention_mask,
                                   token_type_ids=token_type_ids, position_ids=position_ids, **kwargs)
        hidden = self.bert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                           position_ids=position_ids, return_dict=True).last_hidden_state
        targets = labels != -100
        logits = self.cls(hidden[targets]).float()
        if num_items_in_batch is None:  # one micro-batch: the mean over its masked tokens
            loss = F.cross_entropy(logits, labels[targets])
        else:  # the Trainer's count over all micro-batches (and processes): exact accumulation
            loss = F.cross_entropy(logits, labels[targets], reduction="sum") / num_items_in_batch
        return MaskedLMOutput(loss=loss, logits=None)


def masked_loss_sums(model, collator, rows, batches, counted: int | None = None, prepare=None, on_batch=None) -> torch.Tensor:
    """[summed loss, masked-token count] (float64) over the batches of row indices `batches`, of
    which only the first `counted` add up (the others are forward passes that a sharded model,
    FSDP or DeepSpeed ZeRO-3, needs every process to take part in).

    The held-out loss is the first over the second: per masked token over the whole set, so it does
    not move with the batch size or the process count (Trainer's own loop averages per-batch means,
    weighted by rows). The masks are the collator's, fixed per example."""
    total = torch.zeros(2, dtype=torch.float64)
    counted = len(batches) if counted is None else counted
    with torch.inference_mode():
        for k, indices in enumerate(batches):
            batch = collator([rows[i] for i in indices])
            batch = prepare(batch) if prepare else batch
            loss = model(**batch, num_items_in_batch=1).loss  # summed over the masked tokens
            if k < counted:
                total += torch.stack([loss.detach().double().cpu(), (batch["labels"] != -100).sum().double().cpu()])
            if on_batch:
                on_batch()
    return total


def batched(indices, size: int) -> list[list[int]]:
    indices = list(indices)
    return [indices[i : i + size] for i in range(0, len(indices), size)]


def process_share(rows: int, rank: int, world: int, size: int) -> tuple[list[list[int]], int]:
    """Process `rank`'s batches of an evaluation over `rows` rows, and how many of them count.

    Every world-th row from `rank` on, so each row is scored once over all processes; then repeats
    of row 0 that count nothing, so that every process runs as many forward passes as process 0."""
    batches = batched(range(rank, rows, world), size)
    counted = len(batches)
    busiest = -(-rows // world)  # process 0's rows: the most
    return batches + [[0]] * (-(-busiest // size) - counted), counted
