"""`bigmodel pretrain --model`: continued masked-LM pretraining from a checkpoint, with its own tokenizer."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import TINY, run_cli

pytestmark = pytest.mark.smoke

CONTINUE = ["pretrain", "--recipe", "pretrain/continue", "-q", "--set", f"data.train_files=[{TINY / 'tiny-corpus.txt'}]",
            "--set", "training.time_budget=null", "--set", "training.max_steps=20", "--set", "training.learning_rate=2e-3",
            "--set", "training.report_to=[none]", "--set", "data.max_seq_length=64", "--set", "training.save_steps=10"]


def perplexity(model_dir, held_out) -> float:
    result = run_cli("eval", "--model", model_dir, "--task", "mlm", "--data-file", held_out, "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])["perplexity"]


def test_continuing_a_masked_lm_keeps_its_tokenizer_and_lowers_its_perplexity(tmp_path, pretrained):
    run_dir = tmp_path / "continued"
    result = run_cli(*CONTINUE, "--model", pretrained, "-o", run_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (run_dir / "tokenizer.json").read_bytes() == (pretrained / "tokenizer.json").read_bytes()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train_real_tokens"] > 0 and metrics["model_parameters"] == json.loads(
        (pretrained / "metrics.json").read_text())["model_parameters"]
    held_out = tmp_path / "held-out.txt"  # lines the continued run held out and never trained on
    lines = [line for line in (TINY / "tiny-corpus.txt").read_text().splitlines() if line.strip()]
    held_out.write_text("\n".join(lines[-60:]) + "\n")
    assert perplexity(run_dir, held_out) < perplexity(pretrained, held_out)
    from transformers import AutoModelForMaskedLM

    assert type(AutoModelForMaskedLM.from_pretrained(run_dir)).__name__ == "BertForMaskedLM"
    import yaml

    resolved = yaml.safe_load((run_dir / "resolved_recipe.yaml").read_text())["model"]  # what it trained, not defaults
    config = json.loads((pretrained / "config.json").read_text())
    for key in ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size", "max_position_embeddings",
                "hidden_dropout_prob", "attention_probs_dropout_prob"):
        assert resolved[key] == config[key], key
    assert resolved["type"] == "bert"


def test_a_checkpoint_without_an_mlm_head_gets_a_fresh_one_tied_to_its_embeddings(tmp_path, pretrained):
    from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer

    encoder = tmp_path / "encoder"
    AutoModel.from_pretrained(pretrained).save_pretrained(encoder)  # a bare BertModel, as sentence encoders ship
    AutoTokenizer.from_pretrained(pretrained).save_pretrained(encoder)
    run_dir = tmp_path / "continued"
    result = run_cli(*CONTINUE[:3], *CONTINUE[4:], "--model", encoder, "-o", run_dir)  # not quiet: the header shows
    assert result.returncode == 0, result.stderr[-2000:]
    header = next(line for line in result.stderr.splitlines() if line.startswith("bigmodel pretrain"))
    assert f"continued from {encoder}, with a fresh MLM head tied to its embeddings" in header
    model = AutoModelForMaskedLM.from_pretrained(run_dir)
    assert model.cls.predictions.decoder.weight.data_ptr() == model.bert.embeddings.word_embeddings.weight.data_ptr()
    from transformers import AutoModelForSequenceClassification

    # the encoder's pooler, which the masked LM does not use, is saved unchanged: a classifier starts from it
    classifier, loading = AutoModelForSequenceClassification.from_pretrained(run_dir, output_loading_info=True)
    assert not [k for k in loading["missing_keys"] if "pooler" in k]
    original = AutoModel.from_pretrained(encoder).pooler.dense
    assert torch.equal(classifier.bert.pooler.dense.weight, original.weight)
    assert torch.equal(classifier.bert.pooler.dense.bias, original.bias)
    assert not torch.equal(classifier.bert.encoder.layer[0].output.dense.weight,
                           AutoModel.from_pretrained(encoder).encoder.layer[0].output.dense.weight)  # the rest trained


def test_a_checkpoint_that_cannot_become_a_masked_lm_stops_before_any_folder_is_made(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt = tmp_path / "gpt"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50)).save_pretrained(gpt)
    result = run_cli(*CONTINUE, "--model", gpt, "-o", tmp_path / "run")
    assert result.returncode == 2, result.stderr[-1500:]
    err = result.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert err.startswith("error: model.name_or_path") and "gpt2 checkpoint, which cannot become a masked LM" in err
    assert not (tmp_path / "run").exists()


def test_a_shape_key_the_checkpoint_contradicts_names_the_key(tmp_path, pretrained):
    result = run_cli("pretrain", "-r", "pretrain/tiny-debug", "--model", pretrained, "-q", "--set", "model.num_hidden_layers=4",
                     "-o", tmp_path / "run")
    assert result.returncode == 2 and "model.num_hidden_layers 4 differs from" in result.stderr, result.stderr[-1500:]


@pytest.mark.parametrize("setting", ["fresh_head_learning_rate=1e-3", "fresh_head_warmup=0.5"])
def test_a_fresh_head_setting_on_a_new_model_names_the_key(tmp_path, setting):
    result = run_cli("pretrain", "-r", "pretrain/tiny-debug", "-q", "--set", f"model.{setting}", "-o", tmp_path / "run")
    err = result.stderr.strip()
    assert result.returncode == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err[-1500:]
    assert f"model.{setting.split('=')[0]}" in err and "model.name_or_path" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.unit
def test_a_fresh_head_trains_alone_first():
    """While it warms up, the encoder's gradients are dropped before each optimizer step (AdamW then
    skips its parameters); the head's are kept; afterwards everything trains."""
    import types

    import torch
    from transformers import BertConfig, BertForMaskedLM

    from bigmodel_cli.mlm.trainer import HeadWarmup

    model = BertForMaskedLM(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=32))
    warmup = HeadWarmup(model, 0.25, budget=None)
    for step, warming in ((0, True), (24, True), (25, False), (99, False)):
        for parameter in model.parameters():
            parameter.grad = torch.ones_like(parameter)
        warmup.on_pre_optimizer_step(None, types.SimpleNamespace(global_step=step, max_steps=100), None)
        named = dict(model.named_parameters())
        assert (named["bert.encoder.layer.0.output.dense.weight"].grad is None) == warming
        assert (named["bert.embeddings.word_embeddings.weight"].grad is None) == warming  # tied to the decoder
        assert named["cls.predictions.transform.dense.weight"].grad is not None


