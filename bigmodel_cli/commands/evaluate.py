"""`bigmodel eval`: a saved model's metrics on any split or file.

Classifiers: `eval_loss` and the task's official metrics, through the same function finetune uses
for its `metrics.json`, so evaluating a finetune run reproduces its dev metrics. Taggers: entity
precision, recall and F1 (seqeval, strict IOB2), per type too, and word accuracy, the same way. Masked LMs:
`eval_loss` (mean over masked tokens, fixed masks) and `perplexity`.
"""

from __future__ import annotations

import json

from bigmodel_cli.console import setup, shown
from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.exported import default_batch
from bigmodel_cli.models import load_tokenizer
from bigmodel_cli.recipe import FinetuneRecipe, LabelledDataSection, PretrainRecipe, read_saved_recipe
from bigmodel_cli.tagging.model import is_saved_tagger


def command(model: str, task: str | None, split: str | None, data_dir: str | None, data_file: str | None,
            batch_size: int, as_json: bool) -> None:
    setup(True)
    batch_size = batch_size or default_batch(model)
    if split is not None and data_file:
        raise BigmodelError(f"--split {split} picks one of GLUE's splits (--data-dir or the hub), not part of "
                            f"--data-file {data_file}: remove --split, or give the split's own file")
    split = split or "validation"
    if task and task.lower() == "mlm":
        metrics = evaluate_mlm_on(model, data_file, batch_size)
    elif (task and task.lower() == "ner") or is_saved_tagger(model):
        metrics = evaluate_tagger_on(model, data_file, batch_size)
    else:
        metrics = evaluate_classifier_on(model, task, split, data_dir, data_file, batch_size)
    if as_json:
        print(json.dumps(metrics, sort_keys=True))
    else:
        for key, value in sorted(metrics.items()):
            if not isinstance(value, dict):  # a tagger's per-type table: its F1s are printed as f1_TYPE
                print(f"{key:24s} {shown(value)}")


def evaluate_classifier_on(model_dir: str, task_name: str | None, split: str, data_dir: str | None,
                           data_file: str | None, batch_size: int) -> dict:
    from bigmodel_cli.classification.data import encode, load_eval_file, load_glue
    from bigmodel_cli.classification.inference import evaluate_classifier
    from bigmodel_cli.classification.model import load_saved_classifier
    from bigmodel_cli.classification.tasks import task_from_model

    model, tokenizer = load_saved_classifier(model_dir)
    task = task_from_model(model.config, task_name)
    if data_file:
        saved: FinetuneRecipe | None = read_saved_recipe(model_dir, "finetune")
        columns = saved.data.model_dump(include={"text_column", "text_pair_column", "label_column"}) if saved else {}
        data = load_eval_file(task, data_file, LabelledDataSection(train_file=data_file, **columns))
    elif task.name == "custom":
        raise BigmodelError(f"model {model_dir} was trained on your own files: give --data-file")
    else:
        data = load_glue(task, split, data_dir)
    if "label" not in data.column_names:
        raise BigmodelError(f"the {split} data has no labels (GLUE's test files hide them); use `bigmodel predict`")
    metrics = evaluate_classifier(model, tokenizer, encode(data, tokenizer), task, batch_size)
    metrics["eval_samples"] = len(data)
    return metrics


def evaluate_tagger_on(model_dir: str, data_file: str | None, batch_size: int) -> dict:
    """Entity precision, recall, F1 (per type too) and word accuracy of a tagger on a CoNLL or JSON
    Lines file, windowed as the run that made it (its saved recipe) windowed."""
    from bigmodel_cli.tagging.data import check_labels, read_tagged
    from bigmodel_cli.tagging.inference import evaluate_tagger
    from bigmodel_cli.tagging.model import load_saved_tagger, saved_data_settings, trained_in_bf16
    from bigmodel_cli.tagging.tasks import task_from_model

    if not data_file:
        raise BigmodelError(f"model {model_dir} tags words: give --data-file, a CoNLL or JSON Lines file with tags")
    model, tokenizer = load_saved_tagger(model_dir)
    data = saved_data_settings(model_dir, tokenizer)
    task = task_from_model(model.config)
    tagged = read_tagged(data_file, "--data-file", data.tag_column)
    check_labels(tagged, task, "--data-file")
    metrics = evaluate_tagger(model, tokenizer, tagged.sentences, task, data.max_seq_length, data.stride, batch_size,
                              bf16=trained_in_bf16(model_dir))
    metrics["eval_samples"] = len(tagged.sentences)
    return metrics


def evaluate_mlm_on(model_dir: str, data_file: str | None, batch_size: int) -> dict:
    """Perplexity of a masked LM on a text file, with the masks and lengths of the run that made it
    (its saved recipe), so a pretrain run's own held-out text gives its own figure."""
    from bigmodel_cli.files import check_text_file
    from bigmodel_cli.mlm.evaluation import score_text_file
    from bigmodel_cli.mlm.model import load_saved_mlm

    if not data_file:
        raise BigmodelError("--task mlm needs --data-file: a text file, one example per line")
    check_text_file(data_file, "--data-file")
    model = load_saved_mlm(model_dir)
    tokenizer = load_tokenizer(model_dir)
    saved: PretrainRecipe | None = read_saved_recipe(model_dir, "pretrain")
    if saved is None:  # a model from elsewhere: its tokenizer's length, BERT's masking, the default seed
        max_len, probability, seed, words = min(tokenizer.model_max_length, 512), 0.15, 42, False
    else:
        data = saved.data
        max_len, probability, seed, words = data.max_seq_length, data.mlm_probability, saved.training.seed, data.whole_word_masking
    return score_text_file(model, tokenizer, data_file, max_len, probability, seed, batch_size, words)
