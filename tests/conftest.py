"""Shared fixtures. Every test runs offline: the hub is unreachable here and must not be needed."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["BIGMODEL_CACHE"] = tempfile.mkdtemp(prefix="bigmodel-test-cache-")  # prepared corpora: never the user's

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "recipes" / "data"
SHARED = ROOT.parent / "shared" / "data"


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600):
    """The real command in a subprocess: exit code, stdout and stderr as a user sees them."""
    return subprocess.run(
        [sys.executable, "-m", "bigmodel_cli", *map(str, args)],
        cwd=cwd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})},
    )


def finished_run(tmp_path_factory, name: str, *args):
    """A run of the real command in a new folder `<name>/run`, which must succeed: the
    uninterrupted reference that stopped and resumed runs are compared with. (run folder, result)"""
    run_dir = tmp_path_factory.mktemp(name) / "run"
    result = run_cli(*args, "-o", run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir, result


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory) -> Path:
    """A run of `pretrain/tiny-debug`, shared by the tests that fine-tune or evaluate it."""
    run_dir = tmp_path_factory.mktemp("pretrain") / "tiny"
    result = run_cli("pretrain", "--recipe", "pretrain/tiny-debug", "--output-dir", run_dir, "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


@pytest.fixture(scope="session")
def finetuned(tmp_path_factory, pretrained) -> Path:
    run_dir = tmp_path_factory.mktemp("finetune") / "mrpc"
    result = run_cli("finetune", "--recipe", "finetune/mrpc-tiny-debug", "--model", pretrained,
                     "--output-dir", run_dir, "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir
