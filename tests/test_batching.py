"""Fine-tuning batches bucketed to a few lengths: shapes repeat, padding stays bounded, the model's
outputs do not change."""

from __future__ import annotations

import numpy as np
import pytest

from bigmodel_cli.classification.batching import BucketPadding, bucket_for, bucket_lengths

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("max_length", [8, 64, 100, 128, 512])
def test_bucket_lengths_are_few_and_waste_at_most_half(max_length):
    buckets = bucket_lengths(max_length)
    assert buckets == sorted(set(buckets)) and buckets[-1] == max_length
    assert len(buckets) <= 2 * np.log2(max_length)
    for length in range(1, max_length + 1):
        bucket = bucket_for(length, buckets)
        assert length <= bucket <= max(8, 1.5 * length)  # never more than half again the batch's longest


def test_bucket_padding_repeats_shapes_and_keeps_the_logits():
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast, DataCollatorWithPadding

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(95)]
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)})
    rng = np.random.default_rng(0)
    rows = [[2, *rng.integers(5, 100, rng.integers(1, 120)).tolist(), 3] for _ in range(256)]
    features = [{"input_ids": r, "attention_mask": [1] * len(r), "token_type_ids": [0] * len(r), "label": i % 2}
                for i, r in enumerate(rows)]
    bucketed, plain = BucketPadding(tokenizer, 128), DataCollatorWithPadding(tokenizer)
    shapes = {bucketed(features[i : i + 8])["input_ids"].shape[1] for i in range(0, 256, 8)}
    longest = {plain(features[i : i + 8])["input_ids"].shape[1] for i in range(0, 256, 8)}
    assert shapes <= set(bucket_lengths(128)) and len(shapes) < len(longest)
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                                     num_attention_heads=4, intermediate_size=64)).eval()
    a, b = bucketed(features[:8]), plain(features[:8])
    assert a["input_ids"].shape[1] > b["input_ids"].shape[1] and torch.equal(a["labels"], b["labels"])
    with torch.no_grad():
        torch.testing.assert_close(model(**a).logits, model(**b).logits, rtol=0, atol=1e-5)
