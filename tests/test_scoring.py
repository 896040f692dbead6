import numpy as np
import pytest

from bigmodel_cli.classification.metrics import load_metric, score_logits, task_metrics

pytestmark = pytest.mark.unit

PRED = [1, 0, 1, 1, 0, 1]
REF = [1, 0, 0, 1, 1, 1]


def test_accuracy_and_f1_by_hand():
    # 4 of 6 right; positives: tp=3, fp=1, fn=1 -> precision 3/4, recall 3/4, F1 0.75
    scores = task_metrics(("accuracy", "f1"), PRED, REF)
    assert scores["accuracy"] == pytest.approx(4 / 6)
    assert scores["f1"] == pytest.approx(0.75)
    assert scores["combined_score"] == pytest.approx((4 / 6 + 0.75) / 2)


def test_matthews_by_hand():
    # tp=3 tn=1 fp=1 fn=1: (3*1 - 1*1) / sqrt(4*4*2*2) = 2/8
    assert load_metric("matthews_correlation").compute(predictions=PRED, references=REF)[
        "matthews_correlation"
    ] == pytest.approx(0.25)


def test_pearson_and_spearman_by_hand():
    x, y = [1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0]
    # pearson: cov 1.0 / (var 1.25) = 0.8; spearman on the same ranks: 0.8
    assert task_metrics(("pearsonr",), x, y)["pearson"] == pytest.approx(0.8)
    assert task_metrics(("spearmanr",), x, y)["spearmanr"] == pytest.approx(0.8)


def test_loss_is_the_mean_cross_entropy():
    logits = np.array([[0.0, 0.0], [2.0, 0.0]])
    scores = score_logits(logits, np.array([1, 0]), ("accuracy",), is_regression=False)
    expected = (np.log(2) + np.log(1 + np.exp(-2))) / 2
    assert scores["loss"] == pytest.approx(expected)
    assert scores["accuracy"] == pytest.approx(0.5)  # argmax of a tie is class 0


def tiny_classifier_and_examples(n: int = 60):
    import torch
    from datasets import Dataset
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    torch.manual_seed(0)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(95)]
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)})
    assert len(tokenizer) == 100
    model = BertForSequenceClassification(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                                     num_attention_heads=4, intermediate_size=64))
    rng = np.random.default_rng(0)
    rows = [[2, *rng.integers(5, 100, rng.integers(1, 40)).tolist(), 3] for _ in range(n)]
    features = Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows],
                                  "token_type_ids": [[0] * len(r) for r in rows]})
    return model, tokenizer, features


@pytest.mark.parametrize("as_rows", [False, True], ids=["dataset", "list-of-rows"])
@pytest.mark.parametrize("threads", ["1", "2"])
def test_predict_logits_in_original_order_whatever_the_threads(threads, as_rows, monkeypatch):
    """Length-sorted, padded batches (run side by side on CPU cores) score every example as the
    model scores it alone, unpadded, in the caller's order; the thread count is restored."""
    import torch
    from transformers.models.bert.modeling_bert import BertLayer

    from bigmodel_cli.classification.inference import predict_logits

    model, tokenizer, features = tiny_classifier_and_examples()
    model.eval()
    monkeypatch.setenv("BIGMODEL_EVAL_THREADS", threads)
    before = torch.get_num_threads()
    logits = predict_logits(model, tokenizer, list(features) if as_rows else features, batch_size=8)
    assert torch.get_num_threads() == before
    # the caller's model is left as it was: the reference below is the stock model, not a folded one
    assert type(model.bert.encoder.layer[-1]) is BertLayer and not model.training
    with torch.inference_mode():
        alone = np.stack([model(input_ids=torch.tensor([ids])).logits[0].numpy() for ids in features["input_ids"]])
    np.testing.assert_allclose(logits, alone, rtol=0, atol=1e-5)
    model.train()
    predict_logits(model, tokenizer, features, batch_size=8)
    assert model.training  # evaluated in eval mode, handed back in training mode


def brute_force_cost(lengths, most, per_batch):
    """The least cost over every way to cut `lengths` into consecutive batches of at most `most`."""
    if not lengths:
        return 0
    return min(size * lengths[0] + per_batch + brute_force_cost(lengths[size:], most, per_batch)
               for size in range(1, min(most, len(lengths)) + 1))


@pytest.mark.parametrize("seed", range(6))
def test_length_batches_are_the_cheapest_cut(seed):
    from bigmodel_cli.classification.inference import length_batches

    rng = np.random.default_rng(seed)
    lengths = sorted(rng.integers(3, 60, rng.integers(1, 11)).tolist(), reverse=True)
    most, per_batch = int(rng.integers(1, 5)), int(rng.integers(0, 40))
    spans = length_batches(lengths, most, per_batch)
    assert [s for s, _ in spans] == [0] + [e for _, e in spans[:-1]] and spans[-1][1] == len(lengths)
    assert all(0 < e - s <= most for s, e in spans)
    cost = sum((e - s) * lengths[s] + per_batch for s, e in spans)
    assert cost == brute_force_cost(lengths, most, per_batch)


def test_length_batches_cut_less_padding_than_fixed_batches():
    from bigmodel_cli.classification.inference import length_batches

    lengths = [40] * 3 + [20] * 30  # fixed batches of 32 pad 29 of 30 twenties to 40
    spans = length_batches(lengths, 32, per_batch=8)
    assert spans == [(0, 3), (3, 33)]
    with pytest.raises(ValueError, match="sorted"):
        length_batches([1, 2], 4)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("stored_mask", [True, False])
def test_pad_batch_pads_as_the_tokenizer_does(side, stored_mask):
    from bigmodel_cli.classification.inference import pad_batch

    _, tokenizer, features = tiny_classifier_and_examples(7)
    tokenizer.padding_side = side
    rows = [{k: v for k, v in row.items() if stored_mask or k != "attention_mask"} for row in features]
    ours, theirs = pad_batch(rows, tokenizer), tokenizer.pad(rows, return_tensors="pt")
    assert sorted(ours) == sorted(theirs) == ["attention_mask", "input_ids", "token_type_ids"]
    for key in theirs:
        assert ours[key].dtype == theirs[key].dtype and ours[key].tolist() == theirs[key].tolist(), key
    assert ours["attention_mask"].sum() == sum(len(r["input_ids"]) for r in rows) < ours["attention_mask"].numel()
