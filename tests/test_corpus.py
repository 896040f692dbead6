"""Real corpora: rows packed with Arrow and numpy equal the reference packing, the tokenizer trained
from a stream of batches equals the one trained from a list of lines, and trained tokenizers and
prepared rows are cached by everything that decides them (a changed file or setting makes new
ones, never stale ones)."""

from __future__ import annotations

import bisect
import random
import shutil

import pytest
from conftest import TINY, run_cli

from bigmodel_cli.mlm import text
from bigmodel_cli.mlm.text import pack, packed_dataset

pytestmark = pytest.mark.unit


def reference_pack(lengths: list[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing as first written: a sorted list of (space left, bin) and bisect."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    free: list[tuple[int, int]] = []
    bins: list[list[int]] = []
    for i in order:
        n = lengths[i]
        at = bisect.bisect_left(free, (n, -1))
        if at < len(free):
            space, b = free.pop(at)
            bins[b].append(i)
            if space - n > 0:
                bisect.insort(free, (space - n, b))
        else:
            bins.append([i])
            if capacity - n > 0:
                bisect.insort(free, (capacity - n, len(bins) - 1))
    return bins


def reference_rows(ids: list[list[int]], capacity: int, packing: bool) -> dict:
    """The rows as first built, in Python lists: groups in corpus order of their first example."""
    groups = reference_pack([len(x) for x in ids], capacity) if packing else [[i] for i in range(len(ids))]
    groups.sort(key=min)
    return {"input_ids": [[t for i in g for t in ids[i]] for g in groups],
            "lengths": [[len(ids[i]) for i in g] for g in groups], "example_ids": [list(g) for g in groups]}


def examples_of(ids: list[list[int]]):
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": ids}).add_column("example_id", list(range(len(ids))))


@pytest.mark.parametrize("count,capacity", [(1, 16), (9, 16), (2000, 128), (5000, 64)])
def test_packing_equals_the_reference_bin_for_bin_and_row_for_row(count, capacity, tmp_path):
    rng = random.Random(count)
    lengths = [rng.choice([rng.randint(3, 20), rng.randint(3, capacity)]) for _ in range(count)]
    assert pack(lengths, capacity) == reference_pack(lengths, capacity)
    ids = [[rng.randint(5, 99) for _ in range(n)] for n in lengths]
    for packing in (True, False):
        expected = reference_rows(ids, capacity, packing)
        assert packed_dataset(examples_of(ids), capacity, packing).to_dict() == expected  # in memory
        written = packed_dataset(examples_of(ids), capacity, packing, tmp_path / f"{packing}.arrow")
        assert written.cache_files and written.to_dict() == expected  # memory-mapped from its file


def test_shard_by_shard_every_example_is_placed_once_within_capacity(monkeypatch):
    """Past `SHARD_EXAMPLES`, each shard is packed on its own: memory stays flat, the guarantees hold."""
    monkeypatch.setattr(text, "SHARD_EXAMPLES", 97)
    rng = random.Random(3)
    ids = [[rng.randint(5, 99) for _ in range(rng.randint(2, 40))] for _ in range(1000)]
    rows = packed_dataset(examples_of(ids), 64, True).to_dict()
    placed = [e for row in rows["example_ids"] for e in row]
    assert sorted(placed) == list(range(1000))
    assert all(sum(lengths) <= 64 and sum(lengths) == len(row) for lengths, row in zip(rows["lengths"], rows["input_ids"]))
    for row, lengths, eids in zip(rows["input_ids"], rows["lengths"], rows["example_ids"]):  # each line whole, in place
        starts = [0, *[sum(lengths[:k + 1]) for k in range(len(lengths))]]
        assert [row[a:b] for a, b in zip(starts, starts[1:])] == [ids[e] for e in eids]
    firsts = [min(e) for e in rows["example_ids"]]
    assert all(firsts[k] < firsts[k + 1] for k in range(len(firsts) - 1) if firsts[k] // 97 == firsts[k + 1] // 97)


def test_examples_in_arrow_files_are_read_batch_by_batch_into_the_same_rows(monkeypatch, tmp_path):
    """Tokenized examples on disk (several files, as `datasets.map` with workers writes them) are read
    as streams, not memory-mapped, shard by shard: the rows are those of the same examples in memory."""
    from datasets import Dataset, load_from_disk

    monkeypatch.setattr(text, "SHARD_EXAMPLES", 97)
    rng = random.Random(5)
    ids = [[rng.randint(5, 99) for _ in range(rng.randint(2, 40))] for _ in range(1000)]
    Dataset.from_dict({"n": list(range(1000))}).save_to_disk(tmp_path / "lines")
    on_disk = load_from_disk(tmp_path / "lines").map(lambda b: {"input_ids": [ids[n] for n in b["n"]]}, batched=True,
                                                     batch_size=64, remove_columns=["n"], num_proc=2)
    on_disk = on_disk.add_column("example_id", list(range(1000)))
    assert len(on_disk.cache_files) == 2
    shards = list(text.id_shards(on_disk, 97))
    assert [len(a) for a in shards] == [97] * 10 + [30]
    assert [row for a in shards for row in a.to_pylist()] == ids
    for packing in (True, False):
        assert packed_dataset(on_disk, 64, packing).to_dict() == packed_dataset(examples_of(ids), 64, packing).to_dict()


def test_the_tokenizer_trained_from_a_stream_of_batches_is_the_one_trained_from_a_list():
    from datasets import Dataset

    from bigmodel_cli.mlm.tokenizer import BATCH_LINES, train_wordpiece

    lines = [line for line in (TINY / "tiny-corpus.txt").read_text().splitlines() if line.strip()]
    lines = lines * (2 * BATCH_LINES // len(lines) + 1)  # several batches
    listed = train_wordpiece(lines, vocab_size=300, lowercase=True, min_frequency=1, show_progress=False)
    streamed = train_wordpiece(Dataset.from_dict({"text": lines}), vocab_size=300, lowercase=True, min_frequency=1,
                               show_progress=False)
    assert streamed.backend_tokenizer.to_str() == listed.backend_tokenizer.to_str()



@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_a_shuffled_selection_read_in_file_order_trains_the_tokenizer_its_lines_in_order_train(tmp_path, family):
    """Tokenizer training reads a memory-mapped selection in file order with plain reads (its pages never
    all resident); word counts do not depend on the order, so the tokenizer is the one of the lines in order."""
    from datasets import load_dataset

    from bigmodel_cli.mlm.corpus import file_order_batches
    from bigmodel_cli.mlm.tokenizer import BATCH_LINES, train_tokenizer

    lines = [line for line in (TINY / "tiny-corpus.txt").read_text().splitlines() if line.strip()]
    lines = [f"{line} {i % 97}" for i, line in enumerate(lines * (3 * BATCH_LINES // len(lines) + 1))]
    (tmp_path / "a.txt").write_text("\n".join(lines[: len(lines) // 2]) + "\n")
    (tmp_path / "b.txt").write_text("\n".join(lines[len(lines) // 2:]) + "\n")
    files = [str(tmp_path / "a.txt"), str(tmp_path / "b.txt")]
    whole = load_dataset("text", data_files={"train": files}, split="train", cache_dir=str(tmp_path / "cache"))
    selection = whole.train_test_split(test_size=0.3, seed=3)["train"]
    in_file_order = [t for batch in file_order_batches(selection, 500) for t in batch]
    assert sorted(in_file_order) == sorted(selection["text"]) and in_file_order != selection["text"]

    def trained(lines):
        return train_tokenizer(family, lines, 400, True, 1, show_progress=False).backend_tokenizer.to_str()

    assert trained(selection) == trained(list(selection["text"]))



def test_blank_lines_are_dropped_as_datasets_filter_drops_them_reading_the_files_in_order(tmp_path):
    from datasets import concatenate_datasets, load_dataset

    from bigmodel_cli.mlm.corpus import file_order_batches, non_blank

    lines = ["a line", "", "   ", "\t", "another line", " x ", "\u3000", "last"] * 700
    (tmp_path / "c.txt").write_text("\n".join(lines) + "\n\n")
    whole = load_dataset("text", data_files={"train": [str(tmp_path / "c.txt")]}, split="train",
                         cache_dir=str(tmp_path / "cache"))
    for lines_of in (whole, whole.select(range(13, 4000)), concatenate_datasets([whole.select(range(5, 9)), whole])):
        kept = non_blank(lines_of)
        expected = lines_of.filter(lambda batch: [bool(t and t.strip()) for t in batch["text"]], batched=True)
        assert list(kept["text"]) == list(expected["text"])
    selection = non_blank(whole).train_test_split(test_size=0.2, seed=1)["train"]
    in_order = [t for batch in file_order_batches(selection, 100) for t in batch]
    assert sorted(in_order) == sorted(selection["text"])


def header(result) -> str:
    return next(line for line in result.stderr.splitlines() if line.startswith("bigmodel pretrain"))


@pytest.mark.smoke
def test_tokenizer_and_rows_come_from_the_cache_until_a_file_or_setting_changes(tmp_path):
    corpus = tmp_path / "corpus.txt"
    shutil.copy(TINY / "tiny-corpus.txt", corpus)
    base = ["pretrain", "-r", "pretrain/tiny-debug", "--set", f"data.train_files=[{corpus}]", "--set",
            "training.max_steps=2", "--set", "training.report_to=[none]", "--overwrite"]
    env = {"BIGMODEL_CACHE": str(tmp_path / "cache")}

    def run(*extra):
        result = run_cli(*base, "-o", tmp_path / "run", *extra, env=env)
        assert result.returncode == 0, result.stderr[-2000:]
        return header(result)

    first = run()
    assert "tokenizer trained and cached" in first and "rows prepared and cached" in first
    trained = (tmp_path / "run" / "tokenizer.json").read_bytes()
    again = run()
    assert "tokenizer from the cache" in again and "rows from the cache" in again
    assert (tmp_path / "run" / "tokenizer.json").read_bytes() == trained  # the same files in the run directory
    assert not (tmp_path / "run" / "complete").exists()
    folders = sorted((tmp_path / "cache" / "rows").iterdir())
    assert len(folders) == 1 and (folders[0] / "complete").is_file() and not list(folders[0].parent.glob("*.tmp-*"))
    shorter = run("--set", "data.max_seq_length=48")  # a row setting: the tokenizer stays
    assert "tokenizer from the cache" in shorter and "rows prepared and cached" in shorter
    assert "rows from the cache" in run("--set", "data.max_seq_length=48")
    assert "tokenizer trained and cached" in run("--set", "tokenizer.vocab_size=280")  # a tokenizer setting
    with corpus.open("a") as f:  # the file
        f.write("one more line for the corpus\n")
    changed = run()
    assert "tokenizer trained and cached" in changed and "rows prepared and cached" in changed
    assert len(list((tmp_path / "cache" / "rows").iterdir())) == 4
    assert len(list((tmp_path / "cache" / "tokenizers").iterdir())) == 3


@pytest.mark.smoke
def test_prepare_only_fills_the_cache_that_the_run_then_reads(tmp_path):
    env = {"BIGMODEL_CACHE": str(tmp_path / "cache")}
    argv = ["pretrain", "-r", "pretrain/tiny-debug", "--set", "training.max_steps=2", "--set", "training.report_to=[none]",
            "-o", tmp_path / "run"]
    prepared = run_cli(*argv, "--prepare-only", env=env)
    assert prepared.returncode == 0, prepared.stderr[-2000:]
    assert "tokenizer trained and cached, rows prepared and cached" in prepared.stdout
    assert not (tmp_path / "run").exists()  # no run folder: nothing a later run would take for its own
    trained = run_cli(*argv, env=env)
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert "tokenizer from the cache | rows from the cache" in header(trained)
    assert (tmp_path / "run" / "tokenizer.json").is_file() and (tmp_path / "run" / "model.safetensors").is_file()
