"""The fast CPU dropout and the attention that carries it: same statistics, same maths as stock."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

from bigmodel_cli.kernels import (
    ATTENTION,
    FastDropout,
    attention,
    classify_from_first_token,
    drop_threshold,
    fast_dropout,
    use_fast_dropout,
)

NO_DROP = 1e-6  # rounds to a threshold of 0: the training branch runs, nothing is dropped


def test_fast_dropout_drops_p_and_keeps_the_expectation():
    torch.manual_seed(0)
    x = torch.ones(1_000_000)
    y = fast_dropout(x, 0.1)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - 0.1) < 0.002
    kept = y[y != 0]
    assert torch.all(kept == kept[0])  # every kept element scaled alike
    assert kept[0].item() == pytest.approx(32768 / (32768 - drop_threshold(0.1)))
    assert y.mean().item() == pytest.approx(1.0, abs=0.005)


def test_fast_dropout_masks_are_uniform_over_positions():
    """Four elements share each 64-bit draw: none of the four slots may be biased."""
    torch.manual_seed(1)
    y = fast_dropout(torch.ones(400_000, 4), 0.3)
    for slot in range(4):
        assert abs((y[:, slot] == 0).float().mean().item() - 0.3) < 0.006


def test_fast_dropout_gradient_is_the_mask_times_the_scale():
    torch.manual_seed(2)
    x = torch.randn(64, 33, requires_grad=True)
    y = fast_dropout(x, 0.25)
    y.backward(torch.full_like(y, 2.0))
    scale = 32768 / (32768 - drop_threshold(0.25))
    assert torch.equal(x.grad, (y != 0).float() * 2.0 * scale)


def test_fast_dropout_follows_the_seed_and_is_off_in_evaluation():
    x = torch.randn(1000)
    torch.manual_seed(3)
    a = fast_dropout(x, 0.1)
    torch.manual_seed(3)
    assert torch.equal(a, fast_dropout(x, 0.1))
    assert not torch.equal(a, fast_dropout(x, 0.1))
    assert fast_dropout(x, 0.1, training=False) is x
    assert fast_dropout(x, 0.0) is x
    assert torch.count_nonzero(fast_dropout(x, 1.0)) == 0


def tiny_classifier(dropout: float) -> BertForSequenceClassification:
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return BertForSequenceClassification(config)


def twins(dropout: float):
    """Two classifiers with the same seeded weights: (the one left stock, the one to change)."""
    torch.manual_seed(0)
    stock, fast = tiny_classifier(dropout), tiny_classifier(dropout)
    fast.load_state_dict(stock.state_dict())
    return stock, fast


def pair(dropout: float):
    stock, fast = twins(dropout)
    assert use_fast_dropout(fast)
    return stock, fast


def test_model_with_fast_dropout_computes_what_the_stock_one_does():
    stock, fast = pair(NO_DROP)
    assert fast.config._attn_implementation == ATTENTION
    assert sum(isinstance(m, FastDropout) for m in fast.modules()) == sum(
        type(m) is torch.nn.Dropout for m in stock.modules()) > 0
    ids = torch.randint(5, 100, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[0, 4:] = 0
    mask[1, 6:] = 0
    stock.train()
    fast.train()
    padded = fast(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(padded, stock(input_ids=ids, attention_mask=mask).logits, rtol=0, atol=1e-6)
    # the padding mask reaches the training branch: a padded row scores as the same row unpadded
    torch.testing.assert_close(padded[:1], fast(input_ids=ids[:1, :4]).logits, rtol=0, atol=1e-6)


def test_model_with_fast_dropout_drops_in_training_only():
    stock, fast = pair(0.1)
    ids = torch.randint(5, 100, (4, 9))
    fast.train()
    torch.manual_seed(5)
    first = fast(input_ids=ids).logits
    assert not torch.allclose(first, fast(input_ids=ids).logits)
    torch.manual_seed(5)
    torch.testing.assert_close(first, fast(input_ids=ids).logits, rtol=0, atol=0)  # seeded
    stock.eval()
    fast.eval()
    torch.testing.assert_close(fast(input_ids=ids).logits, stock(input_ids=ids).logits, rtol=0, atol=1e-6)


def test_boolean_block_mask_as_packing_builds_it():
    """Packed pretraining hands a (batch, 1, query, key) boolean mask: the training branch must
    apply it as SDPA does."""
    torch.manual_seed(6)
    q, k, v = (torch.randn(2, 4, 6, 8) for _ in range(3))
    segment = torch.tensor([[1, 1, 1, 2, 2, 0], [1, 1, 2, 2, 2, 2]])
    mask = ((segment[:, :, None] == segment[:, None, :]) & (segment[:, None, :] > 0)) | torch.eye(6, dtype=torch.bool)
    mask = mask[:, None]
    module = torch.nn.Module()
    module.train()
    module.is_causal = False
    ours, _ = attention(module, q, k, v, mask, dropout=NO_DROP)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)


def test_packed_rows_in_training_mode_match_the_stock_model():
    """A masked LM with the fast attention and dropout, in training mode, fed packed rows as the
    collator builds them (block-diagonal boolean masks, per-line positions, padding): the same loss,
    logits and gradients as the stock model on the same batch."""
    from transformers import BertForMaskedLM

    from bigmodel_cli.mlm.masking import MLMCollator

    class Tokenizer:
        pad_token_id, mask_token_id, all_special_ids = 0, 4, [0, 1, 2, 3, 4]

        def __len__(self):
            return 100

    def config():  # one each: the attention implementation is set on the config
        return BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                          hidden_dropout_prob=NO_DROP, attention_probs_dropout_prob=NO_DROP)

    torch.manual_seed(0)
    stock = BertForMaskedLM(config()).train()
    fast = BertForMaskedLM(config()).train()
    fast.load_state_dict(stock.state_dict())
    assert use_fast_dropout(fast) and stock.config._attn_implementation == "sdpa"

    def line(n):
        return [2, *torch.randint(5, 100, (n,)).tolist(), 3]

    rows = [[line(9), line(5), line(3)], [line(12)], [line(4), line(6)]]
    batch = MLMCollator(Tokenizer(), 0.3, seed=3)([{"input_ids": [t for piece in r for t in piece],
                                                     "lengths": [len(piece) for piece in r],
                                                     "example_ids": list(range(10 * i, 10 * i + len(r)))}
                                                    for i, r in enumerate(rows)])
    assert batch["attention_mask"].dim() == 4 and batch["attention_mask"].dtype == torch.bool
    ours, theirs = fast(**batch), stock(**batch)
    torch.testing.assert_close(ours.logits, theirs.logits, rtol=0, atol=1e-5)
    ours.loss.backward()
    theirs.loss.backward()
    grads = dict(stock.named_parameters())
    for name, parameter in fast.named_parameters():
        torch.testing.assert_close(parameter.grad, grads[name].grad, rtol=1e-4, atol=1e-6, msg=name)


def test_saved_model_loads_with_plain_sdpa(tmp_path):
    _, fast = pair(0.1)
    fast.save_pretrained(tmp_path)
    assert ATTENTION not in (tmp_path / "config.json").read_text()
    assert "_attn_implementation" not in json.loads((tmp_path / "config.json").read_text())
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert loaded.config._attn_implementation == "sdpa"
    assert not any(isinstance(m, FastDropout) for m in loaded.modules())


def eager_pair():
    """Stock attention in plain PyTorch: its padding mask is additive floats, not SDPA's booleans."""
    stock, fast = twins(0.0)
    for model in (stock, fast):
        model.set_attn_implementation("eager")
    return stock, fast


