"""BERT's own objective (`model.objective: mlm+nsp`): documents, sentence pairs half of them random, rows cut as
BERT cuts them, next-sentence accuracy on held-out pairs; the model loads as a masked LM and fine-tunes; a killed
run resumes to the uninterrupted one; settings that cannot work are one line."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from conftest import TINY, run_cli
from test_exact import PRETRAIN, assert_same_result, killed_in

from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.mlm.pairs import pair_rows, pairs, truncated
from bigmodel_cli.recipe import PretrainRecipe

NSP = [*PRETRAIN, "--set", "model.objective=mlm+nsp"]


def truncate_seq_pair(a: list, b: list, room: int) -> tuple[int, int]:
    """BERT's create_pretraining_data.py, token by token (from the end here)."""
    a, b = list(a), list(b)
    while len(a) + len(b) > room:
        (a if len(a) > len(b) else b).pop()
    return len(a), len(b)


def test_segments_are_cut_as_berts_truncate_seq_pair_cuts_them():
    la, lb = np.meshgrid(np.arange(0, 40), np.arange(0, 40))
    for room in (5, 10, 11, 29):
        a, b = truncated(la.ravel(), lb.ravel(), room)
        expected = [truncate_seq_pair(range(x), range(y), room) for x, y in zip(la.ravel(), lb.ravel())]
        assert list(zip(a.tolist(), b.tolist())) == expected


def test_pairs_are_consecutive_lines_of_a_document_or_half_of_them_a_line_of_another():
    documents = np.repeat(np.arange(400), np.random.default_rng(0).integers(1, 12, 400))
    first, second, label = pairs(documents, key=7)
    assert (documents[first] == documents[first + 1]).all()  # every pair starts inside a document
    assert len(first) == int((documents[1:] == documents[:-1]).sum())
    assert (second[label == 0] == first[label == 0] + 1).all()
    assert (documents[second[label == 1]] != documents[first[label == 1]]).all()
    assert 0.45 < label.mean() < 0.55
    again = pairs(documents, key=7)
    assert all((x == y).all() for x, y in zip(again, (first, second, label)))
    assert not (pairs(documents, key=8)[2] == label).all()


def test_pairs_are_made_in_shards_cut_where_a_document_starts():
    from bigmodel_cli.mlm.pairs import shards

    documents = np.repeat(np.arange(50), np.random.default_rng(0).integers(1, 9, 50))
    for size in (1, 7, 30, 10_000):
        cut = shards(documents, size)
        assert cut[0][0] == 0 and cut[-1][1] == len(documents) and all(a[1] == b[0] for a, b in zip(cut, cut[1:]))
        assert all(start == 0 or documents[start] != documents[start - 1] for start, _ in cut)
        assert all(stop - start >= size or stop == len(documents) for start, stop in cut)


def test_a_row_is_cls_a_sep_b_sep_with_b_from_segment_a_on():
    lines = [[10, 11, 12], [20, 21], [30] * 50, [40, 41, 42, 43], [50]]
    ids = pa.array(lines, type=pa.list_(pa.int32()))
    documents = np.array([0, 0, 0, 1, 1])
    rows = pair_rows(ids, documents, max_seq_length=16, cls_id=2, sep_id=3, key=1).to_pylist()
    first, second, label = pairs(documents, key=1)
    assert len(rows) == 3
    for row, a, b, next_label in zip(rows, first, second, label):
        la, lb = truncate_seq_pair(lines[a], lines[b], 13)
        assert row["input_ids"] == [2, *lines[a][:la], 3, *lines[b][:lb], 3]
        assert row["segment_a"] == la + 2 and row["lengths"] == [la + lb + 3] and len(row["input_ids"]) <= 16
        assert row["next_sentence_label"] == next_label


def test_documents_end_at_blank_lines_or_at_the_separator(tmp_path):
    from bigmodel_cli.mlm.corpus import load_corpus

    text = "\n\n".join(f" = Title {d} = \n\n" + "\n\n".join(f"line {d}.{i}" for i in range(4)) for d in range(30))
    (tmp_path / "c.txt").write_text(text + "\n")
    recipe = {"model": {"objective": "mlm+nsp"}, "data": {"train_files": [str(tmp_path / "c.txt")]}}
    with pytest.raises(BigmodelError, match="no two documents with a pair of consecutive lines"):
        load_corpus(PretrainRecipe(**recipe))  # blank lines end documents: one line each
    recipe["data"]["document_separator"] = r"= Title \d+ ="
    corpus = load_corpus(PretrainRecipe(**recipe))
    lines = {split: list(corpus.raw[split]["text"]) for split in ("train", "validation")}
    assert not any("Title" in line for split in lines.values() for line in split)
    assert len(lines["train"]) + len(lines["validation"]) == 120
    for split, docs in corpus.documents.items():  # whole documents on either side, in file order
        assert [int(line.split()[1].split(".")[0]) + 1 for line in lines[split]] == [int(x) for x in docs]  # after title d
    assert not set(corpus.documents["train"]) & set(corpus.documents["validation"])