@pytest.mark.unit
def test_a_frozen_encoder_warm_up_trains_as_the_dropped_gradients_did_without_the_encoders_backward():
    """In one process the encoder is frozen while the head warms up: no gradient of it is computed
    (its backward pass is skipped), and the weights after warm-up and after it match the path that
    computes the gradients and drops them (which several processes take)."""
    import types

    import torch
    from transformers import BertConfig, BertForMaskedLM

    from bigmodel_cli.mlm.trainer import HeadWarmup

    torch.manual_seed(0)
    start = BertForMaskedLM(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    batches = [torch.randint(5, 50, (4, 12)) for _ in range(8)]
    results = {}
    for freeze in (True, False):
        model = copy.deepcopy(start)
        warmup = HeadWarmup(model, 0.5, budget=None, freeze=freeze)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        encoder_grads = []
        for step, ids in enumerate(batches):
            state = types.SimpleNamespace(global_step=step, max_steps=len(batches))
            warmup.on_step_begin(None, state, None)
            model(input_ids=ids, labels=ids).loss.backward()
            encoder_grads.append(model.bert.encoder.layer[0].output.dense.weight.grad is not None)
            warmup.on_pre_optimizer_step(None, state, None)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        warmup.on_train_end(None, state, None)
        results[freeze] = (model, encoder_grads)
    frozen, dropped = results[True][0], results[False][0]
    assert results[True][1] == [False] * 4 + [True] * 4  # no encoder backward while warming
    assert results[False][1] == [True] * 8
    assert all(p.requires_grad for p in frozen.parameters())
    for (name, a), b in zip(frozen.named_parameters(), dropped.parameters()):
        assert torch.allclose(a, b, atol=1e-6), name
    assert not torch.equal(frozen.bert.encoder.layer[0].output.dense.weight,
                           start.bert.encoder.layer[0].output.dense.weight)  # the encoder trained after


@pytest.mark.unit
def test_a_fresh_head_learns_at_its_own_rate(tmp_path):
    """model.fresh_head_learning_rate: the head's parameters (outside the encoder) at that rate, the
    encoder's (the decoder's tied embeddings too) at training.learning_rate; weight decay as before;
    the schedule scales both."""
    from transformers import BertConfig, BertForMaskedLM, TrainingArguments

    from bigmodel_cli.mlm.trainer import MLMTrainer

    model = BertForMaskedLM(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=32))
    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=1e-5, weight_decay=0.01, report_to="none",
                             use_cpu=True, lr_scheduler_type="linear", warmup_steps=0)
    trainer = MLMTrainer(model=model, args=args, head_learning_rate=1e-3)
    trainer.create_optimizer_and_scheduler(num_training_steps=10)
    names = {id(p): n for n, p in model.named_parameters()}
    rate = {names[id(p)]: (group["lr"], group["weight_decay"]) for group in trainer.optimizer.param_groups
            for p in group["params"]}
    assert len(rate) == len(names)  # every parameter once
    assert rate["cls.predictions.transform.dense.weight"] == (1e-3, 0.01)
    assert rate["cls.predictions.bias"] == (1e-3, 0.0)
    assert rate["bert.embeddings.word_embeddings.weight"][0] == 1e-5  # the tied decoder: the encoder's
    assert rate["bert.encoder.layer.0.output.dense.weight"] == (1e-5, 0.01)
    trainer.optimizer.step()
    trainer.lr_scheduler.step()
    assert sorted({group["lr"] for group in trainer.optimizer.param_groups}) == pytest.approx([0.9e-5, 0.9e-3])
    plain = MLMTrainer(model=model, args=args)  # without: Trainer's own two groups
    assert len(plain.create_optimizer().param_groups) == 2


