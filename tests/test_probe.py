"""The downstream probe (`training.probe`): logged with the loss at its cadence, never changing the training
(same seed, same model with it on or off; a killed run resumes to the same model and the same probe figures),
drawn by `bigmodel report`; bad settings are one line before any folder is made."""

from __future__ import annotations

import json

import pytest
from conftest import TINY, run_cli
from test_exact import PRETRAIN, assert_same_result, killed_in

pytestmark = pytest.mark.smoke

PROBE = ["--set", f"training.probe.data_dir={TINY / 'mrpc-tiny'}", "--set", "training.probe.every=10"]


def probes(run_dir) -> dict[int, dict]:
    history = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
    return {e["step"]: {k: v for k, v in e.items() if k not in ("probe_seconds", "epoch")}
            for e in history if "probe_accuracy" in e}


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("plain") / "run"
    assert run_cli(*PRETRAIN, "-o", run_dir).returncode == 0
    return run_dir


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("probed") / "run"
    result = run_cli(*PRETRAIN, *PROBE, "-o", run_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    return run_dir


def test_the_probe_is_logged_at_its_cadence_and_leaves_the_model_as_without_it(plain, probed):
    assert_same_result(plain, probed)  # weights, eval and train loss: the training's streams untouched
    logged = probes(probed)
    assert sorted(logged) == [0, 10, 20, 30]  # before the first step, every 10, the end
    for entry in logged.values():
        assert 0.0 <= entry["probe_accuracy"] <= 1.0 and 0.0 <= entry["probe_f1"] <= 1.0
        dev = (TINY / "mrpc-tiny" / "dev.tsv").read_text(encoding="utf-8-sig").splitlines()[1:]
        ones = sum(line.split("\t")[0] == "1" for line in dev)
        assert entry["probe_majority"] == pytest.approx(max(ones, len(dev) - ones) / len(dev), abs=1e-4)
    metrics = json.loads((probed / "metrics.json").read_text())
    assert metrics["probe_accuracy"] == logged[30]["probe_accuracy"]
    assert metrics["probe_seconds"] > 0 and metrics["probe_share"] == pytest.approx(
        metrics["probe_seconds"] / metrics["train_runtime"], rel=0.01)
    assert not any("probe" in k for k in json.loads((plain / "metrics.json").read_text()))


def test_a_run_killed_while_probing_resumes_to_the_same_model_and_probe_figures(tmp_path, probed):
    run_dir = tmp_path / "run"
    argv = [*PRETRAIN, *PROBE, "-o", run_dir]
    killed_in(argv, "bigmodel_cli.mlm.probe", "Probe", "run", "args[2].global_step == 30")
    assert (run_dir / "checkpoint-20").is_dir() and not (run_dir / "metrics.json").exists()
    resumed = run_cli(*argv)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_result(probed, run_dir)
    assert probes(run_dir) == probes(probed)


@pytest.mark.parametrize("pair_features", [True, False])
def test_probe_features_come_back_in_the_examples_order(pretrained, pair_features):
    """Batches are sorted by length; each example's features are still its own (as encoded alone), and a
    pair's are [u, v, |u-v|, u*v] of its sentences."""
    import numpy as np
    from datasets import Dataset
    from transformers import AutoTokenizer, BertForMaskedLM

    from bigmodel_cli.mlm.probe import Probe, combined, probe_inputs
    from bigmodel_cli.recipe import ProbeSection

    tokenizer, model = AutoTokenizer.from_pretrained(pretrained), BertForMaskedLM.from_pretrained(pretrained)
    first = ["the house", "a strange old museum near the river", "the museum", "a car", "the village in the morning"]
    second = ["a house", "the garden", "her brother found the narrow museum before dinner", "the boat", "a car"]
    data = Dataset.from_dict({"sentence1": first, "sentence2": second, "label": [0, 1, 0, 1, 0]})
    probe = Probe.__new__(Probe)
    probe.settings, probe.bf16 = ProbeSection(pair_features=pair_features), False
    together = combined([probe.features(model, *part) for part in probe_inputs(data, tokenizer, 64, pair_features)])
    for i in range(len(first)):
        alone = combined([probe.features(model, *part)
                          for part in probe_inputs(data.select([i]), tokenizer, 64, pair_features)])
        np.testing.assert_allclose(together[i], alone[0], atol=1e-5)
    assert together.shape[1] == model.config.hidden_size * (4 if pair_features else 1)


def test_a_probe_every_n_seconds_comes_when_they_have_passed(monkeypatch):
    from bigmodel_cli.mlm import probe as module
    from bigmodel_cli.recipe import ProbeSection

    probe = module.Probe.__new__(module.Probe)
    probe.settings = ProbeSection(every="60s")
    assert ProbeSection(every=" 90S").every == "90s" and probe.settings.seconds() == 60.0
    now = [1000.0]
    monkeypatch.setattr(module.time, "monotonic", lambda: now[0])
    probe.last_time = 1000.0
    assert not probe.due(7)
    now[0] = 1059.9
    assert not probe.due(8)
    now[0] = 1060.0
    assert probe.due(9)
    steps = module.Probe.__new__(module.Probe)
    steps.settings = ProbeSection(every=50)
    assert [s for s in range(1, 201) if steps.due(s)] == [50, 100, 150, 200]


def test_the_run_header_states_the_probe_as_written(tmp_path):
    """The header's notes are plain text: InferSent's [u, v, ...] is not taken for markup and dropped."""
    result = run_cli(*[x for x in PRETRAIN if x != "-q"], *PROBE, "--set", "training.max_steps=2", "-o", tmp_path / "run")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "probe: mrpc every 10 steps (mean features of each sentence, [u, v, |u-v|, u*v], of 160 training " \
           "examples, scored on 48 dev examples)" in result.stderr


def test_a_run_stopped_by_a_signal_ends_without_a_last_probe():
    from types import SimpleNamespace

    from bigmodel_cli.mlm.probe import Probe

    probed = []
    probe = Probe.__new__(Probe)
    probe.run = lambda model, state: probed.append(state.global_step)
    probe.last_step, state = 10, SimpleNamespace(global_step=13)
    probe.stop = SimpleNamespace(stopped_by="SIGTERM")
    probe.on_train_end(None, state, None)
    assert probed == []
    probe.stop = SimpleNamespace(stopped_by=None)  # the end of the steps or the budget: the last model probed
    probe.on_train_end(None, state, None)
    assert probed == [13]


def test_the_probe_is_plotted_by_report(probed, tmp_path):
    result = run_cli("report", probed, "-o", tmp_path / "report")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "report" / "probe.png").stat().st_size > 0
    assert "probe_accuracy" in (tmp_path / "report" / "report.md").read_text()


@pytest.mark.parametrize("setting, message", [
    ("training.probe.task=stsb", "the probe fits a classifier"),
    ("training.probe.every=soon", "training.probe.every 'soon'"),
    ("training.probe.data_dir=/no/such/folder", "/no/such/folder is not a folder"),
])
def test_bad_probe_settings_are_one_line_before_any_folder(tmp_path, setting, message):
    run_dir = tmp_path / "run"
    result = run_cli(*PRETRAIN, *PROBE, "--set", setting, "-o", run_dir)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not run_dir.exists()


def test_finetune_refuses_a_probe(tmp_path):
    result = run_cli("finetune", "-r", "finetune/mrpc-tiny-debug", "--set", "training.probe.task=mrpc",
                     "-o", tmp_path / "run")
    assert result.returncode == 2 and "training.probe is pretrain's" in result.stderr
