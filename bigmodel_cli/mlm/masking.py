"""BERT's masking, drawn so that a resumed run masks exactly as the uninterrupted one did.

`MLMCollator` pads rows, builds the attention mask (block-diagonal for packed rows) and per-line
positions, and masks `mlm_probability` of the tokens the 80/10/10 way, from a generator seeded by
(seed, epoch, example id) through `seeds.derive_seed`, not from the global RNG.
"""

from __future__ import annotations

import torch
from transformers import TrainerCallback

from bigmodel_cli.seeds import derive_seed


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
    positions, and masks `mlm_probability` of the tokens, BERT's 80/10/10 way.

    Each line's masks come from a generator seeded by (seed, epoch, example id): the same line in the
    same epoch is masked the same way whatever the batch, worker or restart. With `whole_words`, a
    word's pieces are chosen together (by the draw of its first piece); the 80/10/10 replacement
    then goes piece by piece, as in BERT's own whole-word masking.
    """

    def __init__(self, tokenizer, mlm_probability: float = 0.15, seed: int = 42, stream: str = "masks",
                 positions: bool = False, whole_words: bool = False, position_ids: bool = True):
        self.pad_id = tokenizer.pad_token_id
        self.mask_id = tokenizer.mask_token_id
        self.special = torch.tensor(sorted(set(tokenizer.all_special_ids)))
        self.vocab_size = len(tokenizer)
        self.mlm_probability = mlm_probability
        self.seed = seed
        self.stream = stream  # "masks" in training; "held_out_masks" for the fixed evaluation masks
        self.positions = positions  # add `masked_positions` (flat indices) for the sparse head: no sync on GPU
        self.word_starts = word_start_table(tokenizer) if whole_words else None  # per id: does it begin a word?
        self.position_ids = position_ids  # per-line positions (packing); off: the model numbers them (RoBERTa's offset)
        self.epoch = 0

    def _generator(self, example_id: int) -> torch.Generator:
        return torch.Generator().manual_seed(derive_seed(self.seed, self.stream, self.epoch, example_id))

    def mask(self, ids: torch.Tensor, example_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = self._generator(example_id)
        n = ids.numel()
        draw, how, random_ids = torch.rand(n, generator=g), torch.rand(n, generator=g), torch.randint(
            self.vocab_size, (n,), generator=g
        )
        special = torch.isin(ids, self.special)
        if self.word_starts is not None:  # every token takes the draw of its word's first token
            starts = self.word_starts[ids] | special
            starts[0] = True
            draw = draw[starts.nonzero().squeeze(1)][starts.long().cumsum(0) - 1]
        chosen = (draw < self.mlm_probability) & ~special
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
        out = {"input_ids": input_ids, "labels": labels}
        if self.position_ids:
            out["position_ids"] = positions
        if self.positions:
            out["masked_positions"] = (labels.reshape(-1) != -100).nonzero().squeeze(1)
        if all(len(r["lengths"]) == 1 for r in rows):
            out["attention_mask"] = (segment > 0).long()
        else:  # (batch, 1, query, key): a token attends to the tokens of its own line only
            same = (segment[:, :, None] == segment[:, None, :]) & (segment[:, None, :] > 0)
            same |= torch.eye(width, dtype=torch.bool)  # padding rows attend to themselves (no NaN)
            out["attention_mask"] = same[:, None]
        return out


class EpochToCollator(TrainerCallback):
    """Tells the masking collator which epoch it is, so each epoch draws fresh, reproducible masks
    (a resumed run restores the epoch from its checkpoint before the first batch)."""

    def __init__(self, collator):
        self.collator = collator

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.collator.epoch = int((state.epoch or 0) + 1e-9)
