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


def test_a_training_log_gives_the_speed_of_its_window_with_evaluations_set_aside(tmp_path, monkeypatch):
    """Each training log's `tokens_per_second` and `examples_per_second` count what was trained since
    the log before, over the seconds since then less those spent evaluating or saving; and with a
    known peak its `model_flops_utilization` is the MFU formula over that window."""
    import torch
    from transformers import BertConfig, TrainingArguments

    from bigmodel_cli.mlm.sparse_head import SparseHeadBertForMaskedLM
    from bigmodel_cli.mlm.trainer import MLMTrainer

    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, disable_tqdm=True)
    trainer = MLMTrainer(model=SparseHeadBertForMaskedLM(config), args=args, seq_length=64)
    monkeypatch.setenv("BIGMODEL_PEAK_TFLOPS", "0.001")
    # at 100 s: 400 real tokens, 4 examples, 60 masked so far, 2 s set aside; now, at 110 s: 1000, 10, 150, 5 s
    trainer.window = (100.0, 400.0, 4.0, 60.0, 2.0)
    trainer.sums = torch.tensor([1000.0, 10.0, 7.5, 150.0], dtype=torch.float64)
    trainer.aside_seconds = 5.0
    monkeypatch.setattr("bigmodel_cli.trainer.trainer.time.perf_counter", lambda: 110.0)
    trainer.log({"loss": 1.0})
    entry = trainer.state.log_history[-1]
    seconds = 10.0 - 3.0  # the window less the 3 s evaluated inside it
    assert entry["tokens_per_second"] == round(600 / seconds, 1)
    assert entry["examples_per_second"] == round(6 / seconds, 2)
    work = 600 * flops_per_token(2, 16, 32, 64) + 90 * flops_per_masked_token(16, 50)
    assert entry["model_flops_utilization"] == round(work / seconds / 1e9, 4)
    assert trainer.window == (110.0, 1000.0, 10.0, 150.0, 5.0)  # the next window starts here
    trainer.log({"eval_loss": 2.0})  # an evaluation's log: no speed
    assert "tokens_per_second" not in trainer.state.log_history[-1]

