"""The user's settings win or stop the run: every recipe value set is honoured, or a one-line error
names the conflicting keys; and the fast kernels go only on the model classes they are tested on."""

from __future__ import annotations

import math
import os

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.recipe import FinetuneRecipe, PretrainRecipe, TrainingSection

pytestmark = pytest.mark.unit


def training(**values) -> TrainingSection:
    return TrainingSection.model_validate(values)


def test_an_accumulation_the_user_set_is_honoured_under_a_global_batch():
    from bigmodel_cli.trainer.arguments import batch_layout

    assert batch_layout(training(global_batch_size=16, per_device_train_batch_size=16), 1) == (16, 1)  # derived
    assert batch_layout(training(global_batch_size=16, per_device_train_batch_size=16, gradient_accumulation_steps=4), 1) == (4, 4)
    assert batch_layout(training(global_batch_size=16, gradient_accumulation_steps=2), 2) == (4, 2)
    assert batch_layout(training(per_device_train_batch_size=8, gradient_accumulation_steps=3), 2) == (8, 3)  # no global batch


@pytest.mark.parametrize("values, processes", [
    (dict(global_batch_size=16, gradient_accumulation_steps=3), 1),  # 16 is not 3 x something
    (dict(global_batch_size=64, per_device_train_batch_size=8, gradient_accumulation_steps=2), 1),  # 32 > 8 per device
])
def test_a_global_batch_that_cannot_honour_the_accumulation_names_the_keys(values, processes):
    from bigmodel_cli.trainer.arguments import batch_layout

    with pytest.raises(BigmodelError) as error:
        batch_layout(training(**values), processes)
    for key in ("training.global_batch_size", "training.gradient_accumulation_steps", "training.per_device_train_batch_size"):
        assert key in str(error.value)


@pytest.mark.parametrize("gpu, values, words", [
    (None, dict(fp16=True), ["training.fp16 needs a GPU", "training.fp16=false"]),  # Accelerate: fp32 on a CPU, silently
    (("Tesla T4", (7, 5)), dict(bf16=True), ["training.bf16", "Tesla T4, compute capability 7.5", "training.fp16=true"]),
    (("Tesla V100-SXM2-32GB", (7, 0)), dict(bf16=True), ["no native bfloat16"]),
])
def test_mixed_precision_that_would_not_run_as_asked_names_the_key(monkeypatch, gpu, values, words):

    from bigmodel_cli.trainer.arguments import check_precision

    fake_gpu(monkeypatch, gpu)
    with pytest.raises(BigmodelError) as error:
        check_precision(training(**values))
    for word in words:
        assert word in str(error.value)


@pytest.mark.parametrize("gpu, values", [
    (("Tesla T4", (7, 5)), dict(fp16=True)), (("NVIDIA A100-SXM4-80GB", (8, 0)), dict(bf16=True)),
    (("NVIDIA H200", (9, 0)), dict(bf16=True)), (("NVIDIA H200", (9, 0)), dict(fp16=True)),
    (None, dict(bf16=True)), (None, {}), (("Tesla T4", (7, 5)), {}),
])
def test_mixed_precision_where_it_runs_as_asked_passes(monkeypatch, gpu, values):
    from bigmodel_cli.trainer.arguments import check_precision

    fake_gpu(monkeypatch, gpu)
    check_precision(training(**values))


def fake_gpu(monkeypatch, gpu: tuple[str, tuple[int, int]] | None) -> None:
    """No GPU (None), or one of that name and compute capability, as torch.cuda reports them."""

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu is not None)
    if gpu is not None:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: gpu[0])
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: gpu[1])


def finetune_recipe(**values) -> FinetuneRecipe:
    return FinetuneRecipe.model_validate({"data": {"task": "mrpc"}, "training": values})


