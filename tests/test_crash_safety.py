"""A kill between any two of a run's closing writes leaves a folder the same command finishes:
`metrics.json`, the mark of a finished run, is written last; the resolved recipe and a
prediction file are replaced whole (written under another name, then renamed), never in place."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import TINY, run_cli

from bigmodel_cli.recipe import PretrainRecipe, dump_recipe


def written_last(run_dir: Path) -> list[str]:
    """The files of run_dir's top level written after metrics.json (none: it came last)."""
    mark = (run_dir / "metrics.json").stat().st_mtime_ns
    return [p.name for p in run_dir.iterdir() if p.is_file() and p.stat().st_mtime_ns > mark]


@pytest.mark.smoke
def test_metrics_json_is_the_last_file_a_finetune_run_writes(tmp_path, pretrained):
    run_dir = tmp_path / "run"
    result = run_cli("finetune", "-r", "finetune/mrpc-tiny-debug", "--model", pretrained, "-q", "-o", run_dir,
                     "--set", "training.num_train_epochs=1", "--set", f"data.test_file={TINY / 'mrpc-tiny' / 'dev.tsv'}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert {"README.md", "trainer_state.json", "test_predictions.jsonl", "model.safetensors"} <= {
        p.name for p in run_dir.iterdir()}
    assert written_last(run_dir) == []


@pytest.mark.smoke
def test_metrics_json_is_the_last_file_a_pretraining_run_writes(pretrained):
    assert {"README.md", "trainer_state.json", "model.safetensors"} <= {p.name for p in pretrained.iterdir()}
    assert written_last(pretrained) == []


@pytest.mark.unit
def test_the_resolved_recipe_is_rewritten_only_when_it_changed_and_whole(tmp_path):
    path = tmp_path / "resolved_recipe.yaml"
    recipe = PretrainRecipe(data={"train_files": ["a.txt"]})
    dump_recipe(recipe, path, "bigmodel pretrain")
    before = path.stat()
    dump_recipe(recipe, path, "bigmodel pretrain --set x=1")  # a resume with the same values
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    changed = PretrainRecipe(data={"train_files": ["b.txt"]})
    dump_recipe(changed, path, "bigmodel pretrain")
    assert path.stat().st_ino != before.st_ino  # a new file renamed over the old one, not written in place
    assert "b.txt" in path.read_text() and [p.name for p in tmp_path.iterdir()] == [path.name]


@pytest.mark.unit
def test_a_prediction_file_appears_only_complete(tmp_path):
    from bigmodel_cli.classification.inference import sink

    output = tmp_path / "predictions.jsonl"
    with sink(str(output)) as out:
        out.write('{"label": "a"}\n')
        assert not output.exists()  # while it is written, the named file does not exist
    assert output.read_text() == '{"label": "a"}\n'
    crashed = tmp_path / "crashed.jsonl"
    with pytest.raises(RuntimeError), sink(str(crashed)) as out:
        out.write('{"label": "a"}\n')
        raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.jsonl"]  # nothing partial blocks the rerun

