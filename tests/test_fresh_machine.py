"""A fresh clone, away from this repository's data: the shipped recipes name no path outside the
project, and without local files the hub's data sets are used (here a faked `load_dataset`)."""

from __future__ import annotations

import pytest
from conftest import ROOT, TINY

from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.recipe import PATH_FIELDS, list_recipes, load_recipe

pytestmark = pytest.mark.unit


def test_shipped_recipes_name_no_path_outside_the_project():
    import yaml

    from bigmodel_cli.recipe import find_recipe

    for name in list_recipes():
        path = find_recipe(name)
        data = (yaml.safe_load(path.read_text()) or {}).get("data") or {}
        for field in PATH_FIELDS:
            value = data.get(field)
            for given in value if isinstance(value, list) else [value] if value else []:
                shipped = (path.parent / given).resolve()  # data a recipe names ships beside it
                assert shipped.is_relative_to(ROOT) and shipped.exists(), (name, field, given)


def fake_hub(calls: list, splits: dict):
    from datasets import Dataset, DatasetDict

    def load_dataset(name, config=None, split=None, **kwargs):
        calls.append((name, config, split))
        data = DatasetDict({k: Dataset.from_dict(v) for k, v in splits.items()})
        return data[split] if split else data

    return load_dataset


def test_pretraining_without_files_takes_wikitext_from_the_hub(monkeypatch):
    import datasets

    from bigmodel_cli.mlm.corpus import load_corpus

    lines = [line for line in (TINY / "tiny-corpus.txt").read_text().splitlines() if line.strip()]
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", fake_hub(calls, {
        "train": {"text": lines[:300] + [""]}, "validation": {"text": lines[300:340]}, "test": {"text": lines[340:360]}}))
    recipe, _ = load_recipe("pretrain", "pretrain/bert-tiny")
    corpus = load_corpus(recipe)
    assert calls == [("Salesforce/wikitext", "wikitext-2-raw-v1", None)]
    assert corpus.raw["train"]["text"] == lines[:300] and corpus.raw["validation"]["text"] == lines[300:340]


def test_glue_without_a_data_dir_comes_from_the_hub_or_says_how_to_point_at_files(monkeypatch):
    import datasets

    from bigmodel_cli.classification.data import load_glue
    from bigmodel_cli.classification.tasks import get_task

    rows = {"sentence1": ["a b", "c d"], "sentence2": ["e f", "g h"], "label": [1, 0], "idx": [0, 1]}
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", fake_hub(calls, {"validation": rows}))
    data = load_glue(get_task("mrpc"), "validation")
    assert calls == [("nyu-mll/glue", "mrpc", "validation")]
    assert data["sentence1"] == rows["sentence1"] and data["label"] == rows["label"]

    def offline(*args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(BigmodelError, match="offline, pass --data-dir with GLUE's mrpc files"):
        load_glue(get_task("mrpc"), "validation")
