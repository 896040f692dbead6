"""The shipped FSDP config (FSDP2, sharded checkpoints) on 2 CPU processes (gloo): pretrain and
finetune train sharded, save whole weights that `from_pretrained` loads (gathered through every
process), and a run stopped by a signal resumes to the uninterrupted one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import ROOT, finished_run, run_cli
from test_agreed_stops import SECONDS, assert_same_run, fault_env, stopped_checkpoint

FSDP = ["launch", "-c", "accelerate/fsdp", "-n", "2"]


@pytest.fixture(scope="module")
def pretrain_args(pretrained) -> list[str]:
    return [*FSDP, "pretrain", "-r", "pretrain/tiny-debug", "--set", "training.max_steps=30",
            "--set", "training.save_steps=10", "--set", f"tokenizer.name_or_path={pretrained}"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory, pretrain_args) -> tuple[Path, str]:
    run_dir, result = finished_run(tmp_path_factory, "fsdp", *pretrain_args)
    return run_dir, result.stdout + result.stderr


@pytest.mark.smoke
def test_pretrain_under_fsdp_saves_a_whole_masked_lm(straight):
    from transformers import AutoModelForMaskedLM

    run_dir, output = straight
    assert "2 processes, FSDP2 full shard" in output, output[-3000:]
    checkpoint = run_dir / "checkpoint-30"
    assert (checkpoint / "pytorch_model_fsdp_0").is_dir()  # the shards, for the resume
    model, info = AutoModelForMaskedLM.from_pretrained(run_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"], info
    head = model.cls.predictions
    assert head.decoder.bias is head.bias and head.bias.abs().sum() > 0  # trained, and tied again as BERT's
    assert head.decoder.weight is model.bert.embeddings.word_embeddings.weight
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["model_parameters"] == model.num_parameters()


@pytest.mark.smoke
def test_pretrain_under_fsdp_stopped_by_a_signal_resumes_to_the_same_model(tmp_path, pretrain_args, straight):
    run_dir = tmp_path / "run"
    result = run_cli(*pretrain_args, "-o", run_dir, env=fault_env("sigterm:1:5"), timeout=SECONDS)
    assert result.returncode == 75, result.stderr[-3000:]
    assert 5 <= stopped_checkpoint(run_dir, result.stderr) <= 6
    rerun = run_cli(*pretrain_args, "-o", run_dir, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert_same_run(straight[0], run_dir)


@pytest.mark.smoke
def test_finetune_under_fsdp_saves_a_classifier_that_evaluates_as_it_trained(tmp_path, pretrained):
    from transformers import AutoModelForSequenceClassification

    run_dir = tmp_path / "run"
    result = run_cli(*FSDP, "finetune", "-r", "finetune/mrpc-tiny-debug", "--model", pretrained, "-o", run_dir,
                     timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "FSDP2 full shard" in result.stdout + result.stderr
    model, info = AutoModelForSequenceClassification.from_pretrained(run_dir, output_loading_info=True)
    assert not info["missing_keys"], info
    assert all(torch.isfinite(p).all() for p in model.parameters())
    trained = json.loads((run_dir / "metrics.json").read_text())
    evaluated = run_cli("eval", "--model", run_dir, "--data-dir", ROOT / "recipes" / "data" / "mrpc-tiny", "--json")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    again = json.loads(evaluated.stdout.strip().splitlines()[-1])
    assert again["eval_accuracy"] == pytest.approx(trained["eval_accuracy"], abs=1e-9)
    assert again["eval_loss"] == pytest.approx(trained["eval_loss"], abs=1e-3)  # the saved weights are the trained ones


@pytest.mark.unit
@pytest.mark.parametrize(("warmup", "deepspeed", "refused"), [(0.1, True, True), (0.0, True, False), (0.1, False, False)])
def test_deepspeed_refuses_the_fresh_head_warmup_it_would_skip(warmup, deepspeed, refused):
    from bigmodel_cli.errors import BigmodelError
    from bigmodel_cli.mlm.trainer import check_head_warmup

    if refused:
        with pytest.raises(BigmodelError, match="model.fresh_head_warmup=0"):
            check_head_warmup(warmup, deepspeed)
    else:
        check_head_warmup(warmup, deepspeed)
