"""The export job: a fine-tuned classifier or tagger -> ONNX (fused where onnxruntime fuses it),
checked against torch on its dev set, and with `--int8` a quantized graph kept only when its main
metric stays within `--max-drop` points of fp32's. `export_report.json` and the model card hold the
accepted figures: size, examples/s at batch 1 and 32, the metric in fp32 and int8."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bigmodel_cli.console import say, shown
from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.exported import BATCH, EXPORT_BATCH, INT8_FILE, ONNX_FILE, OnnxModel
from bigmodel_cli.rundir import RECIPE_FILE, write_json

PARITY = 1e-4  # the largest difference of a logit between torch and onnxruntime in fp32


@dataclass
class DevSet:
    """What scores a model of the run: its dev data, the main metric, the rows that feed it."""
    metric: str  # the main metric's key (eval_f1, eval_accuracy, ...)
    score: Callable  # (model) -> metrics
    logits: Callable  # (model) -> a list of per-example logit arrays (for parity)
    rows: list[dict]  # tokenized examples (input_ids, ...), for speed
    examples: int


def check_run(model_dir: Path) -> dict:
    """The run's config, or a one-line error: no folder, no model in it, a masked LM."""
    import json

    if not model_dir.is_dir():
        raise BigmodelError(f"--model {model_dir} is not a folder; give a finetune run's folder")
    weights = (model_dir / "model.safetensors").is_file() or (model_dir / "model.safetensors.index.json").is_file()
    if not (model_dir / "config.json").is_file() or not weights:
        raise BigmodelError(f"--model {model_dir} holds no model (config.json and model.safetensors); "
                            "give a finished finetune run (its metrics.json is written last)")
    config = json.loads((model_dir / "config.json").read_text())
    kinds = " ".join(config.get("architectures") or [])
    if "MaskedLM" in kinds or "PreTraining" in kinds:
        raise BigmodelError(f"--model {model_dir} is a masked LM (a pretraining run): export takes a fine-tuned "
                            "classifier or tagger; fine-tune it first (bigmodel finetune --model ...)")
    if "SequenceClassification" not in kinds and "TokenClassification" not in kinds:
        raise BigmodelError(f"--model {model_dir} is a {kinds or 'model of unknown kind'}: export takes a sequence or "
                            "token classifier")
    return config


def classifier_dev(model_dir: Path, tokenizer, config, data_dir: str | None, data_file: str | None) -> DevSet:
    from bigmodel_cli.classification.data import encode, load_eval_file, load_glue
    from bigmodel_cli.classification.inference import as_rows, evaluate_classifier, predict_logits, read_columns
    from bigmodel_cli.classification.tasks import task_from_model
    from bigmodel_cli.recipe import LabelledDataSection, read_saved_recipe

    task = task_from_model(config, None)
    saved = read_saved_recipe(model_dir, "finetune")
    settings = saved.data if saved else LabelledDataSection(train_file="-")
    if data_file:
        data = load_eval_file(task, data_file, settings)
    elif data_dir or (task.name != "custom" and settings.data_dir):
        data = load_glue(task, task.eval_split, data_dir or settings.data_dir)
    elif settings.validation_file:
        data = load_eval_file(task, settings.validation_file, settings)
    else:
        raise BigmodelError(f"no dev set for {model_dir} in its resolved_recipe.yaml: give --data-dir or --data-file "
                            "to score the export on")
    if "label" not in data.column_names:
        raise BigmodelError("the dev data has no labels: give a labelled --data-file")
    features = encode(data, tokenizer)
    rows = as_rows(read_columns(features, [c for c in ("input_ids", "token_type_ids", "attention_mask")
                                           if c in features.column_names]))
    return DevSet(f"eval_{task.best_metric}",
                  lambda model: evaluate_classifier(model, tokenizer, features, task, EXPORT_BATCH),
                  lambda model: list(predict_logits(model, tokenizer, features, BATCH)), rows, len(features))


