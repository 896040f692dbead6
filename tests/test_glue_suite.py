"""`bigmodel glue`: every task present in a GLUE download, its official score, the GLUE score; a
rerun skips finished tasks; RTE, MRPC and STS-B can start from the MNLI model; bad folders stop early."""

from __future__ import annotations

import json
import random
import shutil

import pytest
from conftest import TINY, run_cli

pytestmark = pytest.mark.smoke

FAST = ["--set", "training.num_train_epochs=1", "--set", "data.max_seq_length=64", "--set", "training.report_to=[none]",
        "--set", "data.max_train_samples=32", "--set", "training.global_batch_size=16",
        "--set", "training.per_device_train_batch_size=16", "-q"]
WORDS = "the a farmer city river house bought saw red old quiet near after storm school letter boat".split()


def sentence(rng) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 9))) + " ."


def write_tsv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(["\t".join(header), *("\t".join(map(str, r)) for r in rows)]) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory):
    """A small GLUE download: MRPC (shipped tiny files), RTE (upper case), sts-b (lower case), MNLI."""
    root, rng = tmp_path_factory.mktemp("glue"), random.Random(0)
    shutil.copytree(TINY / "mrpc-tiny", root / "MRPC")
    for split, n in (("train", 40), ("dev", 16)):
        write_tsv(root / "RTE" / f"{split}.tsv", ["index", "sentence1", "sentence2", "label"],
                  [(i, sentence(rng), sentence(rng), rng.choice(["entailment", "not_entailment"])) for i in range(n)])
        write_tsv(root / "sts-b" / f"{split}.tsv", ["index", "sentence1", "sentence2", "score"],
                  [(i, sentence(rng), sentence(rng), f"{rng.uniform(0, 5):.3f}") for i in range(n)])
    for split, n in (("train", 48), ("dev_matched", 16), ("dev_mismatched", 16)):
        write_tsv(root / "MNLI" / f"{split}.tsv", ["index", "sentence1", "sentence2", "gold_label"],
                  [(i, sentence(rng), sentence(rng), rng.choice(["entailment", "neutral", "contradiction"])) for i in range(n)])
    return root


def test_glue_scores_every_task_present_and_a_rerun_skips_them(tmp_path, glue_dir, pretrained):
    out = tmp_path / "glue"
    result = run_cli("glue", "--model", pretrained, "--data-dir", glue_dir, "-o", out, "--from-mnli", *FAST)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "glue_summary.json").read_text())
    assert summary["order"] == ["mnli", "mrpc", "stsb", "rte"]  # MNLI first: the others start from it
    for name, task in summary["tasks"].items():
        metrics = json.loads((out / name / "metrics.json").read_text())
        if name == "mnli":
            assert set(task["metrics"]) == {"accuracy_matched", "accuracy_mismatched"}
            assert task["metrics"]["accuracy_matched"] == metrics["eval_accuracy"]
        else:
            assert task["metrics"] == {k.removeprefix("eval_"): v for k, v in metrics.items()
                                       if k.removeprefix("eval_") in task["metrics"]}
        assert task["score"] == pytest.approx(100 * sum(task["metrics"].values()) / len(task["metrics"]))
        assert (out / name / "model.safetensors").is_file()
    assert set(summary["tasks"]["mrpc"]["metrics"]) == {"f1", "accuracy"}
    assert set(summary["tasks"]["stsb"]["metrics"]) == {"pearson", "spearmanr"}
    recipe = (out / "rte" / "resolved_recipe.yaml").read_text()
    assert f"name_or_path: {out / 'mnli'}" in recipe  # started from the MNLI model
    assert summary["glue_score"] == pytest.approx(sum(t["score"] for t in summary["tasks"].values()) / 4)
    table = (out / "glue_summary.md").read_text()
    assert "**GLUE score**" in table and f"{summary['glue_score']:.2f}" in table
    again = run_cli("glue", "--model", pretrained, "--data-dir", glue_dir, "-o", out, "--from-mnli", *FAST[:-1])
    assert again.returncode == 0, again.stderr[-2000:]
    assert all(f"{name}: finished in {out / name}, skipped" in again.stderr for name in summary["tasks"])
    assert json.loads((out / "glue_summary.json").read_text())["glue_score"] == summary["glue_score"]


