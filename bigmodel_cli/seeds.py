"""Every random stream of a run, derived from the recipe's one seed by one function.

A run draws from several streams: the model's initialisation, the held-out split, each epoch's
data order, each line's masks in each epoch, the fixed masks of held-out evaluation, and the
downstream probe's sample. Each is
`derive_seed(seed, stream, *parts)`: the stream's offset added to the recipe's seed, then folded
with the parts (epoch, example id) as `key * 1_000_003 + part`, modulo 2**63. Pretraining's
held-out masks use `seed + 1`, so `bigmodel eval --task mlm` on a run's folder scores its own
held-out text with the very masks the run used.
"""

from __future__ import annotations

MULTIPLIER = 1_000_003  # a prime: (epoch, example) pairs map to distinct keys for any realistic count
STREAMS = {
    "init": 0,  # transformers.set_seed before the model: weights and a new classifier head
    "split": 0,  # the held-out lines split off the training corpus
    "order": 0,  # each epoch's data order (folded with the epoch; a stream's rows: with the pass and the window)
    "masks": 0,  # training masks (folded with the epoch; mlm/masking.py hashes in the example id and token offset)
    "held_out_masks": 1,  # evaluation masks (epoch 0; then hashed like the training masks): fixed for the whole run
    "pairs": 3,  # mlm+nsp: which sentence pairs get a random second sentence, and which one (mlm/pairs.py)
    "probe": 2,  # the downstream probe's sample of its task's training split (a numpy generator of its own)
}


def derive_seed(seed: int, stream: str, *parts: int) -> int:
    """The seed of `stream` for the recipe's `seed`, folded with `parts` (epoch, example id)."""
    if stream not in STREAMS:
        raise ValueError(f"unknown random stream '{stream}'; one of {', '.join(STREAMS)}")
    key = seed + STREAMS[stream]
    for part in parts:
        key = key * MULTIPLIER + int(part)
    return key % 2**63
