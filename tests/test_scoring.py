import numpy as np
import pytest

from bigmodel_cli.scoring import load_metric, score_logits, task_metrics

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

    from bigmodel_cli.scoring import predict_logits

    model, tokenizer, features = tiny_classifier_and_examples()
    monkeypatch.setenv("BIGMODEL_EVAL_THREADS", threads)
    before = torch.get_num_threads()
    logits = predict_logits(model, tokenizer, list(features) if as_rows else features, batch_size=8)
    assert torch.get_num_threads() == before
    with torch.inference_mode():
        alone = np.stack([model(input_ids=torch.tensor([ids])).logits[0].numpy() for ids in features["input_ids"]])
    np.testing.assert_allclose(logits, alone, rtol=0, atol=1e-5)
