"""Results people can look at: plots, model cards, TensorBoard logs, spread over seeds."""

import json

import pytest
import yaml
from conftest import run_cli

pytestmark = pytest.mark.smoke
PNG = b"\x89PNG\r\n\x1a\n"


def test_report_plots_the_logged_values_and_compares_runs(finetuned, pretrained, tmp_path):
    out = tmp_path / "report"
    result = run_cli("report", finetuned, pretrained, "--output", out)
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ("training_loss.png", "learning_rate.png", "training_speed.png", "eval_f1.png",
                 f"confusion_matrix_{finetuned.name}.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000, name  # a real picture, not an empty canvas
    assert not (out / "eval_masked_tokens.png").exists()  # a count of the held-out set, not a metric to plot
    text = (out / "report.md").read_text()
    metrics = json.loads((finetuned / "metrics.json").read_text())
    assert f"{metrics['eval_f1']:.4f}" in text and finetuned.name in text and pretrained.name in text
    state = json.loads((finetuned / "trainer_state.json").read_text())
    assert any("eval_f1" in e for e in state["log_history"])  # the plotted values are the logged ones
    matrix = metrics["eval_confusion_matrix"]
    assert sum(map(sum, matrix)) == metrics["eval_samples"]
    assert sum(matrix[i][i] for i in range(2)) / metrics["eval_samples"] == pytest.approx(metrics["eval_accuracy"])


def test_model_card_parses_and_names_the_metrics(finetuned):
    text = (finetuned / "README.md").read_text()
    front = yaml.safe_load(text.split("---")[1])
    assert front["library_name"] == "transformers" and "text-classification" in front["tags"]
    names = {m["type"] for m in front["model-index"][0]["results"][0]["metrics"]}
    assert {"eval_accuracy", "eval_f1", "eval_loss"} <= names
    assert "AutoModelForSequenceClassification" in text and "resolved_recipe.yaml" in text


def test_tensorboard_events_hold_the_logged_scalars(pretrained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((pretrained / "runs").rglob("events.out.tfevents.*"))
    assert events
    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    assert "train/loss" in accumulator.Tags()["scalars"]
    logged = [e["loss"] for e in json.loads((pretrained / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    seen = [s.value for s in accumulator.Scalars("train/loss")]
    assert seen == pytest.approx(logged, rel=1e-5)


def test_several_seeds_report_mean_and_spread(pretrained, tmp_path):
    run_dir = tmp_path / "seeds"
    result = run_cli("finetune", "-r", "finetune/mrpc-tiny-debug", "--model", pretrained, "-o", run_dir,
                     "--seeds", "2", "--set", "training.num_train_epochs=1")
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((run_dir / "seeds_summary.json").read_text())
    assert summary["seeds"] == [0, 1]
    for seed in (0, 1):
        assert (run_dir / f"seed-{seed}" / "metrics.json").is_file()
    import statistics

    per_seed = [json.loads((run_dir / f"seed-{seed}" / "metrics.json").read_text()) for seed in (0, 1)]
    for key in ("eval_f1", "eval_accuracy", "eval_loss"):  # the runs' own figures, their mean and spread
        values = [m[key] for m in per_seed]
        assert summary[key]["values"] == values
        assert summary[key]["mean"] == pytest.approx(statistics.fmean(values))
        assert summary[key]["std"] == pytest.approx(statistics.stdev(values))
    assert per_seed[0]["eval_loss"] != per_seed[1]["eval_loss"]  # two seeds, two runs: not one run twice
    assert "+-" in result.stderr
    # The folder itself holds a usable model: the median seed's (the lower middle of an even count), said so.
    chosen = summary["model"]
    metric = chosen["chosen_by"].removeprefix("median ")
    expected = min((0, 1), key=lambda seed: (per_seed[seed][metric], seed))
    assert chosen["seed"] == expected and f"seed {expected}'s (median {metric})" in result.stderr
    seed_dir = run_dir / f"seed-{expected}"
    for name in ("model.safetensors", "config.json", "tokenizer.json", "resolved_recipe.yaml", "metrics.json"):
        assert (run_dir / name).read_bytes() == (seed_dir / name).read_bytes(), name
    from conftest import TINY

    evaluated = run_cli("eval", "--model", run_dir, "--data-dir", TINY / "mrpc-tiny", "--json")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert json.loads(evaluated.stdout.strip().splitlines()[-1])["eval_accuracy"] == pytest.approx(
        per_seed[expected]["eval_accuracy"], abs=1e-9)
