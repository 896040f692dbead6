"""A saved model that `eval`, `predict` or the GLUE suite loads runs on the GPU where there is one.

CI has no GPU, so these tests stand in for one: they report CUDA as present and record where each
loader sends its model (the move itself is left out), and they count the read-backs of a held-out
evaluation, which on a GPU each wait for the device.
"""

from __future__ import annotations

import pytest
import torch

from bigmodel_cli.classification.model import load_saved_classifier
from bigmodel_cli.mlm.model import load_saved_mlm

pytestmark = pytest.mark.smoke


@pytest.fixture
def moves(monkeypatch) -> list[str]:
    """CUDA reported present; every `Module.to(device)` recorded and left undone (there is no GPU)."""
    targets: list[str] = []

    def record(module, *args, **kwargs):
        device = kwargs.get("device", args[0] if args else None)
        targets.append(torch.device(device).type if isinstance(device, (str, torch.device)) else repr(device))
        return module

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.nn.Module, "to", record)
    return targets


def test_a_saved_classifier_goes_to_the_gpu(finetuned, moves):
    load_saved_classifier(str(finetuned))
    assert moves == ["cuda"]


def test_a_saved_masked_lm_goes_to_the_gpu(pretrained, moves):
    load_saved_mlm(str(pretrained))
    assert moves == ["cuda"]


def test_without_a_gpu_they_stay_on_the_cpu(finetuned, pretrained):
    assert torch.cuda.is_available() is False  # CI's machines; a GPU machine checks the line above instead
    model, _ = load_saved_classifier(str(finetuned))
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert {p.device.type for p in load_saved_mlm(str(pretrained)).parameters()} == {"cpu"}


def test_held_out_perplexity_reads_its_sums_back_once(pretrained, tmp_path, monkeypatch):
    """The loss sums stay on the model's device over every batch and come back once at the end; the
    figure is the one `bigmodel eval` gives."""
    from bigmodel_cli.commands.evaluate import evaluate_mlm_on

    text = tmp_path / "held-out.txt"
    text.write_text("\n".join(f"line {i} of some held-out text, with words the model has seen" for i in range(40)) + "\n")
    expected = evaluate_mlm_on(str(pretrained), str(text), 4)
    reads = []
    original = torch.Tensor.cpu

    def counting(tensor, *args, **kwargs):
        reads.append(tuple(tensor.shape))
        return original(tensor, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "cpu", counting)
    got = evaluate_mlm_on(str(pretrained), str(text), 4)
    assert got == expected and got["eval_masked_tokens"] > 0
    assert reads == [(4,)], reads  # [loss sum, masked tokens, next sentences right, pairs], once, not per batch
