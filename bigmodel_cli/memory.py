"""What a process keeps of its memory: freed memory kept for reuse (no page faults on every training
step), and pages read through a memory map not kept (`MappedPages`).

glibc's malloc hands each large block (128 KB and up, its threshold rising to at most 32 MB) to the
kernel with its own mmap and gives it back on free; heap memory over the trim threshold goes back
too. PyTorch's CPU tensors are plain malloc blocks, so every step of training asks the kernel again
for the same activations and gradients, and the kernel zeroes each fresh 4 KB page on first touch:
fine-tuning MiniLM took 30 000 page faults a step (about 10 % of the step in the kernel, and the
word-embedding gradient alone, 47 MB, is over any mmap threshold). With mmap off and a high trim
threshold, freed blocks stay in the process and the next step reuses them: 8x fewer faults, about
10 % faster steps, the same peak memory. The price: memory freed late in a run is not returned to
the system until the process ends. This is what jemalloc or tcmalloc under LD_PRELOAD buy, which
Intel's PyTorch CPU guides recommend, without a preload. `BIGMODEL_KEEP_FREED_MEMORY=0` turns it off.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_MAX = -4
TRIM_THRESHOLD = 1 << 30  # free memory at the heap's top above 1 GiB still goes back


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory for reuse (process-wide, for allocations from now
    on). True if it took effect; False off Linux/glibc or when turned off by the environment."""
    if os.environ.get("BIGMODEL_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # glibc only: musl's mallopt is a stub
        return False
    return libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1


MADV_RANDOM = 1  # Linux's madvise advice values (asm-generic/mman-common.h)
MADV_DONTNEED = 4


def mapped_files(suffix: str) -> list[tuple[int, int]]:
    """(start, length) of this process's read-only mappings of files whose names end with `suffix`
    (from /proc/self/maps; none off Linux)."""
    try:
        with open("/proc/self/maps") as maps:
            lines = maps.readlines()
    except OSError:
        return []
    ranges = []
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and "w" not in fields[1] and fields[5].rstrip("\n").endswith(suffix):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            ranges.append((start, end - start))
    return ranges


def advise(ranges: list[tuple[int, int]], advice: int) -> bool:
    """madvise each range; False where the call is not there (off Linux/glibc)."""
    if not ranges:
        return True
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return False
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    for start, length in ranges:
        madvise(start, length, advice)
    return True


class MappedPages:
    """Keeps the pages of memory-mapped Arrow files (`datasets`' tables, the packed rows) out of this
    process's resident memory: what it holds of them is bounded by its reads between two calls.

    Every page a process reads through a file's memory map stays mapped in it, and counts in its RSS,
    until the kernel needs the memory back: a pass over a 4 GB corpus leaves 4 GB "resident". A
    random read maps more than its page: the pages around it (up to 64 KB), or the whole page-cache
    folio that holds it (up to 2 MB where the file system caches large folios, as ext4 on Linux 6.18
    does): a batch of 64 random rows of a 1 GB corpus's rows mapped 146 MB, 16 such batches 780 MB.
    MADV_RANDOM stops the read-around, not the folios. The first call, and every `every`-th after it,
    drops the mapped pages from the process's page tables (MADV_DONTNEED: the data stays in the file
    and in the page cache, and the next read maps it again, a minor fault); with `random` it also asks
    for no read-ahead (MADV_RANDOM: rows read in a shuffled order). What stays mapped between two
    calls is what those calls' reads touched, whatever the corpus size. Read-only mappings only;
    nothing is written or lost. A no-op off Linux.
    """

    def __init__(self, every: int = 16, suffix: str = ".arrow", random: bool = False):
        self.every, self.suffix, self.random = every, suffix, random
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1
        if (self.calls - 1) % self.every:  # the first call, then every `every`-th
            return
        ranges = mapped_files(self.suffix)
        if self.random:
            advise(ranges, MADV_RANDOM)
        advise(ranges, MADV_DONTNEED)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "calls": 0}  # a loader worker counts its own calls