def test_a_continued_run_killed_before_its_end_resumes_to_the_uninterrupted_one(tmp_path, pretrained):
    """Exact resume holds for continued pretraining too (the fresh head's warm-up and learning rate included)."""
    from safetensors.torch import load_file
    from test_exact import killed_in
    from transformers import AutoModel, AutoTokenizer

    encoder = tmp_path / "encoder"
    AutoModel.from_pretrained(pretrained).save_pretrained(encoder)  # head-less: the warm-up applies
    AutoTokenizer.from_pretrained(pretrained).save_pretrained(encoder)
    argv = [*CONTINUE, "--model", encoder, "--set", "model.fresh_head_learning_rate=1e-2"]  # its own optimizer groups
    straight = tmp_path / "straight"
    assert run_cli(*argv, "-o", straight).returncode == 0
    killed_in([*argv, "-o", tmp_path / "run"], "bigmodel_cli.trainer.trainer", "CountingTrainer", "training_step",
              "args[0].state.global_step >= 13")
    result = run_cli(*argv, "-o", tmp_path / "run")
    assert result.returncode == 0 and f"resuming from {tmp_path / 'run' / 'checkpoint-10'}" in result.stderr
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (straight, tmp_path / "run"))
    assert b["eval_loss"] == pytest.approx(a["eval_loss"], abs=1e-6) and b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-6)
    wa, wb = load_file(straight / "model.safetensors"), load_file(tmp_path / "run" / "model.safetensors")
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-6


