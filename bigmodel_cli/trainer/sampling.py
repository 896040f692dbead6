"""Each epoch's order drawn from (seed, epoch) over whole global batches.

The examples of every optimizer step are then the same whatever the number of processes and
accumulation steps, and after a resume (Accelerate calls `set_epoch`): length-grouped for
`group_by_length` (Trainer's own groups per process), shuffled otherwise.
"""

from __future__ import annotations

import torch
from transformers.trainer_pt_utils import LengthGroupedSampler

from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.processes import world_size
from bigmodel_cli.seeds import derive_seed


def whole_batches(indices: list[int], batch_size: int, drop_last: bool) -> list[int]:
    """`indices` cut (drop_last) or filled from their own start to a whole number of batches.

    Left partial, the last batch of an epoch is split differently by every process layout: Accelerate
    fills each process's share up with examples from the epoch's start, one process does not, and the
    two runs part at the first epoch's end. Filled here, once, every layout trains on the same
    global batches; at most batch_size - 1 examples per epoch are seen twice, none is skipped."""
    if drop_last:
        return indices[: len(indices) - len(indices) % batch_size]
    missing = -len(indices) % batch_size
    while missing > 0 and indices:
        fill = indices[:missing]
        indices, missing = indices + fill, missing - len(fill)
    return indices


def whole_batches_length(size: int, batch_size: int, drop_last: bool) -> int:
    """len(whole_batches(range(size), batch_size, drop_last))."""
    whole = size - size % batch_size
    return whole if drop_last or size == whole else whole + batch_size


ORDER_BLOCK = 65_536  # row numbers made Python ints at a time


def order_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, "order", epoch))


class SeededRandomSampler(torch.utils.data.Sampler):
    """A shuffle drawn from (seed, epoch), not from the global RNG, in whole global batches: the same
    in every process, on every process count, and after a resume (Accelerate calls `set_epoch`)."""

    def __init__(self, size: int, batch_size: int, seed: int, drop_last: bool = False):
        self.size, self.batch_size, self.seed, self.drop_last, self.epoch = size, batch_size, seed, drop_last, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return whole_batches_length(self.size, self.batch_size, self.drop_last)

    def __iter__(self):
        """`whole_batches` of the shuffle, read from its tensor a block at a time: a list of a big
        corpus's row numbers as Python ints would take 36 bytes a row (250 MB for 7 million rows)."""
        order = torch.randperm(self.size, generator=order_generator(self.seed, self.epoch))
        for start in range(0, len(self), ORDER_BLOCK):  # cut (drop_last) or filled from the start
            yield from order[torch.arange(start, min(start + ORDER_BLOCK, len(self))) % self.size].tolist()


class SeededLengthGroupedSampler(LengthGroupedSampler):
    """Length-grouped order drawn from (seed, epoch), not from the global RNG, in whole global
    batches: the same in every process, on every process count, and after a resume."""

    def __init__(self, batch_size: int, lengths: list[int], seed: int, drop_last: bool = False):
        super().__init__(batch_size, lengths=lengths)
        self.seed, self.drop_last, self.epoch = seed, drop_last, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return whole_batches_length(len(self.lengths), self.batch_size, self.drop_last)

    def __iter__(self):
        self.generator = order_generator(self.seed, self.epoch)
        return iter(whole_batches(list(super().__iter__()), self.batch_size, self.drop_last))


class SeededSampling:
    """Trainer mixin: the training sampler is one of the seeded samplers above."""

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        strategy = self.args.train_sampling_strategy
        if strategy not in ("random", "group_by_length") or dataset is None or not hasattr(dataset, "__len__"):
            return super()._get_train_sampler(train_dataset)
        global_batch = self.args.train_batch_size * self.args.gradient_accumulation_steps * world_size()
        drop_last = self.args.dataloader_drop_last
        if drop_last and len(dataset) < global_batch:
            raise BigmodelError(
                f"training.dataloader_drop_last is on and the training set has {len(dataset)} rows, fewer than "
                f"one global batch ({global_batch}): no step would run; lower training.global_batch_size or "
                "set training.dataloader_drop_last=false")
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        if strategy == "group_by_length" and "input_ids" in (getattr(dataset, "column_names", None) or []):
            lengths = [len(ids) for ids in dataset["input_ids"]]  # Trainer has dropped the `length` column by now
            return SeededLengthGroupedSampler(global_batch, lengths=lengths, seed=seed, drop_last=drop_last)
        return SeededRandomSampler(len(dataset), global_batch, seed=seed, drop_last=drop_last)
