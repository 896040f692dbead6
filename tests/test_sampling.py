"""The training order: whole global batches drawn from (seed, epoch), so that every process layout
trains on the same examples step by step (tests/test_distributed.py checks the loss curves)."""

from __future__ import annotations

import pytest
import torch

from bigmodel_cli.trainer import sampling
from bigmodel_cli.trainer.sampling import SeededLengthGroupedSampler, SeededRandomSampler, order_generator, whole_batches


@pytest.mark.parametrize("size, batch", [(284, 16), (16, 16), (5, 16), (33, 4)])
def test_filled_to_whole_batches_with_every_example_once_and_the_fill_from_the_start(size, batch):
    indices = list(range(size))[::-1]
    filled = whole_batches(indices, batch, drop_last=False)
    assert len(filled) % batch == 0 and len(filled) - size < batch
    assert filled[:size] == indices  # the epoch's order, untouched
    assert filled[size:] == (indices * batch)[: len(filled) - size]  # the fill: the epoch's first examples again


def test_drop_last_cuts_to_whole_batches():
    assert whole_batches(list(range(10)), 4, drop_last=True) == list(range(8))
    assert whole_batches(list(range(3)), 4, drop_last=True) == []


@pytest.mark.parametrize("drop_last", [False, True])
def test_random_order_depends_on_seed_and_epoch_only_and_its_length_is_exact(drop_last):
    a, b = SeededRandomSampler(284, 16, seed=3, drop_last=drop_last), SeededRandomSampler(284, 16, seed=3, drop_last=drop_last)
    assert list(a) == list(b) and len(list(a)) == len(a) == (272 if drop_last else 288)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    assert len(set(a)) == (272 if drop_last else 284)  # every example once (and, filled, 4 again), none lost
    assert list(SeededRandomSampler(284, 16, seed=4)) != list(SeededRandomSampler(284, 16, seed=3))


@pytest.mark.parametrize("size, batch, drop_last", [(284, 16, False), (284, 16, True), (5, 16, False), (3, 4, True),
                                                    (0, 4, False), (40, 40, False)])
def test_random_order_read_block_by_block_is_whole_batches_of_the_shuffle(monkeypatch, size, batch, drop_last):
    monkeypatch.setattr(sampling, "ORDER_BLOCK", 7)  # blocks that end inside a batch, and in the fill
    sampler = SeededRandomSampler(size, batch, seed=5, drop_last=drop_last)
    sampler.set_epoch(2)
    shuffle = torch.randperm(size, generator=order_generator(5, 2)).tolist()
    assert list(sampler) == whole_batches(shuffle, batch, drop_last)


def mean_spread(order: list[int], lengths: list[int], batch: int) -> float:
    spreads = [max(lengths[i] for i in order[k:k + batch]) - min(lengths[i] for i in order[k:k + batch])
               for k in range(0, len(order), batch)]
    return sum(spreads) / len(spreads)


def test_length_grouped_order_is_in_whole_batches_of_similar_length():
    lengths = [(i * 37) % 101 + 1 for i in range(410)]
    sampler = SeededLengthGroupedSampler(8, lengths=lengths, seed=0)
    order = list(sampler)
    assert len(order) == len(sampler) == 416 and set(order) == set(range(410))
    assert order == list(SeededLengthGroupedSampler(8, lengths=lengths, seed=0))
    shuffled = list(SeededRandomSampler(410, 8, seed=0))
    assert mean_spread(order, lengths, 8) < mean_spread(shuffled, lengths, 8) / 3
