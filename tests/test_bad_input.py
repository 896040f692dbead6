"""Bad input and misuse: exit code 2 (3 for a diverged run), one line that names the file, key or
value and what to do, no traceback, and nothing the user had is touched."""

import shutil
from pathlib import Path

import pytest
from conftest import TINY, run_cli

pytestmark = pytest.mark.smoke


def fails(result, *words, code=2):
    assert result.returncode == code, (result.returncode, result.stderr[-1500:])
    err = result.stderr.strip()
    assert "Traceback" not in err and err.splitlines()[-1].startswith("error: "), err[-1500:]
    for word in words:
        assert word in err, (word, err[-800:])


def pretrain(tmp_path, *sets):
    args = ["pretrain", "-r", "pretrain/tiny-debug", "-o", tmp_path / "run", "-q"]
    for s in sets:
        args += ["--set", s]
    return run_cli(*args, cwd=tmp_path, timeout=300)


@pytest.mark.parametrize("content, words", [
    (b"", ["is empty"]),
    (b"\x00\x01\x02binary\x00", ["is binary"]),
    ("caf\u00e9 cr\u00e8me\n".encode("latin-1") * 10, ["not UTF-8"]),
    (b"   \n\t\n   \n", ["is empty"]),
])
def test_corpus_files_that_are_not_text(tmp_path, content, words):
    (tmp_path / "corpus.txt").write_bytes(content)
    fails(pretrain(tmp_path, "data.train_files=[corpus.txt]"), "corpus.txt", *words)


def test_whitespace_lines_are_not_examples(tmp_path):
    (tmp_path / "corpus.txt").write_text("  \n\t\nword\n" * 3)
    (tmp_path / "blank.txt").write_text("x\n")
    result = pretrain(tmp_path, "data.train_files=[corpus.txt]", "data.eval_files=[blank.txt]", "training.max_steps=2")
    assert result.returncode == 0, result.stderr[-1500:]
    import json

    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["train_samples"] == 3


@pytest.mark.parametrize("sets, words", [
    (["training.learning_rate=-1"], ["training.learning_rate", "greater than 0"]),
    (["model.hidden_size=33"], ["not divisible by num_attention_heads"]),
    (["data.max_seq_length=128"], ["max_position_embeddings 64"]),
    (["training.num_train_epochs=lots"], ["training.num_train_epochs"]),
    (["trainig.seed=1"], ["unknown key 'trainig'"]),
])
def test_impossible_recipe_values(tmp_path, sets, words):
    fails(pretrain(tmp_path, *sets), *words)
    assert not (tmp_path / "run").exists()


def test_recipe_that_does_not_parse(tmp_path):
    (tmp_path / "r.yaml").write_text("training: [unclosed\n")
    fails(run_cli("pretrain", "-r", tmp_path / "r.yaml", "-o", tmp_path / "run"), "r.yaml", "not valid YAML")


def mrpc_dir(tmp_path, dev_text: str):
    folder = tmp_path / "mrpc"
    folder.mkdir()
    shutil.copy(TINY / "mrpc-tiny" / "train.tsv", folder / "train.tsv")
    (folder / "dev.tsv").write_text(dev_text, encoding="utf-8")
    return folder


HEADER = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"


@pytest.mark.parametrize("dev, words", [
    ("a\tb\n1\t2\n", ["dev.tsv", "no column '#1 String'"]),
    (HEADER + "1\t1\t2\tonly three\n", ["dev.tsv line 2", "4 fields"]),
    (HEADER + "5\t1\t2\ta\tb\n", ["dev.tsv line 2", "label '5' is not in the label set"]),
    (HEADER, ["has a header but no examples"]),
])
def test_glue_files_with_wrong_columns_rows_or_labels(tmp_path, pretrained, dev, words):
    data = mrpc_dir(tmp_path, dev)
    fails(run_cli("finetune", "-r", "finetune/mrpc-tiny-debug", "--model", pretrained, "--data-dir", data,
                  "-o", tmp_path / "run"), *words)


def test_own_file_with_a_missing_label(tmp_path, pretrained):
    (tmp_path / "train.jsonl").write_text('{"text": "a b", "label": "x"}\n{"text": "c d"}\n')
    fails(run_cli("finetune", "--train-file", tmp_path / "train.jsonl", "--validation-file", tmp_path / "train.jsonl",
                  "--model", pretrained, "-o", tmp_path / "run"), "example 2 has no label")


