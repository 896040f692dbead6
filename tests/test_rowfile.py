"""Training rows read with pread: the Dataset's rows, and none of the file left resident."""

from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest

from tests.test_memory import mapping

pytestmark = pytest.mark.unit


def packed_rows(path, monkeypatch, lines: int = 3_000):
    """Rows as `tokenize_corpus` caches them, over several record batches (shards of 500 lines)."""
    from datasets import Dataset

    from bigmodel_cli.mlm import text

    monkeypatch.setattr(text, "SHARD_EXAMPLES", 500)
    rng = np.random.default_rng(0)
    examples = Dataset.from_dict({
        "input_ids": [rng.integers(5, 1000, rng.integers(3, 128)).astype(np.int32).tolist() for _ in range(lines)],
        "example_id": np.arange(lines, dtype=np.int64)})
    return text.packed_dataset(examples, 128, packing=True, path=path)


def test_rows_read_with_pread_are_the_datasets_rows(tmp_path, monkeypatch):
    from bigmodel_cli.mlm.rowfile import RowFile, read_with_pread

    rows = packed_rows(tmp_path / "train.arrow", monkeypatch)
    read = read_with_pread(rows)
    assert isinstance(read, RowFile) and len(read.starts) > 3  # several record batches
    assert len(read) == len(rows)
    keys = np.random.default_rng(1).integers(0, len(rows), 200).tolist()
    assert read.__getitems__(keys) == rows.__getitems__(keys)
    assert read[0] == rows[0] and read[-1] == rows[len(rows) - 1] and read[np.int64(7)] == rows[7]
    assert read["input_ids"] == rows["input_ids"]  # anything but a row index: the Dataset's
    assert read.column_names == rows.column_names
    with pytest.raises(IndexError):
        read[len(rows)]
    again = pickle.loads(pickle.dumps(read))  # what a spawned loader worker gets: it opens the file anew
    assert again.__getitems__(keys[:20]) == rows.__getitems__(keys[:20])


def test_only_whole_files_of_list_columns_are_read_with_pread(tmp_path, monkeypatch):
    from datasets import Dataset, load_from_disk

    from bigmodel_cli.mlm.rowfile import RowFile, read_with_pread

    rows = packed_rows(tmp_path / "train.arrow", monkeypatch)
    selection = rows.select(range(10))
    assert read_with_pread(selection) is selection  # a selection's rows are not the file's
    in_memory = Dataset.from_dict({"input_ids": [[1, 2]], "lengths": [[2]], "example_ids": [[0]]})
    assert read_with_pread(in_memory) is in_memory
    labelled = Dataset.from_dict({"input_ids": [[1, 2]], "next_sentence_label": [0]})
    labelled.save_to_disk(str(tmp_path / "pairs"))
    pairs = load_from_disk(str(tmp_path / "pairs"))
    assert read_with_pread(pairs) is pairs  # a scalar column: not a packed rows file
    assert isinstance(read_with_pread(rows), RowFile)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/smaps: Linux")
def test_rows_read_with_pread_leave_none_of_the_file_resident(tmp_path):
    from bigmodel_cli.memory import MappedPages
    from bigmodel_cli.mlm.rowfile import read_with_pread
    from tests.test_memory import rows_file

    path = tmp_path / "rows.arrow"
    rows = rows_file(path)  # 20 MB of ids in one record batch
    read = read_with_pread(rows)
    MappedPages(every=1)()  # what loading the Dataset read through the map: gone
    draws = np.random.default_rng(0).integers(0, len(rows), (20, 64))
    for batch in draws:
        assert len(read.__getitems__(batch.tolist())) == 64
    assert mapping(path)[0] < 100, mapping(path)
    for batch in draws:  # the same rows through the Dataset's memory map stay resident
        rows.__getitems__(batch.tolist())
    assert mapping(path)[0] > 1_000, mapping(path)


def test_loader_workers_read_the_same_rows(tmp_path, monkeypatch):
    import torch

    from bigmodel_cli.mlm.rowfile import read_with_pread

    rows = packed_rows(tmp_path / "train.arrow", monkeypatch, lines=600)
    order = np.random.default_rng(2).permutation(len(rows)).tolist()
    loader = torch.utils.data.DataLoader(read_with_pread(rows), batch_size=16, sampler=order, num_workers=2,
                                         collate_fn=list)  # each worker process opens the file itself
    assert [row for batch in loader for row in batch] == rows.__getitems__(order)
