"""Training rows read from their Arrow file with `os.pread`, not through its memory map.

A row read at random through a memory map maps the whole page-cache folio that holds each of its
buffers (up to 2 MB each, six buffers a row), so one shuffled batch of 64 rows can leave up to
768 MB of the rows file resident, more the bigger the file (measured: 1.0 GB at the first step of a
4 GB corpus). `RowFile` finds each record batch's buffers in the file once, then reads a row's
offsets and values with a few small reads into its own memory: the file stays in the page cache,
shared and reclaimable, and none of it in the process's RSS.
"""

from __future__ import annotations

import os
import weakref

import numpy as np


class RowFile:
    """The rows of a `datasets.Dataset` memory-mapped from one uncompressed Arrow file of list columns
    (`packed_dataset`'s), read row by row with `os.pread`: `len`, `rows[i]`, `rows.__getitems__(keys)`
    (what a DataLoader calls) give the Dataset's rows; anything else (`rows["input_ids"]`,
    `column_names`, ...) is the Dataset's. Picklable: a loader worker opens the file anew."""

    def __init__(self, rows):
        import pyarrow as pa

        self.rows, self.path = rows, rows.cache_files[0]["filename"]
        names = rows.column_names
        with pa.memory_map(self.path) as mapped:
            base, size = mapped.read_buffer(1).address, mapped.size()  # zero-copy: where the map begins
            mapped.seek(0)
            batches = list(pa.ipc.open_stream(mapped))
            starts, where = [0], []
            for batch in batches:
                starts.append(starts[-1] + batch.num_rows)
                columns = []
                for name in names:
                    column = batch.column(name)
                    _, offsets, _, values = column.buffers()
                    for buffer in (offsets, values):
                        if buffer is not None and not base <= buffer.address < base + max(size, 1):
                            raise ValueError(f"{self.path}: column {name} is not laid out in the file")
                    if not pa.types.is_integer(column.type.value_type):
                        raise ValueError(f"{self.path}: column {name} does not hold integers")
                    columns.append((offsets.address - base + 4 * column.offset,  # int32 offsets (a list column)
                                    values.address - base if values is not None else 0,
                                    np.dtype(column.type.value_type.to_pandas_dtype())))
                where.append(columns)
            del batches
        self.names, self.starts, self.where = names, np.asarray(starts, dtype=np.int64), where
        self._fd, self._pid = None, None

    def _file(self) -> int:
        if self._pid != os.getpid():  # a forked loader worker: a descriptor of its own
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
            weakref.finalize(self, os.close, self._fd)
        return self._fd

    def __len__(self) -> int:
        return int(self.starts[-1])

    def row(self, index: int) -> dict[str, list[int]]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"row {index} of {len(self)}")
        fd = self._file()
        batch = int(np.searchsorted(self.starts, index, side="right")) - 1
        local = index - int(self.starts[batch])
        out = {}
        for name, (offsets, values, dtype) in zip(self.names, self.where[batch]):
            first, last = np.frombuffer(os.pread(fd, 8, offsets + 4 * local), dtype="<i4").tolist()
            data = os.pread(fd, (last - first) * dtype.itemsize, values + first * dtype.itemsize)
            out[name] = np.frombuffer(data, dtype=dtype).tolist()
        return out

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return self.row(int(key))
        return self.rows[key]

    def __getitems__(self, keys: list[int]) -> list[dict[str, list[int]]]:
        return [self.row(int(k)) for k in keys]

    def __getattr__(self, name: str):
        if name.startswith("_") or name in ("rows", "path"):
            raise AttributeError(name)
        return getattr(self.rows, name)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None, "_pid": None}


def read_with_pread(rows):
    """`RowFile(rows)` where the rows are a whole Arrow file of list columns (the cached packed rows);
    else the rows as they are (a stream, a selection, rows in memory, other columns)."""
    import pyarrow as pa

    files = getattr(rows, "cache_files", None)
    if (not files or len(files) != 1 or getattr(rows, "_indices", None) is not None
            or not all(pa.types.is_list(field.type) for field in rows.data.table.schema)):
        return rows
    try:
        read = RowFile(rows)
    except ValueError:  # buffers not in the file (compressed): read through the map
        return rows
    return read if len(read) == len(rows) else rows  # a slice of the file's rows: not the file's
