"""Every task shape end to end on tiny files written here: GLUE layouts and users' own files."""

import json

import pytest
from conftest import TINY, run_cli

from bigmodel_cli.classification.data import infer_task, load_splits
from bigmodel_cli.classification.reader import read_rows
from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.recipe import LabelledDataSection

WORDS = "the farmer bought red house near river a young doctor painted boat".split()


def sentence(i: int) -> str:
    return " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(6))


def glue_files(folder, task: str, n: int = 24):
    folder.mkdir(parents=True, exist_ok=True)
    layouts = {
        "sst2": ("sentence\tlabel", lambda i: f"{sentence(i)}\t{i % 2}"),
        "stsb": ("index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
                 lambda i: f"{i}\tmain\tf\t2012\t{i}\ts\ts\t{sentence(i)}\t{sentence(i + 1)}\t{(i % 6) * 0.8:.3f}"),
        "mnli": ("index\tpromptID\tpairID\tgenre\tsentence1\tsentence2\tgold_label",
                 lambda i: f"{i}\t1\t1\tfiction\t{sentence(i)}\t{sentence(i + 2)}\t"
                           f"{['entailment', 'neutral', 'contradiction'][i % 3]}"),
        "cola": (None, lambda i: f"src\t{i % 2}\t\t{sentence(i)}"),
    }
    header, line = layouts[task]
    names = {"mnli": ["train.tsv", "dev_matched.tsv", "dev_mismatched.tsv"]}.get(task, ["train.tsv", "dev.tsv"])
    for name in names:
        body = [line(i) for i in range(n)]
        (folder / name).write_text("\n".join(([header] if header else []) + body) + "\n", encoding="utf-8")
    return folder


@pytest.mark.unit
def test_csv_with_quoted_fields_and_string_labels(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text('id,text,label\n1,"Hello, world",happy\n2,"She said ""no""",sad\n3,plain,happy\n')
    rows = read_rows(path)
    assert rows[1]["text"] == 'She said "no"' and rows[0]["text"] == "Hello, world"
    task = infer_task(LabelledDataSection(train_file=str(path)), rows, path)
    assert task.text_columns == ("text",) and task.label_names == ("happy", "sad")
    assert task.metrics == ("accuracy", "f1")


@pytest.mark.unit
def test_mrpc_tsv_as_a_plain_file_finds_the_string_columns_and_quality_label():
    path = TINY / "mrpc-tiny" / "train.tsv"
    rows = read_rows(path)
    task = infer_task(LabelledDataSection(train_file=str(path)), rows, path)
    assert task.text_columns == ("#1 String", "#2 String") and task.label_column == "Quality"
    assert task.label_names == ("0", "1")


@pytest.mark.unit
def test_the_header_note_says_which_columns_and_whether_they_were_found_or_named():
    from bigmodel_cli.classification.data import columns_note

    path = TINY / "mrpc-tiny" / "train.tsv"
    found = LabelledDataSection(train_file=str(path))
    note = columns_note(found, infer_task(found, read_rows(path), path))
    assert note.startswith("text columns #1 String + #2 String (detected;") and "label column Quality (2 classes)" in note
    named = LabelledDataSection(train_file=str(path), text_column="#2 String")
    note = columns_note(named, infer_task(named, read_rows(path), path))
    assert note.startswith("text columns #2 String (as named)")


@pytest.mark.unit
def test_jsonl_regression_and_three_classes(tmp_path):
    reg = tmp_path / "r.jsonl"
    reg.write_text("\n".join(json.dumps({"sentence1": sentence(i), "sentence2": sentence(i + 1), "label": i * 0.5})
                             for i in range(6)))
    task = infer_task(LabelledDataSection(train_file=str(reg)), read_rows(reg), reg)
    assert task.is_regression and task.metrics == ("pearsonr", "spearmanr")
    three = tmp_path / "t.json"
    three.write_text(json.dumps([{"text": sentence(i), "label": ["a", "b", "c"][i % 3]} for i in range(6)]))
    task = infer_task(LabelledDataSection(train_file=str(three)), read_rows(three), three)
    assert task.label_names == ("a", "b", "c") and task.metrics == ("accuracy",)


@pytest.mark.unit
def test_validation_labels_must_be_training_labels(tmp_path):
    train, dev = tmp_path / "train.csv", tmp_path / "dev.csv"
    train.write_text("text,label\nx,pos\ny,neg\n")
    dev.write_text("text,label\nx,pos\ny,maybe\n")
    with pytest.raises(BigmodelError, match="label 'maybe' is not one of the training labels"):
        load_splits(LabelledDataSection(train_file=str(train), validation_file=str(dev)))


@pytest.mark.unit
def test_missing_label_names_the_example(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text('{"text": "a", "label": "x"}\n{"text": "b"}\n')
    with pytest.raises(BigmodelError, match="example 2 has no label"):
        infer_task(LabelledDataSection(train_file=str(train)), read_rows(train), train)


@pytest.mark.smoke
@pytest.mark.parametrize("task, metric", [("sst2", "eval_accuracy"), ("stsb", "eval_pearson"),
                                          ("mnli", "eval_accuracy"), ("cola", "eval_matthews_correlation")])
def test_glue_task_shapes(tmp_path, pretrained, task, metric):
    data = glue_files(tmp_path / task, task)
    run_dir = tmp_path / "run"
    result = run_cli("finetune", "--task", task, "--data-dir", data, "--model", pretrained, "-o", run_dir, "-q",
                     "--set", "training.num_train_epochs=1", "--set", "training.per_device_train_batch_size=8",
                     "--set", "data.max_seq_length=64")
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metric in metrics and metrics["eval_samples"] == 24
    if task == "stsb":
        from transformers import AutoConfig

        assert AutoConfig.from_pretrained(run_dir).problem_type == "regression"


@pytest.mark.smoke
def test_own_files_string_labels_predict_with_label_names(tmp_path, pretrained):
    train, dev, test = tmp_path / "train.jsonl", tmp_path / "dev.jsonl", tmp_path / "test.csv"
    rows = [{"review": sentence(i), "stars": ["bad", "good", "great"][i % 3]} for i in range(30)]
    train.write_text("\n".join(json.dumps(r) for r in rows))
    dev.write_text("\n".join(json.dumps(r) for r in rows[:12]))
    test.write_text("review\n" + "\n".join(f'"{sentence(i)}, really"' for i in range(5)) + "\n")
    run_dir = tmp_path / "run"
    result = run_cli("finetune", "--train-file", train, "--validation-file", dev, "--test-file", test,
                     "--model", pretrained, "-o", run_dir, "--set", "data.label_column=stars",  # not quiet: the header
                     "--set", "training.num_train_epochs=1", "--set", "data.max_seq_length=64")
    assert result.returncode == 0, result.stderr[-2000:]
    header = next(line for line in result.stderr.splitlines() if line.startswith("bigmodel finetune"))
    assert "text columns review (detected;" in header and "label column stars (3 classes)" in header, header
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(run_dir).id2label == {0: "bad", 1: "good", 2: "great"}
    predictions = [json.loads(line) for line in (run_dir / "test_predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 5 and predictions[0]["review"].endswith(", really")
    assert all(p["label"] in {"bad", "good", "great"} for p in predictions)
    assert all(abs(sum(p["probabilities"].values()) - 1) < 1e-4 for p in predictions)
    evaluated = run_cli("eval", "--model", run_dir, "--data-file", dev, "--json")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert json.loads(evaluated.stdout.splitlines()[-1])["eval_samples"] == 12


@pytest.mark.smoke
def test_predict_agrees_with_eval_accuracy(finetuned, tmp_path):
    dev = TINY / "mrpc-tiny" / "dev.tsv"
    out = tmp_path / "pred.jsonl"
    result = run_cli("predict", "--model", finetuned, "--input-file", dev, "--output", out, "-q")
    assert result.returncode == 0, result.stderr[-2000:]
    predictions = [json.loads(line) for line in out.read_text().splitlines()]
    labels = [int(line.split("\t")[0]) for line in dev.read_text(encoding="utf-8-sig").splitlines()[1:]]
    names = ("not_equivalent", "equivalent")
    accuracy = sum(names.index(p["label"]) == y for p, y in zip(predictions, labels)) / len(labels)
    metrics = json.loads((finetuned / "metrics.json").read_text())
    assert len(predictions) == 48 and accuracy == pytest.approx(metrics["eval_accuracy"])
    again = run_cli("predict", "--model", finetuned, "--input-file", dev, "--output", out, "-q")
    assert again.returncode == 2 and "already exists" in again.stderr  # never overwritten
    single = run_cli("predict", "--model", finetuned, "--text", "A man sold a boat .", "--text-pair", "A boat was sold .")
    assert single.returncode == 0 and json.loads(single.stdout)["label"] in names
