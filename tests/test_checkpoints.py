"""Our atomic checkpoint writes what Trainer's own writes: the guard on the transformers pin.

`trainer/checkpoints.py` copies what `Trainer._save_checkpoint` saves. When a new transformers
version adds a file to its checkpoints, this test fails before a resume silently loses that state.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.unit


def one_step_checkpoint(trainer_class, run_dir, **extra):
    import torch
    from datasets import Dataset
    from transformers import BertConfig, BertForSequenceClassification, TrainingArguments

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=32))
    rows = Dataset.from_dict({"input_ids": [[1, 2, 3, 4]] * 8, "attention_mask": [[1] * 4] * 8, "labels": [0, 1] * 4})
    args = TrainingArguments(output_dir=str(run_dir), max_steps=1, per_device_train_batch_size=4, save_strategy="steps",
                             save_steps=1, report_to="none", use_cpu=True, disable_tqdm=True, seed=0)
    trainer = trainer_class(model=model, args=args, train_dataset=rows, **extra)
    trainer.train()
    return sorted(p.name for p in (run_dir / "checkpoint-1").iterdir())


def test_our_checkpoint_holds_every_file_of_trainers_own(tmp_path):
    from transformers import Trainer

    from bigmodel_cli.trainer.trainer import CountingTrainer

    stock = one_step_checkpoint(Trainer, tmp_path / "stock")
    ours = one_step_checkpoint(CountingTrainer, tmp_path / "ours")
    assert {"model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json"} <= set(stock)
    assert [name for name in stock if name not in ours] == []
    assert [name for name in ours if name not in stock] == ["bigmodel_state_0.json"]  # our own, beside Trainer's