def test_a_task_beside_own_files_is_refused_not_ignored(tmp_path, pretrained):
    own = TINY / "mrpc-tiny" / "dev.tsv"
    fails(run_cli("finetune", "--task", "mrpc", "--train-file", own, "--validation-file", own, "--model", pretrained,
                  "-o", tmp_path / "run"), "--task mrpc and --train-file", "remove --task")
    assert not (tmp_path / "run").exists()


def test_a_split_beside_a_data_file_is_refused_not_ignored(tmp_path, pretrained):
    fails(run_cli("eval", "--model", pretrained, "--task", "mlm", "--data-file", TINY / "tiny-corpus.txt",
                  "--split", "train"), "--split train", "remove --split")


def test_model_path_that_is_not_a_model(tmp_path):
    (tmp_path / "notamodel").mkdir()
    (tmp_path / "notamodel" / "notes.txt").write_text("hello")
    fails(run_cli("finetune", "-r", "finetune/mrpc-tiny-debug", "--model", tmp_path / "notamodel",
                  "-o", tmp_path / "run"), "notamodel", "could not be loaded")


def test_tokenizer_that_does_not_match_the_model(tmp_path, pretrained):
    from bigmodel_cli.models import resolve_model_path

    mixed = tmp_path / "mixed"
    shutil.copytree(pretrained, mixed, ignore=shutil.ignore_patterns("checkpoint-*", "metrics.json"))
    minilm = resolve_model_path("minilm")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(f"{minilm}/{name}", mixed / name)
    fails(run_cli("finetune", "-r", "finetune/mrpc-tiny-debug", "--model", mixed, "-o", tmp_path / "run"),
          "do not belong together")


def test_tokenizer_that_maps_the_corpus_to_unk_is_refused(tmp_path, pretrained):
    (tmp_path / "greek.txt").write_text("\u03b1\u03b2\u03b3 \u03b4\u03b5\u03b6 \u03b7\u03b8\u03b9\n" * 50)
    fails(pretrain(tmp_path, "data.train_files=[greek.txt]", f"tokenizer.name_or_path={pretrained}"),
          "[UNK]", "does not fit")


def test_output_dir_holding_other_files_is_refused_and_kept(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "thesis.tex").write_text("precious")
    fails(pretrain(tmp_path), "not empty and holds no bigmodel run")
    fails(run_cli("pretrain", "-r", "pretrain/tiny-debug", "-o", tmp_path / "run", "--overwrite"), "--overwrite replaces only")
    assert (tmp_path / "run" / "thesis.tex").read_text() == "precious"


def test_output_dir_that_cannot_be_written(tmp_path):
    (tmp_path / "afile").write_text("x")
    fails(run_cli("pretrain", "-r", "pretrain/tiny-debug", "-o", tmp_path / "afile" / "run"), "cannot write")


def test_diverged_training_stops_with_the_step(tmp_path):
    fails(pretrain(tmp_path, "training.learning_rate=1e6", "training.warmup_steps=0"),
          "at step", "diverged", "learning_rate", code=3)
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_fp16_on_a_cpu_is_refused_and_the_corrected_run_starts_in_the_same_folder(tmp_path, pretrained):
    fails(pretrain(tmp_path, "training.fp16=true"), "training.fp16 needs a GPU", "training.fp16=false")
    result = pretrain(tmp_path, "training.max_steps=2")  # the folder holds the refused recipe only: starts afresh
    assert result.returncode == 0, result.stderr[-1500:]
    finetune = run_cli("finetune", "-r", "finetune/mrpc-tiny-debug", "--model", pretrained, "-o", tmp_path / "ft",
                       "--set", "training.fp16=true")
    fails(finetune, "training.fp16 needs a GPU")
    assert "Loading weights" not in finetune.stderr  # refused before the model loads


def test_drop_last_with_less_than_one_global_batch_names_the_fix(tmp_path):
    (tmp_path / "corpus.txt").write_text("a few words\n" * 3)
    fails(pretrain(tmp_path, "data.train_files=[corpus.txt]", "training.dataloader_drop_last=true",
                   "training.global_batch_size=8"),
          "training.dataloader_drop_last", "fewer than one global batch (8)", "training.global_batch_size")


