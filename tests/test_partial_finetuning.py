"""`model.train_layers` (all, head, top-K) and `model.freeze_embeddings`: what fine-tuning updates."""

import pytest
import torch
from conftest import run_cli
from transformers import BertConfig, BertForSequenceClassification

from bigmodel_cli.classification.model import freeze_for
from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.recipe import ClassifierSection


def tiny():
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3,
                                                    num_attention_heads=2, intermediate_size=32, num_labels=2))


def trainable(model) -> set[str]:
    return {name.split(".")[0] if not name.startswith("bert.") else ".".join(name.split(".")[:4 if ".layer." in name else 2])
            for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.unit
@pytest.mark.parametrize("layers, embeddings, expected", [
    ("all", False, {"classifier", "bert.pooler", "bert.embeddings", "bert.encoder.layer.0", "bert.encoder.layer.1",
                    "bert.encoder.layer.2"}),
    ("all", True, {"classifier", "bert.pooler", "bert.encoder.layer.0", "bert.encoder.layer.1", "bert.encoder.layer.2"}),
    ("head", False, {"classifier", "bert.pooler"}),
    ("top-2", False, {"classifier", "bert.pooler", "bert.encoder.layer.1", "bert.encoder.layer.2"}),
])
def test_only_the_named_parts_train_and_the_header_counts_them(layers, embeddings, expected):
    model = tiny()
    note = freeze_for(model, layers, embeddings)
    assert trainable(model) == expected
    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert f"{count:,} of" in note


@pytest.mark.unit
def test_a_step_leaves_the_frozen_weights_as_they_were():
    model = tiny()
    freeze_for(model, "top-1", False)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(input_ids=torch.randint(5, 50, (4, 7)), labels=torch.tensor([0, 1, 0, 1])).loss.backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith(("classifier", "bert.pooler", "bert.encoder.layer.2")) for n in changed)
    assert all(p.grad is None for n, p in model.named_parameters() if n.startswith("bert.encoder.layer.0"))


@pytest.mark.unit
def test_more_layers_than_the_model_has_and_bad_values_are_refused():
    with pytest.raises(BigmodelError, match="has 3 encoder layers; use at most top-3"):
        freeze_for(tiny(), "top-4", False)
    for bad in ("top-0", "bottom-2", "some"):
        with pytest.raises(ValueError, match="all, head or top-K"):
            ClassifierSection(train_layers=bad)


@pytest.mark.smoke
def test_finetune_head_only_says_so_and_keeps_the_encoder(tmp_path, pretrained):
    from safetensors.torch import load_file

    result = run_cli("finetune", "-r", "finetune/mrpc-tiny-debug", "-m", pretrained, "-o", tmp_path / "run",
                     "--set", "model.train_layers=head")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "trains the head only" in result.stderr
    start, end = load_file(pretrained / "model.safetensors"), load_file(tmp_path / "run" / "model.safetensors")
    layer = "bert.encoder.layer.0.attention.self.query.weight"
    assert torch.equal(start[layer], end[layer])
