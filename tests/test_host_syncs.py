"""No host stalls: a training step never reads a tensor back to Python, except at logging steps.

On a GPU every `.item()`, `float(t)`, `bool(t)` or `.tolist()` waits for the device to finish all
queued work: one per step keeps the GPU idle while Python prepares the next step. CI has no GPU, so
this test counts those calls on CPU tensors instead, step by step, in real pretraining and
fine-tuning runs, and allows them only at the steps where Trainer logs anyway.
"""

from __future__ import annotations

import pytest
import torch
from transformers import TrainerCallback

pytestmark = pytest.mark.smoke

SYNCS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy")


class StepWindow(TrainerCallback):
    """Counts the reads inside each optimizer step, from its first micro-batch to its step end."""

    def __init__(self, counter):
        self.counter, self.steps = counter, []  # the counter: {"on": counting now, "n": reads counted}

    def on_step_begin(self, args, state, control, **kwargs):
        self.counter["on"], self.counter["n"] = True, 0

    def on_step_end(self, args, state, control, **kwargs):
        self.counter["on"] = False
        reads_anyway = control.should_log or control.should_save or control.should_evaluate or control.should_training_stop
        self.steps.append((state.global_step, self.counter["n"], reads_anyway))


@pytest.fixture
def counted(monkeypatch):
    counter = {"on": False, "n": 0}
    for name in SYNCS:
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _original=original, **kwargs):
            if counter["on"]:
                counter["n"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    window = StepWindow(counter)
    from bigmodel_cli.trainer import trainer as module

    original_init = module.CountingTrainer.__init__

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.add_callback(window)  # last: its step end comes after every other callback's

    monkeypatch.setattr(module.CountingTrainer, "__init__", init)
    return window


def assert_reads_only_at_logging_steps(window, steps):
    assert len(window.steps) == steps
    stalls = [(step, n) for step, n, anyway in window.steps if n and not anyway]
    assert not stalls, f"host syncs inside steps that log nothing (step, reads): {stalls}"
    assert max(n for _, n, _ in window.steps) <= 2, window.steps  # the divergence check's one read (and one spare)


SETTINGS = ["training.max_steps=12", "training.logging_steps=4", "training.report_to=[none]", "training.save_strategy=no",
            "training.eval_strategy=no"]


@pytest.mark.parametrize("on_device", [False, True], ids=["host-masks", "device-masks"])
def test_pretraining_steps_never_wait_for_the_device(tmp_path, counted, pretrained, monkeypatch, on_device):
    from bigmodel_cli.commands import pretrain
    from bigmodel_cli.mlm import masking
    from bigmodel_cli.recipe import load_recipe

    drawn = []  # reads while the masks are drawn on the device (in Trainer's fetch, before the step begins)
    original = masking.DeviceMasks.__call__

    def drawing(self, batch, _counter=counted.counter):
        saved = dict(_counter)
        _counter["on"], _counter["n"] = True, 0
        try:
            return original(self, batch)
        finally:
            drawn.append(_counter["n"])
            _counter.update(saved)

    monkeypatch.setattr(masking.DeviceMasks, "__call__", drawing)
    recipe, _ = load_recipe("pretrain", "pretrain/tiny-debug", overrides=[
        *SETTINGS, f"tokenizer.name_or_path={pretrained}", f"data.mask_on_device={str(on_device).lower()}"])
    pretrain.run(recipe, tmp_path / "run", quiet=True)
    assert_reads_only_at_logging_steps(counted, 12)
    assert len(drawn) == (12 if on_device else 0) and not any(drawn), drawn  # every batch, none read back


def test_finetuning_steps_never_wait_for_the_device(tmp_path, counted, pretrained):
    from bigmodel_cli.classification import finetuning
    from bigmodel_cli.recipe import load_recipe

    recipe, _ = load_recipe("finetune", "finetune/mrpc-tiny-debug", flags={"model.name_or_path": str(pretrained)},
                            overrides=SETTINGS)
    finetuning.run(recipe, tmp_path / "run", quiet=True)
    assert_reads_only_at_logging_steps(counted, 12)