def _can(command: list[str]) -> bool:
    import subprocess

    try:
        return subprocess.run(command, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.mark.skipif(not _can(["unshare", "--mount", "true"]), reason="needs a private mount namespace (unshare --mount)")
def test_disk_full_while_saving_keeps_the_last_complete_checkpoint_and_resumes(tmp_path):
    """A real full disk: the run directory is a 700 KB tmpfs, room for one checkpoint (~450 KB) but
    not two. The save at step 20 fails; checkpoint-10 stays complete; with room again, resume."""
    import subprocess
    import sys

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    bigmodel = [sys.executable, "-m", "bigmodel_cli", "pretrain", "-r", "pretrain/tiny-debug", "-q", "-o", str(run_dir),
                "--set", "training.max_steps=30", "--set", "training.save_total_limit=1", "--set", "training.report_to=[none]"]
    script = f"""
mount -t tmpfs -o size=700k tmpfs {run_dir}
{' '.join(bigmodel)} 2> {tmp_path}/full.err; echo $? > {tmp_path}/full.rc
ls -a {run_dir} > {tmp_path}/after-full.ls
mount -o remount,size=64m {run_dir}
{' '.join(bigmodel)} 2> {tmp_path}/resume.err; echo $? > {tmp_path}/resume.rc
ls {run_dir} > {tmp_path}/after-resume.ls
"""
    subprocess.run(["unshare", "--mount", "sh", "-c", script], check=True, timeout=600, cwd=tmp_path)
    full_err = (tmp_path / "full.err").read_text()
    assert (tmp_path / "full.rc").read_text().strip() == "2", full_err[-1500:]
    assert "Traceback" not in full_err
    assert full_err.strip().splitlines()[-1].startswith("error: cannot write checkpoint-20"), full_err[-1500:]
    assert "no space left on device" in full_err and "resume from checkpoint-10" in full_err
    left = (tmp_path / "after-full.ls").read_text().split()
    assert "checkpoint-10" in left and "tmp-checkpoint-20" not in left and "checkpoint-20" not in left
    resume_err = (tmp_path / "resume.err").read_text()
    assert (tmp_path / "resume.rc").read_text().strip() == "0", resume_err[-1500:]
    assert f"resuming from {run_dir / 'checkpoint-10'}" in resume_err
    assert "metrics.json" in (tmp_path / "after-resume.ls").read_text().split()


NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.mark.skipif(not _can([*NOBODY, "true"]), reason="needs setpriv to run as an unprivileged user")
def test_output_dir_without_write_permission(tmp_path):
    """As an unprivileged user (root ignores permissions), into a folder that user may not write."""
    import os
    import subprocess
    import sys
    import tempfile

    locked = Path(tempfile.mkdtemp(prefix="bigmodel-locked-"))
    try:
        locked.chmod(0o755)  # readable by all, writable by its owner (root) only
        result = subprocess.run([*NOBODY, sys.executable, "-m", "bigmodel_cli", "pretrain", "-r", "pretrain/tiny-debug",
                                 "-o", str(locked / "run")], capture_output=True, text=True, timeout=120,
                                env={**os.environ, "HOME": str(locked)}, cwd=locked)
        fails(result, str(locked / "run"), "cannot write", "Permission denied")
        assert list(locked.iterdir()) == []
    finally:
        shutil.rmtree(locked)


def test_pickled_weights_are_refused(tmp_path, pretrained):
    """Safe by default: weights load from safetensors only; a pytorch_model.bin is never unpickled."""
    import torch
    from safetensors.torch import load_file

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    torch.save(load_file(pretrained / "model.safetensors"), pickled / "pytorch_model.bin")
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(pretrained / name, pickled / name)
    assert list(pickled.glob("*.bin")) and not list(pickled.glob("*.safetensors"))
    fails(run_cli("finetune", "-r", "finetune/mrpc-tiny-debug", "--model", pickled, "-o", tmp_path / "run"),
          "pickled", "safetensors only")
    assert not list((tmp_path / "run").glob("*.safetensors"))


@pytest.mark.parametrize("args, words", [
    (["pretrain", "--bogus"], ["No such option: --bogus", "Try 'bigmodel pretrain -h' for help"]),
    (["eval"], ["Missing option '--model'", "Try 'bigmodel eval -h' for help"]),
])
def test_usage_errors_show_usage_and_exit_2(tmp_path, args, words):
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 2, (result.returncode, result.stderr[-1500:])
    assert "Traceback" not in result.stderr and "--debug" not in result.stderr
    for word in words:
        assert word in result.stderr, result.stderr
