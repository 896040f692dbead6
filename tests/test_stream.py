"""`data.streaming`: rows made on the fly from a stream of lines, each line whole and alone in its
block, and a resume from any row (inside a window, across windows and passes) that gives the very
rows of the uninterrupted stream; a streaming run killed with SIGKILL ends as the uninterrupted run."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys

import pytest
from conftest import TINY, run_cli
from test_exact import assert_same_result

from bigmodel_cli.mlm.stream import StreamedRows
from bigmodel_cli.trainer.checkpoints import state_file

LINES = [line for line in (TINY / "tiny-corpus.txt").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TINY.parent.parent / "tests" / "fixtures" / "tiny-wordpiece"))


def make_stream():
    from datasets import Dataset

    return Dataset.from_dict({"text": LINES[:230]}).to_iterable_dataset(num_shards=2)


def rows(tokenizer, state=None, count=400, window=40):
    stream = StreamedRows(make_stream, tokenizer, 48, packing=True, seed=3, window_lines=window)
    if state is not None:
        stream.load_state_dict(state)
    return stream, list(itertools.islice(iter(stream), count))


def test_each_line_is_whole_in_its_row_and_every_line_comes_once_a_pass(tokenizer):
    _, made = rows(tokenizer, count=10_000)
    pieces = {}
    for row in made:
        assert sum(row["lengths"]) == len(row["input_ids"]) <= 48
        at = 0
        for length, example in zip(row["lengths"], row["example_ids"]):
            piece = row["input_ids"][at:at + length]
            assert piece[0] == tokenizer.cls_token_id and piece[-1] == tokenizer.sep_token_id
            pieces[example] = piece[1:-1]
            at += length
    first_pass = [pieces[e] for e in sorted(pieces)]
    ids = [t for line in LINES[:230] for t in tokenizer(line, add_special_tokens=False)["input_ids"]]
    flat = [t for piece in first_pass for t in piece]
    assert flat[:len(ids)] == ids  # the first pass: every line's tokens, in order, none dropped
    assert flat[len(ids):2 * len(ids)] == ids  # the next pass again, with new example ids (new masks)


@pytest.mark.parametrize("after", [0, 1, 7, 33, 34, 35, 120, 200, 333])
def test_a_resume_from_any_row_gives_the_uninterrupted_rows(tokenizer, after):
    stream, straight = rows(tokenizer)
    position = stream.position_after(after)
    json.dumps(position)  # saved in a checkpoint as JSON
    _, resumed = rows(tokenizer, json.loads(json.dumps(position)), count=len(straight) - after)
    assert resumed == straight[after:]


KILLED_AT = """
import os, signal, sys
import bigmodel_cli.mlm.stream as stream
stream.WINDOW_LINES = 100  # several windows a pass
from bigmodel_cli.trainer.trainer import CountingTrainer
original = CountingTrainer.training_step
def dying(self, *args, **kwargs):
    if self.state.global_step >= {kill_at}:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, *args, **kwargs)
CountingTrainer.training_step = dying
sys.argv = ["bigmodel", *{argv!r}]
from bigmodel_cli.cli import main
main()
"""

STREAMING = ["pretrain", "-r", "pretrain/tiny-debug", "-q", "--set", "training.report_to=[none]", "--set",
             "data.streaming=true", "--set", "data.max_eval_samples=60", "--set", "training.max_steps=45"]


def streamed_run(argv, kill_at: int):
    code = KILLED_AT.format(kill_at=kill_at, argv=[str(a) for a in argv])
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


@pytest.mark.smoke
def test_a_streaming_run_killed_with_sigkill_resumes_to_the_uninterrupted_run(tmp_path):
    straight = streamed_run([*STREAMING, "-o", tmp_path / "straight"], kill_at=10**9)
    assert straight.returncode == 0, straight.stderr[-2000:]
    killed = streamed_run([*STREAMING, "-o", tmp_path / "run"], kill_at=25)  # after checkpoint-20, inside a pass
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    resumed = streamed_run([*STREAMING, "-o", tmp_path / "run"], kill_at=10**9)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_result(tmp_path / "straight", tmp_path / "run")
    assert "resuming from" in resumed.stderr and "checkpoint-20" in resumed.stderr
    kept = sorted((tmp_path / "run").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    state = json.loads(state_file(kept[0], 0).read_text())["stream"]
    assert state["window"] > 0 or state["pass"] > 0  # the checkpoints hold positions past the first window


@pytest.mark.smoke
def test_a_streaming_run_under_a_time_budget(tmp_path):
    result = run_cli("pretrain", "-r", "pretrain/tiny-debug", "-o", tmp_path / "run", "--set", "data.streaming=true",
                     "--set", "data.max_eval_samples=60", "--set", "training.max_steps=-1", "--set",
                     "training.time_budget=4", "--set", "training.report_to=[none]")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "lines streamed" in result.stderr and "rows made on the fly" in result.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["train_budget_seconds_spent"] >= 4 and metrics["train_samples"] > 0


@pytest.mark.smoke
@pytest.mark.parametrize("sets, words", [
    (["training.max_steps=-1"], "give training.max_steps or training.time_budget"),
    (["training.save_strategy=epoch"], "training.save_strategy=epoch would never come"),
    (["training.dataloader_num_workers=2"], "set training.dataloader_num_workers=0"),
    ([], "none left to train on; give data.eval_files"),
])
def test_streaming_settings_that_cannot_work_are_named(tmp_path, sets, words):
    argv = ["pretrain", "-r", "pretrain/tiny-debug", "-o", tmp_path / "run", "--set", "data.streaming=true"]
    for s in sets:
        argv += ["--set", s]
    result = run_cli(*argv)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-1500:]
    assert words in result.stderr