@pytest.mark.parametrize("make_pair", [lambda: pair(NO_DROP), eager_pair], ids=["fast-sdpa", "eager"])
def test_classifier_computing_its_last_layer_for_the_first_token_only_is_exact(make_pair):
    stock, fast = make_pair()
    with torch.no_grad():  # BERT starts with zero biases: give the key and value biases a part to play
        for name, parameter in stock.named_parameters():
            if name.endswith("bias"):
                parameter.normal_()
    fast.load_state_dict(stock.state_dict())
    assert classify_from_first_token(fast) and classify_from_first_token(fast)  # idempotent
    assert type(fast.bert.encoder.layer[-1]).__name__ == "FirstTokenBertLayer"
    assert type(fast.bert.encoder.layer[0]) is type(stock.bert.encoder.layer[0])
    ids = torch.randint(5, 100, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[0, 4:] = 0
    labels = torch.tensor([0, 1, 1])
    for model in (stock, fast):
        model.train()
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    for (name, a), b in zip(stock.named_parameters(), fast.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=0, atol=1e-6, msg=name)
    stock.eval()
    fast.eval()
    torch.testing.assert_close(fast(input_ids=ids, attention_mask=mask).logits,
                               stock(input_ids=ids, attention_mask=mask).logits, rtol=0, atol=1e-6)
    assert fast.state_dict().keys() == stock.state_dict().keys()


def test_first_token_layer_under_attention_dropout_is_the_textbook_attention():
    """With dropped attention weights (their sum no longer 1), the folded keys and values still give
    softmax(qK^T) with dropout, times V, for the first query."""
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.5)
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    assert classify_from_first_token(model)
    layer = model.bert.encoder.layer[-1]
    layer.train()
    with torch.no_grad():  # BERT's initial biases are zeros: these must count
        for proj in (layer.attention.self.key, layer.attention.self.value):
            proj.bias.normal_()
    x = torch.randn(2, 5, 32)
    torch.manual_seed(7)
    out = layer(x)
    own = layer.attention.self
    q = own.query(x[:, :1]).view(2, 1, 4, 8).transpose(1, 2)
    k, v = (proj(x).view(2, 5, 4, 8).transpose(1, 2) for proj in (own.key, own.value))
    torch.manual_seed(7)  # the same draws: one per (example, head, key), in the same order
    weights = fast_dropout(torch.softmax(q @ k.transpose(-1, -2) * own.scaling, dim=-1), 0.5)
    assert (weights == 0).any()
    expected = layer.feed_forward_chunk(layer.attention.output((weights @ v).transpose(1, 2).reshape(2, 1, 32), x[:, :1]))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


