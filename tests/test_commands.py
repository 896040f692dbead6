"""Smoke tests: each command end to end on the tiny recipes, through the real CLI."""

import json
import math

import pytest
from conftest import TINY, run_cli
from safetensors.torch import load_file

pytestmark = pytest.mark.smoke


@pytest.mark.parametrize("command", [[], ["pretrain"], ["finetune"], ["eval"], ["recipes"], ["recipes", "list"]])
def test_every_help_answers(command):
    result = run_cli(*command, "--help", timeout=30)
    assert result.returncode == 0 and "Usage" in result.stdout


def test_help_lists_debug_which_shows_the_traceback_of_an_error(tmp_path):
    assert "--debug" in run_cli("--help", timeout=30).stdout
    bad = ["pretrain", "-r", tmp_path / "missing.yaml", "-o", tmp_path / "run"]
    plain, debug = run_cli(*bad, timeout=60), run_cli(*bad, "--debug", timeout=60)
    assert plain.returncode == 2 and debug.returncode != 0
    assert "Traceback" not in plain.stderr and "Traceback" in debug.stderr, debug.stderr[-1500:]


def test_pretrain_writes_a_model_that_learned(pretrained):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    metrics = json.loads((pretrained / "metrics.json").read_text())
    for key in ("eval_loss", "perplexity", "train_samples", "eval_samples", "train_runtime",
                "train_samples_per_second", "train_lines_per_second", "train_tokens_per_second"):
        assert key in metrics, key
    # Trainer's key keeps Trainer's meaning (rows: packed sequences, several lines each); lines have their own
    assert metrics["train_lines_per_second"] > metrics["train_samples_per_second"] > 0
    # Uniform guessing over the 300-token vocabulary scores 300; 30 steps reach about 110 here.
    assert math.isfinite(metrics["perplexity"]) and metrics["perplexity"] < 150
    assert metrics["train_samples"] + metrics["eval_samples"] == 600  # blank and whitespace lines dropped
    state = json.loads((pretrained / "checkpoint-30" / "trainer_state.json").read_text())
    losses = [e["loss"] for e in state["log_history"] if "loss" in e]
    assert losses[-1] < losses[0]
    before = load_file(pretrained / "checkpoint-20" / "model.safetensors")
    after = load_file(pretrained / "model.safetensors")
    assert any(not (before[k] == after[k]).all() for k in after)  # parameters changed
    model = AutoModelForMaskedLM.from_pretrained(pretrained)
    tokenizer = AutoTokenizer.from_pretrained(pretrained)
    assert type(model).__name__ == "BertForMaskedLM" and len(tokenizer) == 300
    assert (pretrained / "resolved_recipe.yaml").is_file() and (pretrained / "README.md").is_file()


