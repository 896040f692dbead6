"""The MFU formula, by hand on BERT-base, and the peak lookup."""

from __future__ import annotations

import types

import pytest

from bigmodel_cli.mfu import flops_per_masked_token, flops_per_token, peak_flops, utilization

pytestmark = pytest.mark.unit


def test_bert_base_work_per_token_by_hand():
    # 12 layers x (4 x 768^2 + 2 x 768 x 3072) = 84.9 M multiply-adds in the linears, x 6 for training
    assert flops_per_token(12, 768, 3072, 128) == 6 * 12 * (4 * 768 * 768 + 2 * 768 * 3072) + 12 * 12 * 128 * 768
    assert flops_per_token(12, 768, 3072, 128) == pytest.approx(523.7e6, rel=1e-3)
    assert flops_per_masked_token(768, 30522) == 6 * (768 * 768 + 768 * 30522)


def test_utilization_over_the_known_peak(monkeypatch):
    monkeypatch.delenv("BIGMODEL_PEAK_TFLOPS", raising=False)
    config = types.SimpleNamespace(num_hidden_layers=12, hidden_size=768, intermediate_size=3072, vocab_size=30522)
    per_second = 1e6 * flops_per_token(12, 768, 3072, 128) + 0.15e6 * flops_per_masked_token(768, 30522)
    got = utilization(config, 128, 1e6, 0.15e6, 1.0, "NVIDIA H200")
    assert got["train_model_flops_per_second"] == pytest.approx(per_second)
    assert got["model_flops_utilization"] == pytest.approx(per_second / 989.4e12)
    assert "model_flops_utilization" not in utilization(config, 128, 1e6, 0.15e6, 1.0, None)  # a CPU: no peak
    assert peak_flops("NVIDIA H100 PCIe") == 756e12 and peak_flops("NVIDIA H100 80GB HBM3") == 989.4e12
    monkeypatch.setenv("BIGMODEL_PEAK_TFLOPS", "100")
    assert peak_flops("Some GPU") == 100e12