def test_dupe_factor_makes_the_training_pairs_again_with_other_random_second_sentences(pretrained):
    from bigmodel_cli.commands.pretrain import prepare

    def rows(dupe: int):
        recipe = PretrainRecipe(model={"objective": "mlm+nsp"}, tokenizer={"name_or_path": str(pretrained)},
                                data={"train_files": [str(TINY / "tiny-corpus.txt")], "dupe_factor": dupe})
        return [split.to_dict() for split in prepare(recipe, None).rows]

    (train, held_out), (train3, held_out3) = rows(1), rows(3)
    assert held_out3 == held_out and len(train3["input_ids"]) == 3 * len(train["input_ids"])
    n = len(train["input_ids"])
    assert [e for ids in train3["example_ids"] for e in ids] == list(range(3 * n))
    copies = [train3["input_ids"][k * n:(k + 1) * n] for k in range(3)]
    labels = [train3["next_sentence_label"][k * n:(k + 1) * n] for k in range(3)]
    assert copies[0] != copies[1] != copies[2] and labels[0] != labels[1]
    for k in range(3):  # each copy draws its own half of random second sentences
        assert 0.4 < sum(labels[k]) / n < 0.6


@pytest.mark.parametrize("settings, message", [
    (["model.type=roberta"], "model.objective mlm+nsp trains a new bert model"),
    (["data.packing=true"], "data.packing is true but model.objective is mlm+nsp"),
    (["data.streaming=true", "training.max_steps=5"], "a stream does not hold"),
])
def test_settings_nsp_cannot_work_with_are_one_line(tmp_path, settings, message):
    result = run_cli(*NSP, *[x for s in settings for x in ("--set", s)], "-o", tmp_path / "run")
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_a_document_separator_without_nsp_is_refused():
    with pytest.raises(ValueError, match="data.document_separator splits documents for model.objective mlm\\+nsp"):
        PretrainRecipe(data={"train_files": ["x.txt"], "document_separator": "="})



@pytest.fixture(scope="module")
def nsp_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("nsp") / "run"
    result = run_cli(*[x for x in NSP if x != "-q"], "-o", run_dir)  # with its header
    assert result.returncode == 0, result.stderr[-2000:]
    assert "BertForPreTraining" in result.stderr and "masked LM + next sentence" in result.stderr
    return run_dir


@pytest.mark.smoke
def test_the_pretrained_model_reports_next_sentence_accuracy_loads_as_a_masked_lm_and_fine_tunes(nsp_run, tmp_path):
    from transformers import AutoModelForMaskedLM, BertForPreTraining

    metrics = json.loads((nsp_run / "metrics.json").read_text())
    assert 0.0 <= metrics["eval_nsp_accuracy"] <= 1.0 and metrics["perplexity"] > 1
    assert json.loads((nsp_run / "config.json").read_text())["architectures"] == ["BertForPreTraining"]
    full = BertForPreTraining.from_pretrained(nsp_run)
    masked = AutoModelForMaskedLM.from_pretrained(nsp_run)
    assert (masked.bert.embeddings.word_embeddings.weight == full.bert.embeddings.word_embeddings.weight).all()
    assert full.cls.seq_relationship.weight.abs().sum() > 0
    scored = run_cli("eval", "-m", nsp_run, "--task", "mlm", "--data-file", TINY / "tiny-corpus.txt")
    assert scored.returncode == 0, scored.stderr[-2000:]
    tuned = run_cli("finetune", "-r", "finetune/mrpc-tiny-debug", "--model", nsp_run, "-o", tmp_path / "ft", "-q")
    assert tuned.returncode == 0, tuned.stderr[-2000:]
    assert "eval_accuracy" in json.loads((tmp_path / "ft" / "metrics.json").read_text())


@pytest.mark.smoke
def test_a_killed_nsp_run_resumes_to_the_uninterrupted_one(nsp_run, tmp_path):
    run_dir = tmp_path / "run"
    argv = [*NSP, "-o", run_dir]
    killed_in(argv, "bigmodel_cli.mlm.trainer", "MLMTrainer", "training_step", "args[0].state.global_step == 25")
    assert (run_dir / "checkpoint-20").is_dir() and not (run_dir / "metrics.json").exists()
    resumed = run_cli(*argv)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_result(nsp_run, run_dir, keys=("eval_loss", "train_loss", "eval_nsp_accuracy"))