def test_first_token_shortcut_leaves_other_models_alone():
    from transformers import BertForMaskedLM

    model = BertForMaskedLM(tiny_classifier(0.0).config)
    assert not classify_from_first_token(model)
    assert all(type(layer).__name__ == "BertLayer" for layer in model.bert.encoder.layer)


def test_gpu_attention_builds_masks_without_a_host_sync_and_computes_what_stock_does(monkeypatch):
    """The GPU path (SDPA itself, masks always built) checked on CPU tensors: the same logits as the
    stock model, with and without padding, and no `padding_mask.all()` read in the forward pass."""
    from bigmodel_cli import kernels

    stock, gpu = twins(NO_DROP)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert kernels.use_mask_without_sync(gpu) and gpu.config._attn_implementation == kernels.DEVICE_ATTENTION
    assert not kernels.use_fast_dropout(gpu)  # the CPU kernels stay off where CUDA is
    reads = []
    original = torch.Tensor.__bool__
    monkeypatch.setattr(torch.Tensor, "__bool__", lambda t: reads.append(1) or original(t))
    ids = torch.randint(5, 100, (3, 7))
    for mask in (torch.ones(3, 7, dtype=torch.long), torch.tensor([[1] * 7, [1] * 5 + [0] * 2, [1] * 3 + [0] * 4])):
        stock.eval()
        gpu.eval()
        with torch.no_grad():
            expected = stock(input_ids=ids, attention_mask=mask).logits
            reads.clear()
            got = gpu(input_ids=ids, attention_mask=mask).logits
            assert not reads
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.bfloat16, 0.05), (torch.float16, 0.01)])
def test_fast_paths_under_autocast_stay_within_its_rounding_of_fp32(dtype, tolerance):
    """The folded last layer, the fast dropout's attention and the sparse MLM head under bf16 or fp16
    autocast (as `training.bf16` / `training.fp16` run them on a GPU), against the stock fp32 model,
    on logits of size ~1 and on the loss: within 0.05 absolute in bf16 (8 bits of mantissa: ~0.4 %
    per rounding), 0.01 in fp16 (11 bits: ~0.05 %)."""
    from transformers import BertForMaskedLM

    from bigmodel_cli.mlm.sparse_head import SparseHeadBertForMaskedLM

    stock, fast = twins(NO_DROP)
    assert use_fast_dropout(fast) and classify_from_first_token(fast)
    stock.train()
    fast.train()
    ids = torch.randint(5, 100, (4, 12))
    mask = torch.ones(4, 12, dtype=torch.long)
    mask[1, 8:] = 0
    labels = torch.tensor([0, 1, 1, 0])
    expected = stock(input_ids=ids, attention_mask=mask, labels=labels)
    with torch.autocast("cpu", dtype=dtype):
        got = fast(input_ids=ids, attention_mask=mask, labels=labels)
    assert got.logits.dtype == dtype  # the fast path ran in that precision, not silently in fp32
    torch.testing.assert_close(got.logits.float(), expected.logits, rtol=0, atol=tolerance)
    assert abs(got.loss.item() - expected.loss.item()) < tolerance
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    sparse, full = SparseHeadBertForMaskedLM(config), BertForMaskedLM(BertConfig(**config.to_dict()))
    full.load_state_dict(sparse.state_dict())
    mlm_labels = torch.where(torch.rand(4, 12) < 0.3, ids, torch.full_like(ids, -100))
    with torch.autocast("cpu", dtype=dtype):
        sparse_loss = sparse(input_ids=ids, attention_mask=mask, labels=mlm_labels).loss
    full_loss = full(input_ids=ids, attention_mask=mask, labels=mlm_labels).loss
    assert abs(sparse_loss.item() - full_loss.item()) < tolerance


def test_token_classifier_with_fast_dropout_computes_what_the_stock_one_does():
    """BERT's token classifier gets the fast paths too (`tested_model`): the same logits per token,
    padded or not, in training mode."""
    from transformers import BertForTokenClassification

    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, hidden_dropout_prob=NO_DROP, attention_probs_dropout_prob=NO_DROP,
                        num_labels=5)
    torch.manual_seed(0)
    stock, fast = BertForTokenClassification(config), BertForTokenClassification(config)
    fast.load_state_dict(stock.state_dict())
    assert use_fast_dropout(fast) and any(isinstance(m, FastDropout) for m in fast.modules())
    ids = torch.randint(5, 100, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[0, 4:] = 0
    stock.train()
    fast.train()
    padded = fast(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(padded, stock(input_ids=ids, attention_mask=mask).logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(padded[:1, :4], fast(input_ids=ids[:1, :4]).logits, rtol=0, atol=1e-6)
