"""Fine-tuning batches padded to one of a few lengths, so a GPU sees the same shapes again.

Padding each batch to its own longest example (what `DataCollatorWithPadding` does) gives a new
shape nearly every step: on a GPU each new shape costs kernel selection, and CUDA graphs and
`torch.compile` cannot reuse what they built. Rounded up to a handful of bucket lengths (1, 1.5, 2,
3, 4, 6, 8, ... x 8 tokens), the shapes repeat, for at most a third more padded tokens. On a CPU
the padding is pure waste, so the recipe's default turns buckets on only where CUDA is.
"""

from __future__ import annotations


def bucket_lengths(max_length: int, smallest: int = 8) -> list[int]:
    """The bucket lengths up to `max_length` (itself the last): smallest x 1, 1.5, 2, 3, 4, 6, ..."""
    lengths, base = set(), smallest
    while base < max_length:
        lengths.update({base, base * 3 // 2})
        base *= 2
    return sorted({n for n in lengths if n < max_length} | {max_length})


def bucket_for(length: int, buckets: list[int]) -> int:
    """The smallest bucket that holds `length` (the largest, for an over-long one)."""
    return next((b for b in buckets if b >= length), buckets[-1])


class BucketPadding:
    """`DataCollatorWithPadding`, padding each batch to its bucket length instead of its longest."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer, self.buckets = tokenizer, bucket_lengths(max_length)

    def __call__(self, features: list[dict]):
        longest = max(len(f["input_ids"]) for f in features)
        batch = self.tokenizer.pad(features, padding="max_length", max_length=bucket_for(longest, self.buckets),
                                   return_tensors="pt")
        if "label" in batch:  # as DataCollatorWithPadding names it for the model
            batch["labels"] = batch.pop("label")
        return batch
