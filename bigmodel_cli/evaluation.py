"""`bigmodel eval`: a saved model's metrics on any split or file.

Classifiers: `eval_loss` and the task's official metrics, through the same function finetune uses
for its `metrics.json`, so evaluating a finetune run reproduces its dev metrics. Masked LMs:
`eval_loss` (mean over masked tokens, fixed masks) and `perplexity`.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.models import load_tokenizer, model_error, resolve_model_path
from bigmodel_cli.rundir import RECIPE_FILE


def saved_recipe(model_dir: str) -> dict:
    path = Path(model_dir) / RECIPE_FILE
    if not path.is_file():
        return {}
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError:
        return {}


def evaluate_classifier_on(model_dir: str, task_name: str | None, split: str, data_dir: str | None,
                           data_file: str | None, batch_size: int) -> dict:
    from transformers import AutoModelForSequenceClassification

    from bigmodel_cli.finetune import evaluate_classifier
    from bigmodel_cli.glue import encode, load_glue
    from bigmodel_cli.labelled import load_eval_file, task_from_model
    from bigmodel_cli.recipe import LabelledDataSection

    path = resolve_model_path(model_dir)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, use_safetensors=True)
    except Exception as e:
        raise model_error(model_dir, e) from None
    tokenizer = load_tokenizer(model_dir)
    task = task_from_model(model.config, task_name)
    if data_file:
        section = saved_recipe(model_dir).get("data") or {}
        columns = {k: section.get(k) for k in ("text_column", "text_pair_column", "label_column")}
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


def evaluate_mlm_on(model_dir: str, data_file: str, batch_size: int) -> dict:
    from datasets import load_dataset

    from bigmodel_cli.files import check_text_file
    from bigmodel_cli.mlm import MLMCollator, SparseHeadBertForMaskedLM, batched, masked_loss_sums, packed_dataset, tokenize_lines
    from bigmodel_cli.scoring import perplexity

    if not data_file:
        raise BigmodelError("--task mlm needs --data-file: a text file, one example per line")
    check_text_file(data_file, "--data-file")
    try:
        model = SparseHeadBertForMaskedLM.from_pretrained(resolve_model_path(model_dir), use_safetensors=True)
    except Exception as e:
        raise model_error(model_dir, e) from None
    tokenizer = load_tokenizer(model_dir)
    recipe = saved_recipe(model_dir)
    data_section = recipe.get("data") or {}
    max_len = int(data_section.get("max_seq_length") or min(tokenizer.model_max_length, 512))
    seed = int((recipe.get("training") or {}).get("seed", 42)) + 1  # pretrain's held-out masks
    lines = load_dataset("text", data_files={"eval": data_file})["eval"].filter(lambda r: bool(r["text"].strip()))
    if len(lines) == 0:
        raise BigmodelError(f"--data-file {data_file} has no non-blank lines")
    rows = packed_dataset(tokenize_lines(lines, tokenizer, max_len), max_len, packing=True)
    collator = MLMCollator(tokenizer, float(data_section.get("mlm_probability", 0.15)), seed)
    model.eval()
    total, count = masked_loss_sums(model, collator, rows, batched(range(len(rows)), batch_size)).tolist()
    count = int(count)
    loss = total / max(count, 1)
    return {"eval_loss": loss, "perplexity": perplexity(loss), "eval_samples": len(lines),
            "eval_masked_tokens": count}
