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
