"""BERT's masking, drawn so that a resumed run masks exactly as the uninterrupted one did, on the
host or on the GPU alike.

`MLMCollator` pads rows, builds the attention mask (block-diagonal for packed rows) and per-line
positions, and masks `mlm_probability` of the tokens the 80/10/10 way. The random numbers come from a
counter-based hash (`uniform_bits`) of (stream key, example id, token offset in its line, draw),
whose key is `seeds.derive_seed(seed, stream, epoch)`: no generator state, so the same line in the
same epoch is masked the same way whatever the batch, worker, restart or device. `draw_masks` is
that masking for a whole batch in tensor operations only (no per-line loop, no read back to the
host): the collator runs it on the CPU, or leaves it to the trainer to run on the GPU
(`MLMCollator(on_device=True)`, used with `DeviceMasks`), with equal results.
"""

from __future__ import annotations

import math
from itertools import chain

import torch
from transformers import TrainerCallback

from bigmodel_cli.memory import MappedPages
from bigmodel_cli.seeds import derive_seed

MASK32 = 0xFFFFFFFF
DRAWS = 3  # per token: chosen?, how replaced (80/10/10), the random token


def _times(x: torch.Tensor, constant: int) -> torch.Tensor:
    """(x * constant) mod 2**32 for int64 tensors of 32-bit values, in two 16-bit halves: no
    product leaves int64, so every device gives the same bits."""
    return (x * (constant & 0xFFFF) + (((x * (constant >> 16)) & 0xFFFF) << 16)) & MASK32