def test_finetune_keeps_the_best_epoch_unless_told_and_never_overrides_a_save_schedule_set():
    from bigmodel_cli.classification.finetuning import best_epoch_arguments

    kept = best_epoch_arguments(finetune_recipe(), "f1")
    assert kept["load_best_model_at_end"] and kept["save_strategy"] == "epoch" and kept["metric_for_best_model"] == "eval_f1"
    assert best_epoch_arguments(finetune_recipe(load_best_model_at_end=False), "f1") == {"load_best_model_at_end": False}
    assert best_epoch_arguments(finetune_recipe(eval_strategy="no"), "f1") == {"load_best_model_at_end": False}
    steps = best_epoch_arguments(finetune_recipe(eval_strategy="steps", eval_steps=50, save_strategy="steps", save_steps=50), "f1")
    assert (steps["save_strategy"], steps["save_steps"]) == ("steps", 50)
    for values, keys in [
        (dict(save_strategy="no"), ["training.save_strategy", "training.eval_strategy", "training.load_best_model_at_end"]),
        (dict(eval_strategy="steps", eval_steps=50, save_strategy="steps", save_steps=30), ["training.save_steps", "training.eval_steps"]),
        (dict(eval_strategy="no", load_best_model_at_end=True), ["training.load_best_model_at_end", "training.eval_strategy"]),
    ]:
        with pytest.raises(BigmodelError) as error:
            best_epoch_arguments(finetune_recipe(**values), "f1")
        assert all(key in str(error.value) for key in keys), (values, str(error.value))


def test_a_schedule_a_time_budget_cannot_follow_is_refused_when_the_recipe_loads():
    from pydantic import ValidationError

    corpus = {"train_files": ["x.txt"]}
    with pytest.raises(ValidationError, match="training.lr_scheduler_type cosine_with_restarts cannot follow training.time_budget"):
        PretrainRecipe.model_validate({"data": corpus, "training": {"time_budget": 60, "lr_scheduler_type": "cosine_with_restarts"}})
    PretrainRecipe.model_validate({"data": corpus, "training": {"time_budget": 60, "lr_scheduler_type": "cosine"}})


class Clock:
    """A budget whose spent fraction the test sets."""

    def __init__(self):
        self.spent = 0.0

    def fraction(self):
        return self.spent


@pytest.mark.parametrize("kind", ["linear", "cosine", "constant"])
def test_the_budget_schedule_follows_the_type_and_the_warmup_asked(kind):

    from bigmodel_cli.trainer.callbacks import budget_schedule

    def factor(warmup, step, spent):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        clock = Clock()
        schedule = budget_schedule(optimizer, clock, warmup, kind)
        clock.spent = spent
        return schedule.lr_lambdas[0](step)

    decayed = {"linear": 0.5, "cosine": 0.5 * (1 + math.cos(math.pi * 0.5)), "constant": 1.0}[kind]
    assert factor(0.0, 100, 0.5) == pytest.approx(decayed)
    assert factor(0.2, 100, 0.1) == pytest.approx(0.5)  # a fraction of the budget: half-way up at 10 %
    assert factor(10, 5, 0.01) == pytest.approx(0.5)  # whole steps: half-way up at step 5 of 10, not 0
    assert factor(10, 50, 0.5) == pytest.approx(decayed)  # after the warm-up steps, the decay over the budget
    if kind != "constant":
        assert factor(0.0, 100, 1.0) == pytest.approx(0.0, abs=1e-12)


def tiny(config_class, model_class, **extra):
    config = config_class(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=32, max_position_embeddings=64, **extra)
    config._attn_implementation = "sdpa"
    return model_class(config)


def test_fast_kernels_go_on_tested_bert_classes_only():
    from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification, RobertaConfig, RobertaForMaskedLM

    from bigmodel_cli.kernels import FastDropout, speedups, tested_model
    from bigmodel_cli.mlm.sparse_head import SparseHeadBertForMaskedLM

    for model_class in (BertForMaskedLM, SparseHeadBertForMaskedLM, BertForSequenceClassification):
        assert tested_model(tiny(BertConfig, model_class))
    assert not tested_model(tiny(BertConfig, BertForMaskedLM, is_decoder=True))  # causal attention: not proven
    roberta = tiny(RobertaConfig, RobertaForMaskedLM, pad_token_id=1)
    said = speedups(roberta, first_token=True)
    assert said.startswith("stock code path (RobertaForMaskedLM")
    assert not any(isinstance(m, FastDropout) for m in roberta.modules())
    assert roberta.config._attn_implementation == "sdpa"
    bert = tiny(BertConfig, BertForSequenceClassification)
    said = speedups(bert, first_token=True)
    assert said == "fast paths: fast dropout and attention, first-token last layer"
    assert any(isinstance(m, FastDropout) for m in bert.modules())