def test_a_rerun_made_otherwise_is_refused_or_with_overwrite_rerun(tmp_path, glue_dir, pretrained):
    """Another --set value or seed count for a finished task: refused with the difference named (its old
    results are not passed off as the new run's); --overwrite reruns it."""
    out, base = tmp_path / "glue", ["glue", "--model", pretrained, "--data-dir", glue_dir, "--tasks", "mrpc"]
    assert run_cli(*base, "-o", out, *FAST).returncode == 0
    first = (out / "mrpc" / "metrics.json").read_bytes()
    changed = [*FAST, "--set", "training.learning_rate=0.0003"]
    refused = run_cli(*base, "-o", out, *changed)
    assert refused.returncode == 2 and "training.learning_rate 5e-05 there, 0.0003 now" in refused.stderr, refused.stderr
    assert "--overwrite" in refused.stderr and (out / "mrpc" / "metrics.json").read_bytes() == first
    seeds = run_cli(*base, "-o", out, "--seeds", "2", *FAST)
    assert seeds.returncode == 2 and "--seeds 1 there, 2 now" in seeds.stderr, seeds.stderr
    again = run_cli(*base, "-o", out, "--overwrite", *changed)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "learning_rate: 0.0003" in (out / "mrpc" / "resolved_recipe.yaml").read_text()
    assert (out / "mrpc" / "metrics.json").read_bytes() != first


@pytest.mark.parametrize("layout, words", [
    ("empty", ["holds no GLUE task folder", "CoLA/"]),
    ("no-dev", ["has no dev.tsv"]),
    ("not-a-folder", ["is not a folder"]),
])
def test_bad_glue_folders_stop_with_one_line_before_training(tmp_path, layout, words, pretrained):
    data = tmp_path / "data"
    if layout != "not-a-folder":
        data.mkdir()
    if layout == "no-dev":
        write_tsv(data / "RTE" / "train.tsv", ["index", "sentence1", "sentence2", "label"], [(0, "a", "b", "entailment")])
    result = run_cli("glue", "--model", pretrained, "--data-dir", data, "-o", tmp_path / "out", "-q")
    assert result.returncode == 2, result.stderr[-1500:]
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and all(w in err for w in words), err
    assert not (tmp_path / "out").exists()


def test_glue_under_launch_spreads_each_task_over_the_processes(tmp_path, glue_dir, pretrained):
    """`bigmodel launch -n 2 glue`: both processes run the tasks in order, MRPC starts from the MNLI model
    the two of them trained, the main process writes one summary; a second launch skips every task."""
    out = tmp_path / "glue"
    args = ["launch", "-n", "2", "glue", "--model", pretrained, "--data-dir", glue_dir, "-o", out, "--from-mnli",
            "--tasks", "mnli", "--tasks", "mrpc", *FAST]
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "glue_summary.json").read_text())
    assert summary["order"] == ["mnli", "mrpc"]
    assert (out / "mnli" / "model.safetensors").is_file() and (out / "mrpc" / "model.safetensors").is_file()
    assert str(out / "mnli") in (out / "mrpc" / "resolved_recipe.yaml").read_text()
    mrpc = json.loads((out / "mrpc" / "metrics.json").read_text())
    assert summary["tasks"]["mrpc"]["metrics"]["accuracy"] == mrpc["eval_accuracy"]
    assert result.stderr.count("glue_summary.json and glue_summary.md in") == 1  # said by the main process only
    again = run_cli(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("finished in") == 2
    rerun = json.loads((out / "glue_summary.json").read_text())
    assert rerun["glue_score"] == summary["glue_score"] and not any(t["trained"] for t in rerun["tasks"].values())
