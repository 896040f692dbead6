"""No host stalls: a training step never reads a tensor back to Python, except at logging steps,
and never makes a tensor from Python data.

On a GPU every `.item()`, `float(t)`, `bool(t)` or `.tolist()` waits for the device to finish all
queued work: one per step keeps the GPU idle while Python prepares the next step. So does the other
direction: `torch.tensor(n, device=gpu)`, `torch.as_tensor(n, device=gpu)` or `t.new_tensor(n)` copy
from pageable host memory, and torch waits for the stream after such a copy (three a step cost
fine-tuning on an H200 over a third of its speed). CI has no GPU, so this test counts both kinds of
call on CPU tensors instead, step by step, in real pretraining and fine-tuning runs: reads only at
the steps where Trainer logs anyway, tensors from Python data at none.
"""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode
from transformers import TrainerCallback

pytestmark = pytest.mark.smoke

SYNCS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy")
FROM_PYTHON = {"tensor", "as_tensor", "new_tensor"}  # on a GPU, from Python data: a copy from the host


class MadeFromPython(TorchFunctionMode):
    """Records each tensor made from Python data (not from another tensor) while it is active."""

    def __init__(self, made: list):
        super().__init__()
        self.made = made

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in FROM_PYTHON:
            data = args[1] if name == "new_tensor" else args[0] if args else (kwargs or {}).get("data")
            if not isinstance(data, torch.Tensor):
                self.made.append(f"{name}({data!r})")
        return func(*args, **(kwargs or {}))


class StepWindow(TrainerCallback):
    """Counts the reads inside each optimizer step, from its first micro-batch to its step end."""

    def __init__(self, counter):
        # the counter: {"on": counting now, "n": reads counted, "made": tensors made from Python data}
        self.counter, self.steps, self.made, self.mode = counter, [], [], None

    def on_step_begin(self, args, state, control, **kwargs):
        self.counter["on"], self.counter["n"], self.counter["made"] = True, 0, []
        if self.mode is None:  # once per optimizer step, however many micro-batches
            self.mode = MadeFromPython(self.counter["made"])
            self.mode.__enter__()
        self.mode.made = self.counter["made"]

    def on_step_end(self, args, state, control, **kwargs):
        self.close()
        self.counter["on"] = False
        reads_anyway = control.should_log or control.should_save or control.should_evaluate or control.should_training_stop
        self.steps.append((state.global_step, self.counter["n"], reads_anyway))
        self.made.extend((state.global_step, what) for what in self.counter["made"])

    def close(self):
        if self.mode is not None:
            self.mode.__exit__(None, None, None)
            self.mode = None


@pytest.fixture
def counted(monkeypatch):
    counter = {"on": False, "n": 0, "made": []}
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
    yield window
    window.close()  # a step that raised


def assert_reads_only_at_logging_steps(window, steps):
    assert len(window.steps) == steps
    stalls = [(step, n) for step, n, anyway in window.steps if n and not anyway]
    assert not stalls, f"host syncs inside steps that log nothing (step, reads): {stalls}"
    assert max(n for _, n, _ in window.steps) <= 2, window.steps  # the divergence check's one read (and one spare)
    assert not window.made, f"tensors made from Python data inside steps (step, call): {window.made[:6]}"


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