@pytest.mark.parametrize("launch, recipe, sets, expected", [
    ("bf16", "finetune/mrpc", [], "bf16"),  # the recipe chooses none: the launch config's
    ("fp16", "finetune/mrpc", [], "fp16"),
    ("no", "finetune/mrpc", [], "no"),
    ("bf16", "finetune/mrpc", ["training.bf16=false"], "no"),  # the recipe's explicit fp32 wins
    ("bf16", "finetune/mrpc", ["training.fp16=true"], "fp16"),
    ("fp16", "pretrain/bert-base", [], "bf16"),  # its YAML says bf16
])
def test_the_launch_configs_precision_fills_in_where_the_recipe_chooses_none(monkeypatch, launch, recipe, sets, expected):
    """`accelerate launch` passes its config's mixed_precision on in ACCELERATE_MIXED_PRECISION. The
    recipe says what the run trains in (its header and resolved recipe show it), the launch's where
    the recipe names neither key."""
    from bigmodel_cli.recipe import load_recipe

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", launch)
    kind = recipe.split("/")[0]
    loaded, _ = load_recipe(kind, recipe, overrides=sets + ([] if kind == "finetune" else ["data.train_files=[a.txt]"]))
    assert ("bf16" if loaded.training.bf16 else "fp16" if loaded.training.fp16 else "no") == expected


@pytest.mark.parametrize("launch, sets, expected", [
    ("inductor", [], True),  # the recipe does not name it: the launch config's dynamo_backend
    ("INDUCTOR", ["training.torch_compile=false"], False),  # the recipe's explicit key wins
    ("no", [], False),
])
def test_the_launch_configs_compilation_fills_in_where_the_recipe_names_none(monkeypatch, launch, sets, expected):
    from bigmodel_cli.recipe import load_recipe

    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", launch)
    loaded, _ = load_recipe("finetune", "finetune/mrpc", overrides=sets)
    assert loaded.training.torch_compile is expected


@pytest.mark.parametrize("launch, values, precision, compiler", [
    ({"ACCELERATE_MIXED_PRECISION": "bf16"}, {}, "no", "NO"),
    ({"ACCELERATE_MIXED_PRECISION": "no"}, dict(bf16=True), "bf16", "NO"),
    ({"ACCELERATE_DYNAMO_BACKEND": "INDUCTOR"}, {}, "no", "NO"),
    ({"ACCELERATE_DYNAMO_BACKEND": "NO"}, dict(torch_compile=True), "no", "INDUCTOR"),
])
def test_the_trainer_runs_the_recipes_precision_and_compilation_not_the_launchs(monkeypatch, tmp_path, launch, values,
                                                                               precision, compiler):
    """Trainer and Accelerate took ACCELERATE_MIXED_PRECISION and ACCELERATE_DYNAMO_BACKEND over the
    recipe's keys: every shipped Accelerate config says bf16, so a recipe's fp32 trained in bf16 while
    its header and resolved recipe said fp32; a config's dynamo_backend compiled a recipe's
    torch_compile: false."""
    from bigmodel_cli.trainer.arguments import training_arguments
    from bigmodel_cli.trainer.trainer import CountingTrainer

    for name, value in launch.items():
        monkeypatch.setenv(name, value)
    args = training_arguments(training(**values, eval_strategy="no"), tmp_path, quiet=True)
    config = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8)
    trainer = CountingTrainer(model=BertForSequenceClassification(config), args=args)
    assert args.mixed_precision == trainer.accelerator.mixed_precision == precision
    assert str(trainer.accelerator.state.dynamo_plugin.backend).split(".")[-1] == compiler
    assert {name: os.environ[name] for name in launch} == launch  # the process's environment is left as it was