def tagger_dev(model_dir: Path, tokenizer, config, data_file: str | None) -> DevSet:
    from bigmodel_cli.classification.inference import as_rows, predict_logits
    from bigmodel_cli.tagging.data import check_labels, encode, model_inputs, read_tagged
    from bigmodel_cli.tagging.inference import evaluate_tagger
    from bigmodel_cli.tagging.model import saved_data_settings
    from bigmodel_cli.tagging.tasks import task_from_model

    task = task_from_model(config)
    data = saved_data_settings(str(model_dir), tokenizer)
    path = data_file or data.validation_file
    if not path:
        raise BigmodelError(f"no dev set for {model_dir} in its resolved_recipe.yaml: give --data-file")
    tagged = read_tagged(path, "--data-file" if data_file else "data.validation_file", data.tag_column)
    check_labels(tagged, task, "the dev file")
    rows = as_rows(model_inputs(encode(tagged.sentences, tokenizer, data.max_seq_length, data.stride), tokenizer))
    return DevSet("eval_f1",
                  lambda model: evaluate_tagger(model, tokenizer, tagged.sentences, task, data.max_seq_length, data.stride,
                                                EXPORT_BATCH),
                  lambda model: predict_logits(model, tokenizer, rows, BATCH, per_token=True), rows, len(tagged.sentences))


def speed(path: Path, config, tokenizer, rows: list[dict], batch: int, most: int = 256) -> float:
    """Examples/s of the graph at `path` on up to `most` dev examples in batches of `batch`, one batch
    at a time on all cores (onnxruntime's threads), after one warm-up batch."""
    from bigmodel_cli.classification.inference import pad_batch

    model = OnnxModel(path, config, threads=None)
    rows = rows[:most]
    batches = [pad_batch(rows[i:i + batch], tokenizer) for i in range(0, len(rows), batch)]
    model(**batches[0])
    start = time.perf_counter()
    for b in batches:
        model(**b)
    return len(rows) / (time.perf_counter() - start)


def largest_difference(torch_logits, onnx_logits) -> float:
    return max((float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(torch_logits, onnx_logits)), default=0.0)


