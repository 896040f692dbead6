"""Masks drawn on the device: the same masks as the host draws, from a hash instead of a generator.

CI has no GPU, so the device path runs here on CPU tensors, which is where "the same bits on every
device" can be checked: integer operations only until the last step, which is exact in float32.
"""

from __future__ import annotations

import pytest
import torch
from test_mlm import A, B, FakeTokenizer, row

from bigmodel_cli.mlm.masking import DeviceMasks, MLMCollator, masked_slots, mix32, uniform_bits


def murmur_finaliser(h: int) -> int:
    """MurmurHash3's fmix32 in plain Python integers: the reference for the two-halves multiply."""
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    return h ^ (h >> 16)


@pytest.mark.unit
def test_the_hash_is_murmur3s_finaliser_bit_for_bit():
    values = [0, 1, 2, 0xFFFFFFFF, 0x80000000, 123456789, 0xDEADBEEF] + torch.randint(0, 2**32, (200,)).tolist()
    got = mix32(torch.tensor(values, dtype=torch.long)).tolist()
    assert got == [murmur_finaliser(v) for v in values]


@pytest.mark.unit
def test_draws_are_uniform_and_independent_of_each_other():
    ids = torch.arange(200_000)
    draws = [(bits >> 8).double() / 2**24 for bits in uniform_bits(12345, ids // 100, ids % 100)]
    for u in draws:
        assert u.min() >= 0 and u.max() < 1
        assert u.mean().item() == pytest.approx(0.5, abs=0.005)
        assert (u < 0.15).double().mean().item() == pytest.approx(0.15, abs=0.003)
    assert torch.corrcoef(torch.stack(draws)).abs().triu(1).max() < 0.01
    again = uniform_bits(12346, ids // 100, ids % 100)[0]  # another key: other bits
    assert (again == uniform_bits(12345, ids // 100, ids % 100)[0]).double().mean() < 0.001


ROWS = [row([A, B], [3, 8]), row([B], [11]), row([A[:20], B[:5], A[:9]], [5, 6, 7])]  # packed, padded


@pytest.mark.unit
@pytest.mark.parametrize("whole_words", [False, True], ids=["tokens", "whole-words"])
def test_device_masks_equal_the_host_masks(whole_words, monkeypatch):
    """The batch that leaves unmasked, masked by `DeviceMasks` (here on CPU tensors), equals the
    batch the collator masks itself: inputs and labels to the bit, the same masked positions first
    and only unmasked ones (label -100) in the spare slots."""
    from bigmodel_cli.mlm import masking

    if whole_words:  # ids divisible by 3 continue a word
        monkeypatch.setattr(masking, "word_start_table", lambda tok: torch.arange(len(tok)) % 3 != 0)
    for epoch, probability in [(0, 0.15), (3, 0.15), (1, 0.5)]:
        host = MLMCollator(FakeTokenizer(), probability, seed=9, positions=True, whole_words=whole_words)
        device = MLMCollator(FakeTokenizer(), probability, seed=9, positions=True, whole_words=whole_words, on_device=True)
        host.epoch = device.epoch = epoch
        expected = host(ROWS)
        left = device(ROWS)
        assert "labels" not in left and not (left["input_ids"] == 4).any()  # it leaves unmasked (4: the mask id)
        got = DeviceMasks(device)(left)
        assert set(got) == set(expected)
        for key in ("input_ids", "labels", "position_ids", "attention_mask"):
            assert torch.equal(got[key], expected[key]), (epoch, key)
        slots = got["masked_positions"]
        n = len(expected["masked_positions"])
        assert torch.equal(slots[:n], expected["masked_positions"])
        assert (got["labels"].reshape(-1)[slots[n:]] == -100).all()


@pytest.mark.unit
def test_a_line_is_masked_the_same_in_any_batch():
    collator = MLMCollator(FakeTokenizer(), 0.3, seed=1)
    alone = collator([row([A], [7])])
    among = collator([row([B, A], [2, 7]), row([B], [4])])
    start = len(B)
    assert torch.equal(among["labels"][0, start : start + len(A)], alone["labels"][0])
    assert torch.equal(among["input_ids"][0, start : start + len(A)], alone["input_ids"][0])


@pytest.mark.unit
def test_a_batch_drawing_no_mask_gets_its_first_maskable_token_masked():
    collator = MLMCollator(FakeTokenizer(), 1e-9, seed=1)
    batch = collator([row([A], [7])])
    assert (batch["labels"] != -100).sum() == 1 and batch["labels"][0, 1] == A[1] and batch["input_ids"][0, 1] == 4
    assert (collator.mask(torch.tensor(A), 7)[1] != -100).sum() == 0  # one line alone: no fallback


@pytest.mark.unit
def test_masked_slots_are_fixed_by_the_shape_and_hold_every_masked_token():
    labels = torch.full((32, 128), -100)
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        labels.fill_(-100)
        chosen = torch.rand(labels.shape, generator=generator) < 0.15
        labels[chosen] = 7
        slots = masked_slots(labels, 0.15)
        count = int(chosen.sum())
        assert len(slots) == masked_slots(torch.full((32, 128), -100), 0.15).numel() < 32 * 128 * 0.3
        assert torch.equal(slots[:count], chosen.reshape(-1).nonzero().squeeze(1))
    assert len(masked_slots(torch.full((2, 8), -100), 0.15)) == 16  # small batches: every token


@pytest.mark.smoke
def test_training_with_device_masks_equals_training_with_host_masks(tmp_path, pretrained):
    """Twelve steps of pretraining, masks drawn by the collator or on the device: the same losses and
    the same weights (to float rounding: the loss sums over spare slots too, each adding zero)."""
    import json

    from conftest import run_cli
    from safetensors.torch import load_file

    runs = {}
    for on_device in ("false", "true"):
        run_dir = tmp_path / on_device
        result = run_cli("pretrain", "-r", "pretrain/tiny-debug", "-o", run_dir, "-q", "--set", f"tokenizer.name_or_path={pretrained}",
                         "--set", "training.max_steps=12", "--set", "training.report_to=[none]",
                         "--set", f"data.mask_on_device={on_device}")
        assert result.returncode == 0, result.stderr[-2000:]
        runs[on_device] = (json.loads((run_dir / "metrics.json").read_text()), load_file(run_dir / "model.safetensors"))
    (host, host_weights), (device, device_weights) = runs["false"], runs["true"]
    for key in ("train_loss", "eval_loss", "train_masked_tokens", "train_real_tokens"):
        assert device[key] == pytest.approx(host[key], rel=1e-5), key
    assert all(torch.allclose(device_weights[k], host_weights[k], atol=1e-5) for k in host_weights)


@pytest.mark.unit
def test_a_loader_worker_gets_the_collator_without_its_device_tables():
    """The tables a collator caches where it drew (the GPU's, under `DeviceMasks`) stay in the training
    process: a loader worker given them would share CUDA memory across processes."""
    import pickle

    collator = MLMCollator(FakeTokenizer(), on_device=True)
    batch = collator([row([A, B], [0, 1]), row([B], [2])])
    DeviceMasks(collator)(batch)
    assert collator._tables  # cached where the masks were drawn
    copy = pickle.loads(pickle.dumps(collator))
    assert copy._tables == {} and copy.seed == collator.seed and copy.on_device
    assert torch.equal(DeviceMasks(copy)(batch)["input_ids"], DeviceMasks(collator)(batch)["input_ids"])