@pytest.mark.unit
def test_the_resolved_recipe_of_another_family_holds_its_shape_names_and_no_packing():
    """A continued checkpoint's family and shape go into the recipe the run saves: a RoBERTa one runs one
    line per row (packing is proven for BERT only) and says so; ModernBERT's two hidden dropouts, when
    they differ, leave the recipe's key null (the checkpoint's own) and a chosen value sets both."""
    from transformers import ModernBertConfig, RobertaConfig

    from bigmodel_cli.errors import BigmodelError
    from bigmodel_cli.mlm.configs import dropout_kwargs, with_checkpoint
    from bigmodel_cli.recipe import load_recipe

    def recipe(*overrides):
        return load_recipe("pretrain", "pretrain/continue", flags={"model.name_or_path": "some/checkpoint"},
                           overrides=list(overrides))[0]

    roberta = RobertaConfig(num_hidden_layers=3, hidden_size=48, num_attention_heads=4, intermediate_size=96,
                            max_position_embeddings=66, hidden_dropout_prob=0.2)
    resolved = with_checkpoint(recipe(), roberta)
    assert resolved.model.type == "roberta" and resolved.data.packing is False
    assert (resolved.model.num_hidden_layers, resolved.model.hidden_size, resolved.model.max_position_embeddings) == (3, 48, 66)
    assert resolved.model.hidden_dropout_prob == 0.2 and dropout_kwargs(resolved, roberta) == {}
    with pytest.raises(BigmodelError, match="data.packing is true but some/checkpoint is a roberta checkpoint"):
        with_checkpoint(recipe("data.packing=true"), roberta)

    modern = ModernBertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                              mlp_dropout=0.0, embedding_dropout=0.1, attention_dropout=0.0)
    resolved = with_checkpoint(recipe(), modern)
    assert resolved.model.type == "modernbert" and resolved.model.hidden_dropout_prob is None
    assert resolved.model.attention_probs_dropout_prob == 0.0 and dropout_kwargs(resolved, modern) == {}
    chosen = with_checkpoint(recipe("model.hidden_dropout_prob=0.3"), modern)
    assert dropout_kwargs(chosen, modern) == {"mlp_dropout": 0.3, "embedding_dropout": 0.3}


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_the_pooler_alone_is_read_again_from_a_sharded_half_precision_checkpoint(tmp_path, monkeypatch, family):
    import transformers
    from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM

    from bigmodel_cli.mlm.pooler import keep_pooler

    config = AutoConfig.for_model(family, vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=32)
    encoder = AutoModel.from_config(config)
    encoder.half().save_pretrained(tmp_path, max_shard_size="2KB")  # a pooler in one shard of many
    assert len(list(tmp_path.glob("*.safetensors"))) > 2
    model = AutoModelForMaskedLM.from_pretrained(tmp_path, dtype=torch.float32)

    def whole_model_again(*args, **kwargs):
        raise AssertionError("the whole checkpoint was read a second time")

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", whole_model_again)
    keep_pooler(model, tmp_path)
    pooler = model.base_model.pooler
    assert torch.equal(pooler.dense.weight, encoder.pooler.dense.weight.float())
    assert torch.equal(pooler.dense.bias, encoder.pooler.dense.bias.float())
    assert pooler.dense.weight.dtype == torch.float32 and not pooler.dense.weight.requires_grad
    assert model(input_ids=torch.tensor([[3, 4, 5]])).logits.shape == (1, 3, 60)


@pytest.mark.unit
@pytest.mark.parametrize(("step", "warming"), [(0, True), (30, False)])
def test_the_warmup_clips_the_head_by_its_own_norm(step, warming):
    """Trainer clips before the optimizer-step callback: the encoder's gradients go first, so the
    clip (and the logged grad_norm) counts the head's gradients only while it warms up."""
    import types

    import torch
    from transformers import BertConfig, BertForMaskedLM

    from bigmodel_cli.mlm.trainer import HeadWarmup, MLMTrainer

    model = BertForMaskedLM(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=32))
    for parameter in model.parameters():
        parameter.grad = torch.ones_like(parameter)
    clipped = []
    trainer = object.__new__(MLMTrainer)  # only what the clip reads
    trainer.head_warmup = HeadWarmup(model, 0.25, budget=None)
    trainer.state = types.SimpleNamespace(global_step=step, max_steps=100)
    trainer.args = types.SimpleNamespace(max_grad_norm=1.0, fp16=False)
    trainer.accelerator = types.SimpleNamespace(
        clip_grad_norm_=lambda params, norm: clipped.append(sum(p.grad.numel() for p in params if p.grad is not None)))
    trainer._has_mixed_mesh_grads = lambda model: False
    trainer._clip_grad_norm(model)
    head = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("bert."))
    assert clipped == [head if warming else model.num_parameters()]