@pytest.mark.parametrize("name, value, words", [
    ("ACCELERATE_MIXED_PRECISION", "fp8", ["ACCELERATE_MIXED_PRECISION=fp8", "mixed_precision to bf16, fp16 or no"]),
    ("ACCELERATE_DYNAMO_BACKEND", "AOT_EAGER", ["ACCELERATE_DYNAMO_BACKEND=aot_eager", "dynamo_backend to inductor or no"]),
])
def test_a_launch_setting_bigmodel_has_no_key_for_names_the_variable(monkeypatch, name, value, words):
    from bigmodel_cli.recipe import load_recipe

    monkeypatch.setenv(name, value)
    with pytest.raises(BigmodelError) as error:
        load_recipe("finetune", "finetune/mrpc")
    for word in words:
        assert word in str(error.value)


@pytest.mark.parametrize("values, said", [({}, "cpu, fp32 |"), (dict(torch_compile=True), "cpu, fp32, torch.compile |"),
                                          (dict(bf16=True), "cpu, bf16 autocast |")])
def test_the_run_header_says_the_precision_and_compilation_the_run_has(tmp_path, capsys, values, said):
    from transformers import TrainerControl, TrainerState

    from bigmodel_cli.trainer.arguments import training_arguments
    from bigmodel_cli.trainer.callbacks import RunHeader

    args = training_arguments(training(**values, eval_strategy="no"), tmp_path)
    config = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8)
    RunHeader("finetune", "data").on_train_begin(args, TrainerState(), TrainerControl(),
                                                 model=BertForSequenceClassification(config))
    assert said in capsys.readouterr().err.replace(f", {torch.get_num_threads()} threads", " |")


@pytest.mark.smoke
def test_evaluating_by_steps_without_eval_steps_evaluates_where_it_saves(tmp_path, pretrained):
    """Trainer alone would evaluate every logging_steps and save every save_steps: the best model
    then picked among the saved steps only. Each evaluation gets its checkpoint, and the header says so."""
    import json

    from conftest import run_cli

    run_dir = tmp_path / "run"
    result = run_cli("finetune", "-r", "finetune/mrpc-tiny-debug", "--model", pretrained, "-o", run_dir,
                     "--set", "training.eval_strategy=steps", "--set", "training.save_steps=5",
                     "--set", "training.logging_steps=2", "--set", "training.num_train_epochs=1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "evaluated and saved every 5 steps" in result.stdout + result.stderr
    state = json.loads((run_dir / "trainer_state.json").read_text())
    evaluated = [e["step"] for e in state["log_history"] if "eval_loss" in e]
    assert evaluated == [5, 10], evaluated


@pytest.mark.unit
def test_any_trainingarguments_key_passes_through_as_given(tmp_path):
    from bigmodel_cli.trainer.arguments import training_arguments

    training = TrainingSection(gradient_checkpointing=True, lr_scheduler_kwargs={"num_cycles": 2}, eval_on_start=True)
    args = training_arguments(training, tmp_path)
    assert args.gradient_checkpointing is True and args.lr_scheduler_kwargs == {"num_cycles": 2} and args.eval_on_start
    assert PretrainRecipe(data={"train_files": ["a.txt"]}, training=training.model_dump()).training == training


@pytest.mark.unit
@pytest.mark.parametrize(("key", "words"), [
    ("gradient_checkpoint", "did you mean 'training.gradient_checkpointing'"),  # a typo of a TrainingArguments field
    ("learing_rate", "did you mean 'training.learning_rate'"),  # ... of bigmodel's own
    ("output_dir", "give --output-dir"),  # one bigmodel sets itself
])
def test_a_key_that_is_not_trainingarguments_is_refused_naming_the_nearest(key, words):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=words.replace("(", r"\(").replace("'", "'")):
        TrainingSection(**{key: True})


@pytest.mark.unit
def test_a_value_trainingarguments_refuses_is_one_line_naming_the_key(tmp_path):
    from bigmodel_cli.trainer.arguments import training_arguments

    with pytest.raises(BigmodelError, match=r"training\.hub_strategy passed through as given\): bogus is not a valid"):
        training_arguments(TrainingSection(hub_strategy="bogus"), tmp_path)
