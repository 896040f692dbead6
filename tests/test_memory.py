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