def run(model_dir: Path, output_dir: Path, int8: bool, max_drop: float, data_dir: str | None, data_file: str | None,
        opset: int, quiet: bool) -> dict:
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoModelForTokenClassification

    from bigmodel_cli.export.onnx_graph import check_opset, export_graph, optimize_graph
    from bigmodel_cli.export.quantize import attempts, quantize
    from bigmodel_cli.models import load_tokenizer
    from bigmodel_cli.tagging.model import load_saved_tagger, word_tokenizer

    check_opset(opset)
    raw = check_run(model_dir)
    if output_dir.exists() and any(output_dir.iterdir()):
        raise BigmodelError(f"--output-dir {output_dir} is not empty; choose another folder (nothing was overwritten)")
    tagger = "TokenClassification" in " ".join(raw.get("architectures") or [])
    config = AutoConfig.from_pretrained(model_dir)
    tokenizer = word_tokenizer(str(model_dir)) if tagger else load_tokenizer(str(model_dir))
    dev = tagger_dev(model_dir, tokenizer, config, data_file) if tagger else classifier_dev(
        model_dir, tokenizer, config, data_dir, data_file)
    family = AutoModelForTokenClassification if tagger else AutoModelForSequenceClassification
    stock = family.from_pretrained(model_dir, use_safetensors=True, attn_implementation="eager").eval()
    staging = output_dir.with_name(f".{output_dir.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        graph = staging / ONNX_FILE
        export_graph(stock, graph, opset)
        fusions = optimize_graph(graph, config)
        if tagger:
            reference, _ = load_saved_tagger(str(model_dir))
        else:
            from bigmodel_cli.classification.model import load_saved_classifier

            reference, _ = load_saved_classifier(str(model_dir))
        fp32 = OnnxModel(graph, config)
        difference = largest_difference(dev.logits(reference), dev.logits(fp32))
        if difference > PARITY:
            raise BigmodelError(f"the ONNX graph's logits differ from torch's by {difference:.2e} on the dev set (more "
                                f"than {PARITY:g}); the export was not written")
        scores = {"fp32": dev.score(fp32)}
        report = {"model": str(model_dir), "opset": opset, "fusions": fusions, "parity_max_abs_logit_difference": difference,
                  "metric": dev.metric, "dev_examples": dev.examples,
                  "fp32": {"file": ONNX_FILE, "bytes": graph.stat().st_size, "metric": scores["fp32"][dev.metric],
                           "examples_per_second_batch_1": speed(graph, config, tokenizer, dev.rows, 1, 128),
                           "examples_per_second_batch_32": speed(graph, config, tokenizer, dev.rows, 32)}}
        if int8:
            report["int8_attempts"] = []
            accepted = None
            for attempt in attempts(config.num_hidden_layers):
                target = staging / INT8_FILE
                quantize(graph, target, attempt)
                metric = dev.score(OnnxModel(target, config))[dev.metric]
                drop = 100 * (scores["fp32"][dev.metric] - metric)
                row = {"setting": attempt.name, "metric": metric, "drop_points": drop, "bytes": target.stat().st_size}
                report["int8_attempts"].append(row)
                if not quiet:
                    say(f"int8 {attempt.name}: {dev.metric} {shown(metric)} ({drop:+.2f} points against fp32)")
                if drop <= max_drop:
                    accepted = row
                    break
                target.unlink()
            if accepted is None:
                table = "; ".join(f"{r['setting']}: {r['drop_points']:.2f}" for r in report["int8_attempts"])
                write_json(staging / "export_report.json", {**report, "int8": None, "max_drop_points": max_drop})
                finish(staging, output_dir, model_dir, tokenizer, config, report)
                raise BigmodelError(f"int8 lost more than --max-drop {max_drop:g} points of {dev.metric} in every setting "
                                    f"({table}); kept fp32 only in {output_dir}", exit_code=1)
            report["int8"] = {**accepted, "file": INT8_FILE, "max_drop_points": max_drop,
                              "fraction_of_fp32_bytes": accepted["bytes"] / report["fp32"]["bytes"],
                              "examples_per_second_batch_1": speed(staging / INT8_FILE, config, tokenizer, dev.rows, 1, 128),
                              "examples_per_second_batch_32": speed(staging / INT8_FILE, config, tokenizer, dev.rows, 32)}
        write_json(staging / "export_report.json", report)
        finish(staging, output_dir, model_dir, tokenizer, config, report)
        return report
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def finish(staging: Path, output_dir: Path, model_dir: Path, tokenizer, config, report: dict) -> None:
    """The tokenizer, config, recipe and card beside the graphs; the folder moved into place whole."""
    tokenizer.save_pretrained(staging)
    config.save_pretrained(staging)
    if (model_dir / RECIPE_FILE).is_file():
        shutil.copy2(model_dir / RECIPE_FILE, staging / RECIPE_FILE)
    card(staging, report)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    if output_dir.exists():
        output_dir.rmdir()  # empty: checked before
    staging.rename(output_dir)


def card(folder: Path, report: dict) -> None:
    metric, fp32, int8 = report["metric"], report["fp32"], report.get("int8")
    rows = [f"| fp32 | {fp32['bytes'] / 1e6:.1f} MB | {shown(fp32['metric'])} | {fp32['examples_per_second_batch_1']:.1f} | "
            f"{fp32['examples_per_second_batch_32']:.1f} |"]
    if int8:
        rows.append(f"| int8 ({int8['setting']}) | {int8['bytes'] / 1e6:.1f} MB | {shown(int8['metric'])} | "
                    f"{int8['examples_per_second_batch_1']:.1f} | {int8['examples_per_second_batch_32']:.1f} |")
    text = "\n".join([
        f"# ONNX export of {report['model']}", "",
        f"Opset {report['opset']}; {report['fusions']}. fp32 logits within {report['parity_max_abs_logit_difference']:.1e} "
        f"of torch's on the dev set ({report['dev_examples']} examples). Run it with `bigmodel eval --model .` or "
        "`bigmodel predict --model .` (onnxruntime, the int8 graph where there is one).", "",
        f"| graph | size | dev {metric} | examples/s, batch 1 | examples/s, batch 32 |", "| --- | --- | --- | --- | --- |",
        *rows, ""])
    (folder / "README.md").write_text(text, encoding="utf-8")