def mix32(h: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finaliser: every input bit moves every output bit."""
    h = h ^ (h >> 16)
    h = _times(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _times(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def uniform_bits(key: int, example_ids: torch.Tensor, offsets: torch.Tensor) -> list[torch.Tensor]:
    """`DRAWS` tensors of 32 random bits per token (int64), a function of (key, example id, offset)
    only. `key` is a stream's `derive_seed`; example ids and offsets are int64 tensors of one shape."""
    h = mix32((example_ids & MASK32) ^ (key & MASK32))
    h = mix32(h ^ ((key >> 32) & MASK32) ^ ((example_ids >> 32) & MASK32))
    return [mix32(h ^ ((offsets * DRAWS + d) & MASK32)) for d in range(DRAWS)]


def draw_masks(input_ids: torch.Tensor, example_ids: torch.Tensor, offsets: torch.Tensor, key: int, probability: float,
               mask_id: int, special: torch.Tensor, word_starts: torch.Tensor | None = None,
               at_least_one: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels) for a batch of token ids (any shape, any device): `probability` of the
    non-special tokens chosen (with `word_starts`, a per-id table, whole words: every piece takes the
    draw of its word's first piece), 80 % of them replaced by the mask token, 10 % by a random token,
    10 % kept; labels -100 elsewhere. `special` is a per-id table. With `at_least_one`, a batch that
    draws no mask gets its first maskable token masked (the loss needs a target). Tensor operations
    only: no host sync."""
    vocab_size = special.numel()
    choose, how, random_ids = uniform_bits(key, example_ids, offsets)
    draw = (choose >> 8).float() * 2.0**-24  # exact in float32 on every device: the same comparison everywhere
    how = (how >> 8).float() * 2.0**-24
    random_ids = random_ids % vocab_size
    is_special = special[input_ids]
    if word_starts is not None:  # each token takes the draw of its word's first token (a line starts a word)
        starts = (word_starts[input_ids] | is_special | (offsets == 0)).reshape(-1)
        index = torch.arange(starts.numel(), device=starts.device)
        first = torch.where(starts, index, torch.zeros_like(index)).cummax(0).values
        draw = draw.reshape(-1)[first].reshape(draw.shape)
    chosen = (draw < probability) & ~is_special
    flat_chosen, maskable = chosen.reshape(-1), ~is_special.reshape(-1)
    fallback = maskable & (torch.cumsum(maskable, 0) == 1) & ~flat_chosen.any() & at_least_one  # none drawn: the first
    chosen = (flat_chosen | fallback).reshape(chosen.shape)
    how = torch.where(fallback.reshape(how.shape), torch.zeros_like(how), how)  # the fallback is a [MASK]
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    inputs = torch.where(chosen & (how < 0.8), torch.full_like(input_ids, mask_id), input_ids)
    inputs = torch.where(chosen & (how >= 0.8) & (how < 0.9), random_ids, inputs)
    return inputs, labels


def masked_slots(labels: torch.Tensor, probability: float) -> torch.Tensor:
    """Flat indices of the masked tokens, in a fixed number of slots for the batch's shape (so a GPU
    neither waits for a count nor sees a new shape each step): the masked ones first, in order, then
    unmasked ones, whose -100 labels the loss ignores. The slots are the expected count plus ten
    standard deviations (whole words' too), and all tokens for small batches; a batch drawing more
    masks than that would lose the excess from the loss (about one in 10**23 batches)."""
    flat = labels.reshape(-1) != -100
    n = flat.numel()
    slots = min(n, math.ceil(n * probability + 10 * math.sqrt(3 * n * probability) + 16))
    return torch.argsort((~flat).to(torch.int8), stable=True)[:slots]


def line_attention(segment: torch.Tensor) -> torch.Tensor:
    """The attention mask of packed rows from each token's line number in its row (0: padding),
    (batch, 1, query, key): a token attends to the tokens of its own line only, and padding to
    itself (no row without a key, no NaN). Built where `segment` is."""
    same = (segment[:, :, None] == segment[:, None, :]) & (segment[:, None, :] > 0)
    same |= torch.eye(segment.shape[1], dtype=torch.bool, device=segment.device)
    return same[:, None]


def word_start_table(tokenizer) -> torch.Tensor:
    """For whole-word masking: per token id, whether the token begins a word. WordPiece marks the
    pieces that continue a word (`##`); byte-level BPE marks the tokens that begin one (`Ġ`, a space
    before). A tokenizer with neither has no word boundaries to mask by: a one-line error."""
    import json

    from bigmodel_cli.errors import BigmodelError

    backend = json.loads(tokenizer.backend_tokenizer.to_str()) if hasattr(tokenizer, "backend_tokenizer") else {}
    model, pre = backend.get("model") or {}, json.dumps(backend.get("pre_tokenizer"))
    if model.get("type") == "WordPiece":
        prefix = model.get("continuing_subword_prefix") or "##"

        def begins(token: str) -> bool:
            return not token.startswith(prefix)
    elif model.get("type") == "BPE" and "ByteLevel" in pre:
        def begins(token: str) -> bool:
            return token.startswith("\u0120")  # Ġ: the byte-level mark of a space before the token
    else:
        raise BigmodelError(
            f"data.whole_word_masking: the tokenizer ({model.get('type', type(tokenizer).__name__)}) marks no word "
            "boundaries (neither WordPiece's ## nor byte-level BPE's word starts); set data.whole_word_masking=false")
    table = torch.ones(len(tokenizer), dtype=torch.bool)
    for token, index in tokenizer.get_vocab().items():
        if index < len(table):
            table[index] = begins(token)
    return table


class MLMCollator:
    """Pads rows, builds the attention mask (block-diagonal for packed rows) and per-line
    positions, and masks `mlm_probability` of the tokens, BERT's 80/10/10 way (`draw_masks`).

    Each token's draws are a hash of (seed, epoch, example id, its offset in the line): the same line
    in the same epoch is masked the same way whatever the batch, worker or restart. With `whole_words`,
    a word's pieces are chosen together (by the draw of its first piece); the 80/10/10 replacement
    then goes piece by piece, as in BERT's own whole-word masking. With `on_device`, the batch leaves
    unmasked, with the example id of every token (and packed rows with their line numbers instead of
    their attention mask), and `DeviceMasks` draws the same masks, and builds that mask, on the GPU.
    """

    def __init__(self, tokenizer, mlm_probability: float = 0.15, seed: int = 42, stream: str = "masks",
                 positions: bool = False, whole_words: bool = False, position_ids: bool = True, on_device: bool = False):
        self.pad_id = tokenizer.pad_token_id
        self.mask_id = tokenizer.mask_token_id
        self.vocab_size = len(tokenizer)
        self.special = torch.zeros(self.vocab_size, dtype=torch.bool)  # per id: never masked
        self.special[[i for i in set(tokenizer.all_special_ids) if i < self.vocab_size]] = True
        self.mlm_probability = mlm_probability
        self.seed = seed
        self.stream = stream  # "masks" in training; "held_out_masks" for the fixed evaluation masks
        self.positions = positions  # add `masked_positions` (flat indices) for the sparse head: no sync on GPU
        self.word_starts = word_start_table(tokenizer) if whole_words else None  # per id: does it begin a word?
        self.position_ids = position_ids  # per-line positions (packing); off: the model numbers them (RoBERTa's offset)
        self.on_device = on_device  # leave the masks to `DeviceMasks`, drawn where the batch trains
        self.epoch = 0
        self._tables: dict = {}
        # rows still read through a memory map (sentence pairs, held-out rows; packed training rows are read
        # with pread, `rowfile.py`): each batch's pages handed back before the next batch is read (a row maps
        # the whole page-cache folio holding it, up to 2 MB: ~150 MB for 64 random rows)
        self.read = MappedPages(every=1, random=True)

    def __getstate__(self) -> dict:
        """What a loader worker gets: the tables cached on a GPU stay behind (a worker would share them
        through CUDA's inter-process handles, or start CUDA of its own)."""
        return {**self.__dict__, "_tables": {}}

    def key(self) -> int:
        """This epoch's key of the collator's stream."""
        return derive_seed(self.seed, self.stream, self.epoch)

    def mask(self, ids: torch.Tensor, example_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, labels) of one line, as a batch holding it masks it."""
        return self.draw(ids, torch.full_like(ids, example_id), torch.arange(ids.numel()), at_least_one=False)

    def draw(self, input_ids: torch.Tensor, example_ids: torch.Tensor, offsets: torch.Tensor,
             at_least_one: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """`draw_masks` with this collator's settings, on the device of `input_ids` (tables cached there)."""
        device = input_ids.device
        if device not in self._tables:
            words = self.word_starts.to(device) if self.word_starts is not None else None
            self._tables[device] = (self.special.to(device), words)
        special, words = self._tables[device]
        return draw_masks(input_ids, example_ids, offsets, self.key(), self.mlm_probability, self.mask_id, special, words,
                          at_least_one)

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        self.read()
        input_ids, positions, segment, example_ids = self.lay_out(rows)
        out = {"input_ids": input_ids}
        if self.on_device:
            out["mask_example_ids"], out["mask_offsets"] = example_ids, positions
        else:
            out["input_ids"], out["labels"] = self.draw(input_ids, example_ids, positions)
            if self.positions:
                out["masked_positions"] = (out["labels"].reshape(-1) != -100).nonzero().squeeze(1)
        if self.position_ids:
            out["position_ids"] = positions
        if all(len(r["lengths"]) == 1 for r in rows):
            out["attention_mask"] = (segment > 0).long()
        elif self.on_device:  # 64 x 128 row numbers travel instead of a 64 x 128 x 128 mask built on the host
            out["mask_segments"] = segment
        else:
            out["attention_mask"] = line_attention(segment)
        return out

    def lay_out(self, rows: list[dict]) -> tuple[torch.Tensor, ...]:
        """(input ids, each token's offset in its line, its line's number in the row (0: padding),
        its line's example id), each (batch, width): the whole batch in a few tensor operations, not
        a loop over rows (the collator runs on the host before every step, and a GPU waits for it)."""
        batch, width = len(rows), max(len(r["input_ids"]) for r in rows)
        real = [sum(r["lengths"]) for r in rows]  # real tokens per row
        tokens = torch.tensor(list(chain.from_iterable(r["input_ids"][:n] for r, n in zip(rows, real))), dtype=torch.long)
        counts = torch.tensor(real, dtype=torch.long)
        lengths = torch.tensor([n for r in rows for n in r["lengths"]], dtype=torch.long)  # every line, row by row
        lines = torch.tensor([len(r["lengths"]) for r in rows], dtype=torch.long)
        line_examples = torch.tensor([e for r in rows for e in r["example_ids"][:len(r["lengths"])]], dtype=torch.long)
        line = torch.repeat_interleave(torch.arange(len(lengths)), lengths)  # each token's line, over the batch
        row = torch.repeat_interleave(torch.arange(batch), counts)  # each token's row
        flat = torch.arange(len(tokens))
        column = flat - (torch.cumsum(counts, 0) - counts)[row]
        laid_out = [torch.full((batch, width), self.pad_id, dtype=torch.long),
                    *(torch.zeros((batch, width), dtype=torch.long) for _ in range(3))]
        values = (tokens, flat - (torch.cumsum(lengths, 0) - lengths)[line], line - (torch.cumsum(lines, 0) - lines)[row] + 1,
                  line_examples[line])
        for tensor, value in zip(laid_out, values):
            tensor[row, column] = value
        return tuple(laid_out)


class DeviceMasks:
    """The masks of an `MLMCollator(on_device=True)` batch, drawn where the batch is (the GPU): the
    same bits the collator would draw on the host, and the masked positions in a fixed number of
    slots (`masked_slots`), so no step waits for a count; and packed rows' attention mask, built
    there from their line numbers (`line_attention`)."""

    def __init__(self, collator: MLMCollator):
        self.collator = collator

    def __call__(self, batch: dict) -> dict:
        batch = dict(batch)
        example_ids, offsets = batch.pop("mask_example_ids"), batch.pop("mask_offsets")
        if "mask_segments" in batch:  # packed rows: their block-diagonal attention, built here too
            batch["attention_mask"] = line_attention(batch.pop("mask_segments"))
        batch["input_ids"], batch["labels"] = self.collator.draw(batch["input_ids"], example_ids, offsets)
        if self.collator.positions:
            batch["masked_positions"] = masked_slots(batch["labels"], self.collator.mlm_probability)
        return batch


class EpochToCollator(TrainerCallback):
    """Tells the masking collator which epoch it is, so each epoch draws fresh, reproducible masks
    (a resumed run restores the epoch from its checkpoint before the first batch)."""

    def __init__(self, collator):
        self.collator = collator

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.collator.epoch = int((state.epoch or 0) + 1e-9)