def test_finetune_keeps_the_best_epoch_and_eval_reproduces_it(finetuned):
    from transformers import AutoModelForSequenceClassification

    metrics = json.loads((finetuned / "metrics.json").read_text())
    for key in ("eval_loss", "eval_accuracy", "eval_f1", "train_samples", "eval_samples"):
        assert key in metrics, key
    assert (metrics["train_samples"], metrics["eval_samples"]) == (160, 48)
    model = AutoModelForSequenceClassification.from_pretrained(finetuned)
    assert model.config.finetuning_task == "mrpc" and model.config.num_labels == 2
    # The kept model is the epoch whose evaluation scored best (the first of equals, as Trainer
    # keeps it): its checkpoint, and its own evaluation's figures, loss included.
    history = json.loads((finetuned / "trainer_state.json").read_text())["log_history"]
    epochs = [e for e in history if "eval_f1" in e]
    assert len(epochs) == 2 and epochs[0]["eval_loss"] != epochs[1]["eval_loss"]
    best = max(epochs, key=lambda e: (e["eval_f1"], -e["step"]))
    assert metrics["best_checkpoint"] == f"checkpoint-{best['step']}"
    for key in ("eval_f1", "eval_accuracy", "eval_loss"):
        assert metrics[key] == pytest.approx(best[key], abs=1e-5), key
    result = run_cli("eval", "--model", finetuned, "--data-dir", TINY / "mrpc-tiny", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    again = json.loads(result.stdout.strip().splitlines()[-1])
    for key in ("eval_accuracy", "eval_f1", "eval_loss"):
        assert again[key] == pytest.approx(metrics[key], abs=1e-6)


def test_each_epochs_evaluation_is_the_one_bigmodel_eval_gives_its_checkpoint(finetuned):
    """The per-epoch evaluations run `bigmodel eval`'s path: each epoch's logged figures are those
    `bigmodel eval` prints for that epoch's checkpoint, and every dev example is scored once."""
    history = json.loads((finetuned / "trainer_state.json").read_text())["log_history"]
    logged = {e["step"]: e for e in history if "eval_f1" in e}
    kept = sorted(finetuned.glob("checkpoint-*"))
    assert kept and all(int(c.name.split("-")[1]) in logged for c in kept)
    for checkpoint in kept:
        entry = logged[int(checkpoint.name.split("-")[1])]
        assert entry["eval_examples"] == 48 and entry["eval_samples_per_second"] > 0
        result = run_cli("eval", "--model", checkpoint, "--data-dir", TINY / "mrpc-tiny", "--json")
        assert result.returncode == 0, result.stderr[-2000:]
        again = json.loads(result.stdout.strip().splitlines()[-1])
        for key in ("eval_accuracy", "eval_f1", "eval_loss"):
            assert again[key] == pytest.approx(entry[key], abs=1e-6), (checkpoint.name, key)


def test_eval_mlm_gives_a_finite_perplexity(pretrained):
    result = run_cli("eval", "--model", pretrained, "--task", "mlm", "--data-file", TINY / "tiny-corpus.txt", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert 1 < metrics["perplexity"] < 300 and metrics["eval_samples"] == 600


def test_pretrain_held_out_loss_is_per_masked_token_whatever_the_batch(tmp_path, pretrained):
    """The run's eval_loss is the one `bigmodel eval` gives on the same file with other batches: a mean
    over all masked tokens, not a mean of per-batch means (which moved with the eval batch size)."""
    lines = (TINY / "tiny-corpus.txt").read_text().splitlines()
    train, held = tmp_path / "train.txt", tmp_path / "held.txt"
    train.write_text("\n".join(lines[:500]) + "\n")
    held.write_text("\n".join(lines[500:]) + "\n")
    run_dir = tmp_path / "run"
    result = run_cli("pretrain", "-r", "pretrain/tiny-debug", "-q", "-o", run_dir, "--set", f"tokenizer.name_or_path={pretrained}",
                     "--set", f"data.train_files=[{train}]", "--set", f"data.eval_files=[{held}]",
                     "--set", "training.max_steps=5", "--set", "training.per_device_eval_batch_size=3")
    assert result.returncode == 0, result.stderr[-2000:]
    trained = json.loads((run_dir / "metrics.json").read_text())
    result = run_cli("eval", "--model", run_dir, "--task", "mlm", "--data-file", held, "--batch-size", "64", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    evaluated = json.loads(result.stdout.strip().splitlines()[-1])
    assert trained["eval_masked_tokens"] == evaluated["eval_masked_tokens"] > 100
    assert trained["eval_loss"] == pytest.approx(evaluated["eval_loss"], rel=1e-6)


def test_bad_recipe_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {train_files: [x.txt]}\ntraining: {learing_rate: 1}\n")
    result = run_cli("pretrain", "--recipe", bad, "--output-dir", tmp_path / "run", timeout=60)
    assert result.returncode == 2
    assert "did you mean 'training.learning_rate'" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_missing_corpus_names_the_file(tmp_path):
    result = run_cli("pretrain", "-r", "pretrain/tiny-debug", "--set", "data.train_files=[nope.txt]",
                     "-o", tmp_path / "run", cwd=tmp_path, timeout=120)
    assert result.returncode == 2 and "nope.txt not found" in result.stderr and "Traceback" not in result.stderr


def test_a_finished_run_is_never_overwritten(pretrained):
    before = (pretrained / "model.safetensors").read_bytes()
    result = run_cli("pretrain", "-r", "pretrain/tiny-debug", "-o", pretrained, timeout=60)
    assert result.returncode == 2 and "already holds a finished run" in result.stderr
    assert (pretrained / "model.safetensors").read_bytes() == before


def test_header_and_closing_table_say_what_ran_where(tmp_path):
    result = run_cli("pretrain", "-r", "pretrain/tiny-debug", "-o", tmp_path / "run", env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr[-2000:]
    header = next(line for line in result.stderr.splitlines() if line.startswith("bigmodel pretrain:"))
    for words in ("BertForMaskedLM", "M parameters", "train 540 lines", "eval 60 lines", "cpu, fp32",
                  "effective batch 16", "30 steps"):
        assert words in header, (words, header)
    assert "perplexity" in result.stderr and str(tmp_path / "run") in result.stderr.replace("\n", "")


def test_time_budget_ends_the_run_and_the_bar_counts_seconds(tmp_path):
    result = run_cli("pretrain", "-r", "pretrain/tiny-debug", "-o", tmp_path / "run", "--set", "training.time_budget=3",
                     "--set", "training.max_steps=-1", env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "until the 3 s budget runs out" in result.stderr and "training (time budget)" in result.stderr
    assert "the budget ends the run, not num_train_epochs" in result.stdout + result.stderr  # said, not silent
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 3 <= metrics["train_runtime"] < 30 and math.isfinite(metrics["perplexity"])


def test_every_training_log_of_a_run_says_its_speed(pretrained):
    """A real run's training logs carry the speed of their window (`bigmodel report` plots it)."""
    logged = [e for e in json.loads((pretrained / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    assert logged and all(e["tokens_per_second"] > 0 and e["examples_per_second"] > 0 for e in logged), logged
    assert all(e["tokens_per_second"] > e["examples_per_second"] for e in logged)  # lines of several tokens each


def test_an_unfinished_run_of_another_recipe_is_refused_with_the_keys_that_differ(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    first = run_cli("pretrain", "-r", "pretrain/tiny-debug", "-o", run_dir, "-q", "--set", "training.max_steps=2",
                    "--set", "training.save_steps=1", timeout=120)
    assert first.returncode == 0, first.stderr[-1500:]
    (run_dir / "metrics.json").unlink()  # as if killed before its end: checkpoints and its recipe stay
    kept = sorted(p.name for p in run_dir.iterdir())
    again = run_cli("pretrain", "-r", "pretrain/tiny-debug", "-o", run_dir, "--set", "training.max_steps=3",
                    "--set", "training.save_steps=1", timeout=120)
    assert again.returncode == 2, again.stderr[-1500:]
    message = again.stderr.strip().splitlines()[-1]
    assert "holds an unfinished run of a different recipe (training.max_steps 2 there, 3 now)" in message, message
    assert "Traceback" not in again.stderr and sorted(p.name for p in run_dir.iterdir()) == kept



def test_recipe_changes_name_the_first_keys_and_count_the_rest():
    from bigmodel_cli.recipe import FinetuneRecipe
    from bigmodel_cli.rundir import recipe_changes

    saved = FinetuneRecipe.model_validate({"data": {"task": "mrpc"}})
    now = FinetuneRecipe.model_validate({"data": {"task": "rte"}, "training": {
        "bf16": True, "seed": 7, "learning_rate": 1e-4, "report_to": ["none"]}})
    assert recipe_changes(saved, now) == ('data.task "mrpc" there, "rte" now; training.bf16 false there, true now; '
                                          "training.learning_rate 5e-05 there, 0.0001 now; and 2 more")
