"""The corpora people have: many files and globs, gzip and zstd, JSON Lines, a blank file among many,
a file that is one very long line, bytes that do not decode. Each loads the lines a plain file with
the same text would, or stops with one line that names the file and what to do."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from conftest import TINY, run_cli

from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.mlm.corpus import MAX_LINE_CHARS, load_corpus, pieces
from bigmodel_cli.recipe import PretrainRecipe

LINES = [line for line in (TINY / "tiny-corpus.txt").read_text().splitlines() if line.strip()]


def recipe(files, **data) -> PretrainRecipe:
    held_out = [str(TINY / "tiny-corpus.txt")]  # apart: every training line trains, in order
    return PretrainRecipe(data={"train_files": [str(f) for f in files], "eval_files": held_out, **data})


def train_lines(*files, **data) -> list[str]:
    return load_corpus(recipe(files, **data)).raw["train"]["text"]


def write_zstd(path: Path, text: str) -> Path:
    import zstandard

    path.write_bytes(zstandard.ZstdCompressor().compress(text.encode()))
    return path


def test_globs_gzip_zstd_and_json_lines_give_the_lines_of_the_plain_files(tmp_path):
    half = len(LINES) // 2
    first, second = "\n".join(LINES[:half]) + "\n", "\n".join(LINES[half:]) + "\n"
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "a.txt").write_text(first)
    (tmp_path / "plain" / "b.txt").write_text(second)
    expected = train_lines(tmp_path / "plain" / "a.txt", tmp_path / "plain" / "b.txt")
    assert expected == LINES

    assert train_lines(tmp_path / "plain" / "*.txt") == expected  # a glob, sorted
    with gzip.open(tmp_path / "a.txt.gz", "wt") as f:
        f.write(first)
    assert train_lines(tmp_path / "a.txt.gz", write_zstd(tmp_path / "b.txt.zst", second)) == expected
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"id": i, "body": t}) + "\n" for i, t in enumerate(LINES[:half])))
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps({"id": 0, "body": t}) + "\n" for t in LINES[half:]))
    assert train_lines(tmp_path / "a.jsonl", tmp_path / "b.jsonl.gz", text_column="body") == expected
    # text and JSON Lines mixed: each by its reader, in the order given
    assert train_lines(tmp_path / "a.jsonl", tmp_path / "plain" / "b.txt", text_column="body") == expected


def test_a_blank_file_among_many_is_skipped_and_said(tmp_path):
    (tmp_path / "a.txt").write_text("\n".join(LINES) + "\n")
    (tmp_path / "b.txt").write_text("  \n\n\t\n")
    (tmp_path / "c.txt").write_bytes(b"")
    corpus = load_corpus(recipe([tmp_path / "*.txt"]))
    assert corpus.raw["train"]["text"] == LINES
    assert corpus.notes == ["skipped 2 blank files of data.train_files: b.txt, c.txt"]
    assert corpus.files["train"] == [str(tmp_path / "a.txt")]


def test_a_line_longer_than_the_limit_is_cut_at_whitespace_into_pieces():
    line = " ".join(f"word{i}" for i in range(60_000))  # about 470 000 characters
    cut = pieces(line)
    assert "".join(cut) == line and len(cut) > 1
    assert all(len(p) <= MAX_LINE_CHARS for p in cut)
    assert all(p.endswith(" ") for p in cut[:-1])  # at whitespace: no word is split
    assert pieces("x" * (2 * MAX_LINE_CHARS + 5)) == ["x" * MAX_LINE_CHARS] * 2 + ["x" * 5]  # no whitespace: cut anyway


@pytest.mark.smoke
def test_a_file_that_is_one_very_long_line_trains(tmp_path):
    words = " ".join(LINES).split()
    long_line = " ".join(words[i % len(words)] for i in range(400_000))  # about 2.4 MB, one line
    (tmp_path / "one-line.txt").write_text(long_line + "\n")
    result = run_cli("pretrain", "-r", "pretrain/tiny-debug", "-o", tmp_path / "run", "--set",
                     f"data.train_files=[{tmp_path / 'one-line.txt'}]", "--set", f"data.eval_files=[{TINY / 'tiny-corpus.txt'}]",
                     "--set", "training.max_steps=2", "--set", "training.report_to=[none]", timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["train_samples"] == 1  # one line, split into pieces and examples, none dropped


def test_json_lines_without_the_text_column_names_the_keys_it_has(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"id": 1, "body": "some text"}\n')
    with pytest.raises(BigmodelError, match=r"data.text_column 'text' is not in .*a.jsonl \(it has: id, body\)"):
        load_corpus(recipe([tmp_path / "a.jsonl"]))


@pytest.mark.parametrize("name, content, match", [
    ("late.txt", ("good line\n" * 200_000).encode() + "caf\u00e9\n".encode("latin-1"), r"late.txt is not UTF-8 at byte 2000003"),
    ("early.txt.gz", gzip.compress("ok\ncaf\u00e9\n".encode("latin-1")), r"early.txt.gz is not UTF-8 at byte 6 \(decompressed\)"),
])
def test_bytes_that_do_not_decode_name_the_file_and_the_offset(tmp_path, name, content, match):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(BigmodelError, match=match):
        load_corpus(recipe([tmp_path / name]))
    if name.endswith(".gz"):  # compressed files are read as UTF-8 only
        with pytest.raises(BigmodelError, match=r"early.txt.gz is compressed and data.encoding is latin-1"):
            load_corpus(recipe([tmp_path / name], encoding="latin-1"))
        return
    lines = load_corpus(recipe([tmp_path / name], encoding="latin-1")).raw["train"]["text"]  # or read as it is
    assert lines[-1] == "caf\u00e9"


@pytest.mark.parametrize("patterns, match", [
    (["nothing-*.txt"], r"data.train_files: 'nothing-\*.txt' matches no file"),
    (["missing.txt"], r"data.train_files: missing.txt not found"),
    (["."], r"data.train_files: . is a folder; give its files"),
])
def test_paths_that_give_no_file_are_named(tmp_path, monkeypatch, patterns, match):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BigmodelError, match=match):
        load_corpus(PretrainRecipe(data={"train_files": patterns}))


@pytest.mark.smoke
def test_an_unknown_encoding_is_a_settings_error(tmp_path):
    result = run_cli("pretrain", "-r", "pretrain/tiny-debug", "-o", tmp_path / "run", "--set", "data.encoding=klingon")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "data.encoding" in result.stderr and "'klingon' is not an encoding" in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.smoke
def test_train_and_validation_files_as_options_as_finetune_has_them(tmp_path):
    """`pretrain --train-file a --train-file b --validation-file v`: the recipe's files replaced, the
    held-out lines those of v; without --validation-file, held out from the given training files."""
    import yaml

    half = len(LINES) // 2
    a, b, held = tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "held.txt"
    a.write_text("\n".join(LINES[:half]) + "\n")
    b.write_text("\n".join(LINES[half:]) + "\n")
    held.write_text("\n".join(LINES[:40]) + "\n")
    base = ["pretrain", "-r", "pretrain/tiny-debug", "-q", "--set", "training.max_steps=2"]
    result = run_cli(*base, "--train-file", a, "--train-file", b, "--validation-file", held, "-o", tmp_path / "run")
    assert result.returncode == 0, result.stderr[-3000:]
    data = yaml.safe_load((tmp_path / "run" / "resolved_recipe.yaml").read_text())["data"]
    assert data["train_files"] == [str(a), str(b)] and data["eval_files"] == [str(held)]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["train_samples"] == len(LINES) and metrics["eval_samples"] == 40
    result = run_cli(*base, "--train-file", a, "-o", tmp_path / "split")
    assert result.returncode == 0, result.stderr[-3000:]
    data = yaml.safe_load((tmp_path / "split" / "resolved_recipe.yaml").read_text())["data"]
    assert data["train_files"] == [str(a)] and data["eval_files"] == []
    metrics = json.loads((tmp_path / "split" / "metrics.json").read_text())
    assert metrics["train_samples"] + metrics["eval_samples"] == half
