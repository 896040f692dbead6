"""Freed memory kept for reuse: a step's tensors come back without fresh pages from the kernel."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

# 64 MB tensors made and freed in turn (a training step's big activations and gradients): the minor
# page faults ten of them cost once the heap has grown (malloc's settings are global: a fresh process).
PROBE = """
import resource, sys, torch
from bigmodel_cli.memory import keep_freed_memory
took = keep_freed_memory()
for _ in range(20):
    torch.zeros(16 << 20)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.zeros(16 << 20)
print(took, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def probe(keep: str) -> tuple[str, int]:
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "BIGMODEL_KEEP_FREED_MEMORY": keep})
    assert result.returncode == 0, result.stderr[-2000:]
    took, faults = result.stdout.split()
    return took, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_freed_memory_is_reused_without_page_faults():
    took, faults = probe("1")
    assert took == "True"
    assert faults < 1_000  # pages already in the process serve all ten
    off, faults_off = probe("0")
    assert off == "False"
    assert faults_off > 10 * 16_000 * 0.9  # stock malloc: 16 384 fresh 4 KB pages for each tensor


def mapping(path) -> tuple[int, set[str]]:
    """kB of `path`'s memory maps resident in this process, and their VmFlags."""
    rss, flags, current = 0, set(), None
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if len(fields) >= 5 and "-" in fields[0] and ":" in fields[3]:
                current = fields[5] if len(fields) > 5 else ""
            elif current == str(path) and fields[0] == "Rss:":
                rss += int(fields[1])
            elif current == str(path) and fields[0] == "VmFlags:":
                flags.update(fields[1:])
    return rss, flags


def rows_file(path, rows: int = 40_000):
    """Packed rows as `tokenize_corpus` writes them (int32 ids, an Arrow stream), memory-mapped."""
    import numpy as np
    import pyarrow as pa
    from datasets import Dataset

    ids = np.arange(rows * 128, dtype=np.int32) % 1000 + 5
    offsets = pa.array(np.arange(0, rows * 128 + 1, 128, dtype=np.int32))
    one = pa.array(np.arange(rows + 1, dtype=np.int32))
    table = pa.table({"input_ids": pa.ListArray.from_arrays(offsets, pa.array(ids)),
                      "lengths": pa.ListArray.from_arrays(one, pa.array(np.full(rows, 128, dtype=np.int64))),
                      "example_ids": pa.ListArray.from_arrays(one, pa.array(np.arange(rows, dtype=np.int64)))})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return Dataset.from_file(str(path))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise and /proc/self/smaps: Linux")
def test_pages_read_through_a_memory_map_leave_the_process_and_the_data_stays(tmp_path):
    from bigmodel_cli.memory import MappedPages

    rows = rows_file(tmp_path / "rows.arrow")
    first = rows[:]["input_ids"]  # every page read through the map
    assert mapping(tmp_path / "rows.arrow")[0] > 15_000  # 20 MB of ids: resident
    MappedPages(every=3)()  # the first call releases
    assert mapping(tmp_path / "rows.arrow")[0] < 1_000
    assert rows[:]["input_ids"] == first  # read again from the file, the same
    assert mapping(tmp_path / "rows.arrow")[0] > 15_000


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise and /proc/self/smaps: Linux")
def test_the_collator_keeps_rows_drawn_at_random_out_of_resident_memory(tmp_path):
    import numpy as np
    from transformers import BertTokenizerFast

    from bigmodel_cli.mlm.masking import MLMCollator

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *map(str, range(1000))])}
    collator = MLMCollator(BertTokenizerFast(vocab=vocab))
    rows, path = rows_file(tmp_path / "rows.arrow"), tmp_path / "rows.arrow"
    resident = []
    for batch in np.random.default_rng(0).integers(0, len(rows), (20, 64)):
        fetched = rows.__getitems__(batch.tolist())  # the batch's pages mapped (whole page-cache folios)
        resident.append(mapping(path)[0])
        collator(fetched)  # ... and handed back: what the process holds is one batch's pages, never more
        resident.append(mapping(path)[0])
    assert "rr" in mapping(path)[1]  # no read-around: a random row pulls in its own pages only
    assert max(resident[1::2]) < 1_000, resident
    assert max(resident[0::2]) > 1_000, resident  # the rows were read through the map


PREPARE = """
import sys
from bigmodel_cli.commands.pretrain import prepare
from bigmodel_cli.recipe import load_recipe
recipe, _ = load_recipe("pretrain", "pretrain/tiny-debug", overrides=[f"data.train_files=[{sys.argv[1]}]"])
prepared = prepare(recipe, None)
resident = {}
current = None
for line in open("/proc/self/smaps"):
    fields = line.split()
    if len(fields) >= 5 and "-" in fields[0] and ":" in fields[3]:
        current = fields[5] if len(fields) > 5 else ""
    elif fields[0] == "Rss:" and current.endswith(".arrow"):
        resident[current] = resident.get(current, 0) + int(fields[1])
print(len(prepared.rows[0]), sum(resident.values()))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise and /proc/self/smaps: Linux")
def test_preparing_a_corpus_keeps_none_of_its_arrow_files_resident(tmp_path):
    lines = [f"line {i} of the corpus with some words in it and {i % 97} more" for i in range(60_000)]
    (tmp_path / "corpus.txt").write_text("\n".join(lines) + "\n")
    result = subprocess.run([sys.executable, "-c", PREPARE, str(tmp_path / "corpus.txt")], capture_output=True,
                            text=True, timeout=600, env={**os.environ, "BIGMODEL_CACHE": str(tmp_path / "cache"),
                                                         "HF_DATASETS_CACHE": str(tmp_path / "datasets")})
    assert result.returncode == 0, result.stderr[-2000:]
    rows, resident_kb = map(int, result.stdout.split()[-2:])
    assert rows > 1_000
    assert resident_kb < 256, resident_kb  # the text (4 MB) and rows (several MB) were read: none of it kept
