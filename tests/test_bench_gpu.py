"""`make bench-gpu`'s bookkeeping, which must work the first time a GPU's scarce minutes are spent on
it: the deadline, a failing section, keeping an earlier call's sections, the ratios, the steady speed."""

from __future__ import annotations

import importlib.util
import json
import types

import pytest
from conftest import ROOT

pytestmark = pytest.mark.unit

spec = importlib.util.spec_from_file_location("bench", ROOT / "benchmarks" / "bench.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


@pytest.fixture
def sections(monkeypatch):
    """The main sections replaced by instant fakes with the given expected seconds; finetune fails."""
    calls = []

    def fake(name):
        def run(_):
            calls.append(name)
            if name == "finetune":
                raise RuntimeError("boom")
            return {"ours": {"train_tokens_per_second": 1.0}}
        return run

    for name, expected in (("finetune", 100), ("pretrain_tiny", 150), ("pretrain_base", 100), ("nccl_launch", 50)):
        monkeypatch.setitem(bench.GPU_SECTIONS, name, (fake(name), expected))
    monkeypatch.setattr(bench, "gemm_peak", lambda *a: 1.0)
    return calls


def opts(tmp_path, **kw):
    return types.SimpleNamespace(**{"dry_run": True, "keep": False, "out": tmp_path / "bench-gpu.json", "sections": "main",
                                    "deadline": None, "model": "unused", **kw})


def test_a_gpu_run_skips_what_would_end_past_its_deadline_and_goes_on_after_a_failure(tmp_path, sections):
    options = opts(tmp_path, deadline=120)
    saved = []
    report = bench.gpu_sections(options, tmp_path, tmp_path, tmp_path, lambda r: saved.append(json.dumps(r)))
    assert sections == ["finetune", "pretrain_base", "nccl_launch"]  # 150 s expected would pass the 120 s deadline
    assert report["skipped"] == ["pretrain_tiny"]
    assert "RuntimeError: boom" in report["finetune"]["error"] and "boom" in report["finetune"]["traceback"]
    assert report["pretrain_base"]["ours"] and "seconds" in report["nccl_launch"]
    assert len(saved) == 4 and json.loads(saved[-1]) == report  # written after every section and at the end
    summary = bench.gpu_summary(report).splitlines()  # printed last, for a device call's reply
    assert "skipped: pretrain_tiny" in summary[0] and "finetune: FAILED RuntimeError: boom" in summary


def test_keep_runs_only_the_sections_missing_or_failed_in_the_earlier_report(tmp_path, sections):
    first = bench.gpu_sections(opts(tmp_path, deadline=120), tmp_path, tmp_path, tmp_path, lambda r: None)
    (tmp_path / "bench-gpu.json").write_text(json.dumps(first))
    sections.clear()
    report = bench.gpu_sections(opts(tmp_path, keep=True), tmp_path, tmp_path, tmp_path, lambda r: None)
    assert sections == ["finetune", "pretrain_tiny"]  # the failed one again, and the skipped one
    assert report["pretrain_base"] == first["pretrain_base"] and report["skipped"] == []


def test_each_variant_is_compared_with_its_default_run():
    report = {
        "finetune": {"ours": {"train_samples_per_second": 100.0, "train_samples_per_second_steady": 120.0,
                              "eval_samples_per_second": 800.0}},
        "finetune_eval_batch_256": {"ours": {"eval_samples_per_second": 2000.0, "eval_seconds": 20.0}},
        "finetune_bf16": {"ours": {"train_samples_per_second": 150.0, "train_samples_per_second_steady": 90.0}},
        "pretrain_base": {"fp32": {"train_tokens_per_second": 1.0},
                          "bf16": {"train_tokens_per_second": 400.0, "train_tokens_per_second_steady": None}},
        "pretrain_base_compiled": {"ours": {"train_tokens_per_second": 200.0, "train_tokens_per_second_steady": 500.0}},
        "finetune_compiled": {"error": "RuntimeError: x"},
    }
    bench.variant_ratios(report)
    assert report["finetune_bf16"]["ratio"] == {"train_samples_per_second": 1.5, "train_samples_per_second_steady": 0.75}
    assert report["pretrain_base_compiled"]["ratio"] == {"train_tokens_per_second": 0.5,  # against bf16, not fp32
                                                         "train_tokens_per_second_steady": None}
    assert report["finetune_eval_batch_256"]["ratio"] == {"eval_samples_per_second": 2.5}  # evaluation's speed alone
    assert "ratio" not in report["finetune_compiled"]


def test_the_steady_speed_leaves_out_the_first_window(tmp_path):
    history = [{"loss": 1, "tokens_per_second": 10.0}, {"loss": 1, "tokens_per_second": 50.0},
               {"eval_loss": 1}, {"loss": 1, "tokens_per_second": 52.0}, {"loss": 1, "tokens_per_second": 46.0}]
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    assert bench.steady(tmp_path, "tokens_per_second") == 50.0
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": history[:1]}))
    assert bench.steady(tmp_path, "tokens_per_second") is None  # one window: warm-up only


def test_sections_are_named_by_group_or_name_and_a_typo_is_an_error(capsys):
    assert bench.section_names("main") == ["finetune", "pretrain_tiny", "pretrain_base", "nccl_launch"]
    assert bench.section_names("finetune_bf16,nccl_launch") == ["finetune_bf16", "nccl_launch"]
    assert len(bench.section_names("all")) == len(bench.GPU_SECTIONS) == 12
    with pytest.raises(SystemExit, match="--sections finetune_bf17: no such section"):
        bench.section_names("main,finetune_bf17")


def test_host_syncs_are_counted_per_step_and_expected_only_after_set_up_or_a_logging_step():
    import warnings

    watch = bench.HostSyncs(cuda=False)

    def control(log=False):
        return types.SimpleNamespace(should_log=log, should_save=False, should_evaluate=False, should_training_stop=False)

    def sync():  # what torch.cuda.set_sync_debug_mode("warn") raises at each synchronizing operation
        warnings.warn("called a synchronizing CUDA operation", UserWarning, stacklevel=2)

    watch.on_train_begin(None, None, None)
    sync()  # set-up, before the first step ends
    watch.on_step_end(None, None, control())
    watch.on_step_end(None, None, control(log=True))
    sync()  # the logging step's read of its loss (Trainer logs after the step end)
    watch.on_step_end(None, None, control())
    sync()
    sync()
    warnings.warn("an unrelated warning", stacklevel=1)
    watch.on_step_end(None, None, control())  # a stall: two syncs in a step that logs nothing
    watch.on_train_end(None, None, None)
    report = watch.report()
    assert report["steps"] == 4 and report["syncs"] == 4 and report["stalled_steps"] == 1
    assert report["watched"] is None  # no GPU: nothing would warn for real
    assert sum(report["where"].values()) == 4 and all(k.startswith("test_bench_gpu.py:") for k in report["where"])
    assert bench._stalls({"host_syncs": report}) == "-"
    assert bench._stalls({"host_syncs": {**report, "watched": "on"}}) == "1"


@pytest.mark.smoke
def test_the_bench_watches_every_training_step_of_a_real_run(tmp_path, pretrained):
    from bigmodel_cli.commands import pretrain
    from bigmodel_cli.recipe import load_recipe

    recipe, _ = load_recipe("pretrain", "pretrain/tiny-debug", overrides=[
        "training.max_steps=5", "training.logging_steps=2", "training.report_to=[none]", "training.save_strategy=no",
        "training.eval_strategy=no", f"tokenizer.name_or_path={pretrained}"])
    with bench.watched_syncs() as watch:
        pretrain.run(recipe, tmp_path / "run", quiet=True)
    report = watch.report()
    assert report["steps"] == 5 and report["stalled_steps"] == 0
    assert watch._caught is None  # the warnings filter is back as it was
