"""bigmodel against faithful peers, in one process, interleaved; JSON out with ratios.

    python benchmarks/bench.py --data ../shared/data --out bench-results/bench.json [--quick]

finetune: all-MiniLM-L6-v2 on the real MRPC files. Peer = run_glue.py's defaults: every pair padded
  to 128 tokens, batch 32, lr 2e-5, eval batch 8, `Trainer`. Ours = `bigmodel finetune`'s code path
  with the shipped finetune/mrpc recipe. Train samples/s; eval samples/s over interleaved rounds of
  equal length (the ratio is the median round's); dev accuracy/F1 on full runs.
pretrain: BERT-tiny on WikiText-2 with one tokenizer for both. Peer = run_mlm.py --line_by_line:
  truncation to 128, dynamic padding, the full MLM head, `DataCollatorForLanguageModeling`. Same
  model shape and optimizer settings, the same wall-clock budget and the budget-long schedule for
  both. Real (non-pad) tokens/s and held-out perplexity (one scorer, fixed masks).
ner: all-MiniLM-L6-v2 tagging WNUT-16 (ner/wnut16). Peer = run_ner.py's defaults: lr 5e-5, batch 8, 3
  epochs, each word's first sub-word labelled, `DataCollatorForTokenClassification`, `Trainer`. Ours =
  the shipped finetune/ner recipe. Sentences/s trained and evaluated; entity F1 (strict IOB2, one
  scorer for both) and wall time.
export: the fine-tuned MRPC model exported with `bigmodel export --int8` (onnxruntime, dynamic int8),
  evaluated on MRPC dev by `bigmodel eval`'s path against the same model in torch fp32: examples/s
  over interleaved rounds, sizes, accuracy and F1.
gemm: this CPU's matrix-multiply peak, to put achieved FLOP/s against.

--gpu (`make bench-gpu`): the same comparisons on one GPU, BERT-base fp32 against bf16 with MFU, a
  one-process NCCL launch (--sections main), and ours with one setting changed (--sections variants:
  bf16, torch.compile, loader workers, host masks, buckets, evaluation batch 256). --dry-run: the same on any machine.
  Our training runs go under `torch.cuda.set_sync_debug_mode("warn")`: each one's `host_syncs` counts
  the operations that made the host wait for the GPU, step by step, and the steps that stalled
  outside logging (`HostSyncs`).

Each side trains and evaluates in a process of its own, as its command would run: ours with the
process settings `bigmodel`'s commands make (freed memory kept for reuse), the peer with Python's
stock ones. The sides take turns, never overlap, and the evaluation rounds alternate between them.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
import torch  # noqa: E402

# A pass over MRPC's dev set takes seconds, and this shared machine's speed drifts by 10-20 % within
# minutes. So: one untimed pass each, then rounds in which both sides evaluate over the same span of
# time (ours repeats its pass until it has run as long as the peer's did), the side that goes first
# alternating; each round gives a ratio, and the median round is reported.
EVAL_ROUNDS = 7
MINILM = "sentence-transformers/all-MiniLM-L6-v2"  # from its package (`bigmodel[minilm]`) or any folder given


def gemm_peak(dtype=torch.float32, n=1024, seconds=2.0, device="cpu") -> float:
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(3):
        a @ b
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        runs += 1
    sync()
    return 2 * n**3 * runs / (time.perf_counter() - start)


# ---------------------------------------------------------------------------------------------
# one process per side
# ---------------------------------------------------------------------------------------------
_EVALUATE = None  # in a side's process: its trained model's evaluation, run once per round
_KEEPS_FREED_MEMORY = False


def _start_side(ours: bool) -> None:
    global _KEEPS_FREED_MEMORY
    if ours:  # what `bigmodel`'s commands set up before they train or evaluate
        from bigmodel_cli.memory import keep_freed_memory

        _KEEPS_FREED_MEMORY = keep_freed_memory()


def _train(name: str, *args):
    global _EVALUATE
    result = globals()[name](*args)
    if isinstance(result, tuple):
        result, _EVALUATE = result
    return {**result, "keeps_freed_memory": _KEEPS_FREED_MEMORY}


def _evaluate_for(seconds: float) -> tuple[int, float]:
    """Whole evaluation passes until `seconds` have passed (at least one): (examples, seconds)."""
    examples, start = 0, time.perf_counter()
    while True:
        examples += _EVALUATE()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return examples, elapsed


def eval_rounds(peer_side: ProcessPoolExecutor, ours_side: ProcessPoolExecutor, rounds: int) -> list[dict]:
    """Interleaved evaluation rounds of equal length; each side's samples/s and their ratio per round."""
    for side in (peer_side, ours_side):
        side.submit(_evaluate_for, 0.0).result()  # warm-up: first-call costs are not throughput
    results = []
    for i in range(rounds):
        if i % 2 == 0:
            peer = peer_side.submit(_evaluate_for, 0.0).result()
            ours = ours_side.submit(_evaluate_for, peer[1]).result()
        else:  # ours first; the peer's single pass sets the span, so ours' first run is timed alone
            ours = ours_side.submit(_evaluate_for, 0.0).result()
            peer = peer_side.submit(_evaluate_for, 0.0).result()
            more = ours_side.submit(_evaluate_for, max(peer[1] - ours[1], 0.0)).result()
            ours = (ours[0] + more[0], ours[1] + more[1])
        peer_speed, ours_speed = peer[0] / peer[1], ours[0] / ours[1]
        results.append({"peer": peer_speed, "ours": ours_speed, "ratio": ours_speed / peer_speed,
                        "peer_seconds": peer[1], "ours_seconds": ours[1]})
    return results


def steady(run_dir: Path, key: str) -> float | None:
    """A run's speed once warm: the median of its training logs' windows after the first (which holds
    the first steps' warm-up and any compilation). None with fewer than two windows."""
    state = run_dir / "trainer_state.json"
    values = [e[key] for e in json.loads(state.read_text())["log_history"] if key in e] if state.is_file() else []
    return statistics.median(values[1:]) if len(values) > 1 else None


def per_epoch_evaluation(run_dir: Path) -> float | None:
    """The median speed of a run's own evaluations during training (examples/s), from its log."""
    state = run_dir / "trainer_state.json"
    values = [e["eval_samples_per_second"] for e in json.loads(state.read_text())["log_history"]
              if "eval_samples_per_second" in e] if state.is_file() else []
    return statistics.median(values) if values else None


def medians(rounds: list[dict]) -> dict:
    """The median round's ratio (both sides saw that round's drift) and each side's median speed."""
    return {key: statistics.median(r[key] for r in rounds) for key in ("ratio", "peer", "ours")}


def train_then_evaluate(mrpc: Path, work: Path, peer_args: tuple, ours_overrides: list[str], rounds: int = EVAL_ROUNDS,
                        jobs: tuple[str, str] = ("finetune_peer", "finetune_ours")):
    """Each side fine-tunes in a process of its own, one after the other; then both evaluate in
    interleaved rounds. Returns (peer's figures, ours, the rounds)."""
    with side_process(False) as peer_side, side_process(True) as ours_side:
        peer = peer_side.submit(_train, jobs[0], mrpc, work, *peer_args).result()
        ours = ours_side.submit(_train, jobs[1], mrpc, work, ours_overrides).result()
        return peer, ours, eval_rounds(peer_side, ours_side, rounds)


def side_process(ours: bool) -> ProcessPoolExecutor:
    """A fresh process (spawned: nothing inherited from this one) for one side's jobs."""
    return ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=_start_side,
                               initargs=(ours,))


# ---------------------------------------------------------------------------------------------
# finetune
# ---------------------------------------------------------------------------------------------
class HostSyncs:
    """Training watched for host stalls: on a GPU under `torch.cuda.set_sync_debug_mode("warn")`, which
    warns at every operation that makes the host wait for the device (`.item()`, a copy to the host, a
    copy from pageable memory, `nonzero`...). The warnings are counted per optimizer step: the window
    from one step's end to the next's, so a logging step's reads (Trainer logs after the step end)
    fall in the window after it. Expected there, and in the first window (set-up); anywhere else a
    stall. Off a GPU nothing warns: the counts stay 0 (`watched` says so)."""

    def __init__(self, cuda: bool):
        self.cuda, self.windows, self.where = cuda, [], Counter()
        self._caught = self._records = None
        self._seen, self._reads_anyway = 0, True  # the first window holds the set-up

    def on_train_begin(self, args, state, control, **kwargs):
        self._caught = warnings.catch_warnings(record=True)
        self._records = self._caught.__enter__()
        warnings.simplefilter("always")
        if self.cuda:
            torch.cuda.set_sync_debug_mode("warn")

    def on_step_end(self, args, state, control, **kwargs):
        new = [r for r in self._records[self._seen:] if "synchroniz" in str(r.message)]
        self._seen = len(self._records)
        self.where.update(f"{Path(r.filename).name}:{r.lineno}" for r in new)
        logs = control.should_log or control.should_save or control.should_evaluate or control.should_training_stop
        self.windows.append((len(new), self._reads_anyway or logs))
        self._reads_anyway = logs  # its reads come after this step's end

    def on_train_end(self, args, state, control, **kwargs):
        if self.cuda:
            torch.cuda.set_sync_debug_mode("default")
        if self._caught is not None:
            self._caught.__exit__(None, None, None)
            self._caught = None

    def report(self) -> dict:
        return {"watched": "torch.cuda.set_sync_debug_mode('warn')" if self.cuda else None, "steps": len(self.windows),
                "syncs": sum(n for n, _ in self.windows),
                "stalled_steps": sum(1 for n, expected in self.windows if n and not expected),
                "where": dict(self.where.most_common(8))}


@contextmanager
def watched_syncs():
    """Every Trainer made inside gets a `HostSyncs` callback (last, after the run's own)."""
    from transformers import TrainerCallback

    from bigmodel_cli.trainer import trainer as module

    watch = type("WatchedSyncs", (HostSyncs, TrainerCallback), {})(torch.cuda.is_available())
    original = module.CountingTrainer.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.add_callback(watch)

    module.CountingTrainer.__init__ = init
    try:
        yield watch
    finally:
        module.CountingTrainer.__init__ = original
        watch.on_train_end(None, None, None)  # a run that raised


def finetune_ours(mrpc: Path, work: Path, overrides: list[str], name: str = "ours-finetune"):
    """Trains; returns its figures and a function that evaluates the saved model once (samples/s)."""
    from bigmodel_cli.classification import finetuning
    from bigmodel_cli.recipe import load_recipe

    recipe, _ = load_recipe("finetune", "finetune/mrpc", flags={"data.data_dir": str(mrpc)},
                            overrides=[*overrides, "training.report_to=[none]", "training.save_total_limit=1"])
    run_dir = work / name
    with watched_syncs() as syncs:
        metrics = finetuning.run(recipe, run_dir, quiet=True)
    from bigmodel_cli.classification.data import encode, load_glue
    from bigmodel_cli.classification.inference import evaluate_classifier
    from bigmodel_cli.classification.model import load_saved_classifier
    from bigmodel_cli.classification.tasks import get_task

    model, tokenizer = load_saved_classifier(str(run_dir))  # as `bigmodel eval` loads it: on the GPU where there is one
    task = get_task("mrpc")
    features = encode(load_glue(task, "validation", str(mrpc)), tokenizer)

    def evaluate() -> int:  # as `bigmodel eval` runs it, metrics included; returns the examples scored
        evaluate_classifier(model, tokenizer, features, task, recipe.training.per_device_eval_batch_size)
        return len(features)

    # Training speed with the per-epoch evaluations and checkpoints (which the peer does not do) set
    # aside; the figure with them is kept beside it.
    return {"train_samples_per_second": metrics["train_step_examples_per_second"],
            "train_samples_per_second_with_evaluations": metrics["train_samples_per_second"],
            "train_samples_per_second_steady": steady(run_dir, "examples_per_second"),
            "eval_samples_per_second_per_epoch": per_epoch_evaluation(run_dir),
            "eval_accuracy": metrics["eval_accuracy"], "eval_f1": metrics["eval_f1"],
            "train_runtime": metrics["train_runtime"], "host_syncs": syncs.report()}, evaluate


def finetune_peer(mrpc: Path, work: Path, max_steps: int, epochs: float, model_name: str = MINILM):
    """run_glue.py's defaults; returns its figures and a function that runs its evaluation once."""
    import numpy as np
    from transformers import AutoModelForSequenceClassification, Trainer, TrainingArguments, default_data_collator

    from bigmodel_cli.classification.data import load_glue
    from bigmodel_cli.classification.metrics import task_metrics
    from bigmodel_cli.classification.tasks import get_task
    from bigmodel_cli.models import load_tokenizer, resolve_model_path

    task = get_task("mrpc")
    path = resolve_model_path(model_name)
    tokenizer = load_tokenizer(path)

    def encode(data):
        return data.map(lambda b: tokenizer(b["sentence1"], b["sentence2"], padding="max_length", max_length=128,
                                            truncation=True), batched=True, remove_columns=["sentence1", "sentence2"])

    train, dev = encode(load_glue(task, "train", str(mrpc))), encode(load_glue(task, "validation", str(mrpc)))
    torch.manual_seed(42)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    args = TrainingArguments(output_dir=str(work / "peer-finetune"), per_device_train_batch_size=32,
                             per_device_eval_batch_size=8, learning_rate=2e-5, num_train_epochs=epochs,
                             max_steps=max_steps, save_strategy="no", eval_strategy="no", report_to="none",
                             disable_tqdm=True, seed=42, use_cpu=not torch.cuda.is_available(), logging_steps=50)

    def metrics(p):
        return task_metrics(task.metrics, np.argmax(p.predictions, axis=-1), p.label_ids)

    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=dev,
                      data_collator=default_data_collator, compute_metrics=metrics)
    result = trainer.train()
    evaluated = trainer.evaluate()

    def evaluate() -> int:  # Trainer.evaluate as run_glue.py calls it; returns the examples scored
        trainer.evaluate()
        return len(dev)

    return {"train_samples_per_second": result.metrics["train_samples_per_second"],
            "eval_accuracy": evaluated["eval_accuracy"], "eval_f1": evaluated["eval_f1"],
            "train_runtime": result.metrics["train_runtime"]}, evaluate


# ---------------------------------------------------------------------------------------------
# named entities (token classification)
# ---------------------------------------------------------------------------------------------
def ner_ours(ner: Path, work: Path, overrides: list[str], name: str = "ours-ner"):
    """The shipped finetune/ner recipe; returns its figures and a function that evaluates the saved
    model once as `bigmodel eval` does (sentences scored)."""
    from bigmodel_cli.recipe import load_recipe
    from bigmodel_cli.tagging import finetuning
    from bigmodel_cli.tagging.data import read_tagged
    from bigmodel_cli.tagging.inference import evaluate_tagger
    from bigmodel_cli.tagging.model import load_saved_tagger
    from bigmodel_cli.tagging.tasks import task_from_model

    recipe, _ = load_recipe("finetune", "finetune/ner", flags={"data.train_file": str(ner / "train.conll"),
                                                               "data.validation_file": str(ner / "dev.conll")},
                            overrides=[*overrides, "training.report_to=[none]", "training.save_total_limit=1"])
    run_dir = work / name
    start = time.perf_counter()
    metrics = finetuning.run(recipe, run_dir, quiet=True)
    wall = time.perf_counter() - start
    model, tokenizer = load_saved_tagger(str(run_dir))
    task, dev = task_from_model(model.config), read_tagged(ner / "dev.conll", "dev").sentences
    data = recipe.data

    def evaluate() -> int:
        evaluate_tagger(model, tokenizer, dev, task, data.max_seq_length, data.stride,
                        recipe.training.per_device_eval_batch_size, bf16=recipe.training.bf16)
        return len(dev)

    return {"train_samples_per_second": metrics["train_step_examples_per_second"],
            "train_samples_per_second_with_evaluations": metrics["train_samples_per_second"],
            "eval_samples_per_second_per_epoch": per_epoch_evaluation(run_dir),
            "eval_f1": metrics["eval_f1"], "eval_precision": metrics["eval_precision"],
            "eval_recall": metrics["eval_recall"], "epochs": recipe.training.num_train_epochs,
            "train_runtime": metrics["train_runtime"], "wall_seconds": wall}, evaluate


def ner_peer(ner: Path, work: Path, max_steps: int, epochs: float, model_name: str = MINILM):
    """run_ner.py at its defaults (lr 5e-5, batch 8, 3 epochs, each word's first sub-word labelled,
    `DataCollatorForTokenClassification`); its predictions scored by the same strict seqeval as ours."""
    import numpy as np
    from datasets import Dataset
    from transformers import AutoModelForTokenClassification, DataCollatorForTokenClassification, Trainer, TrainingArguments

    from bigmodel_cli.models import load_tokenizer, resolve_model_path
    from bigmodel_cli.tagging.data import read_tagged
    from bigmodel_cli.tagging.metrics import tag_scores
    from bigmodel_cli.tagging.schemes import label_list

    start = time.perf_counter()
    train_sentences = read_tagged(ner / "train.conll", "train").sentences
    dev_sentences = read_tagged(ner / "dev.conll", "dev").sentences
    labels = label_list(t for s in train_sentences for t in s.tags)
    label2id = {name: i for i, name in enumerate(labels)}
    path = resolve_model_path(model_name)
    tokenizer = load_tokenizer(path)

    def encode(sentences):
        data = Dataset.from_dict({"tokens": [s.words for s in sentences],
                                  "tags": [[label2id[t] for t in s.tags] for s in sentences]})

        def tokenize(batch):
            out = tokenizer(batch["tokens"], truncation=True, is_split_into_words=True)
            out["labels"] = []
            for i, tags in enumerate(batch["tags"]):
                previous, row = None, []
                for word in out.word_ids(i):
                    row.append(-100 if word is None or word == previous else tags[word])
                    previous = word
                out["labels"].append(row)
            return out

        return data.map(tokenize, batched=True, remove_columns=["tokens", "tags"])

    train, dev = encode(train_sentences), encode(dev_sentences)
    torch.manual_seed(42)
    model = AutoModelForTokenClassification.from_pretrained(path, num_labels=len(labels), id2label=dict(enumerate(labels)),
                                                            label2id=label2id)
    args = TrainingArguments(output_dir=str(work / "peer-ner"), per_device_train_batch_size=8, per_device_eval_batch_size=8,
                             learning_rate=5e-5, num_train_epochs=epochs, max_steps=max_steps, save_strategy="no",
                             eval_strategy="no", report_to="none", disable_tqdm=True, seed=42,
                             use_cpu=not torch.cuda.is_available(), logging_steps=50)

    def metrics(p):
        predicted = np.argmax(p.predictions, axis=-1)
        gold, guess = [], []
        for row, truth in zip(predicted, p.label_ids):
            keep = truth != -100
            gold.append([labels[i] for i in truth[keep]])
            guess.append([labels[i] for i in row[keep]])
        return {k: v for k, v in tag_scores(gold, guess).items() if isinstance(v, float)}

    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=dev,
                      data_collator=DataCollatorForTokenClassification(tokenizer), compute_metrics=metrics)
    result = trainer.train()
    evaluated = trainer.evaluate()
    wall = time.perf_counter() - start

    def evaluate() -> int:  # Trainer.evaluate as run_ner.py calls it; returns the sentences scored
        trainer.evaluate()
        return len(dev)

    return {"train_samples_per_second": result.metrics["train_samples_per_second"],
            "eval_f1": evaluated["eval_f1"], "eval_precision": evaluated["eval_precision"],
            "eval_recall": evaluated["eval_recall"], "epochs": epochs,
            "train_runtime": result.metrics["train_runtime"], "wall_seconds": wall}, evaluate


def ner_section(ner: Path, work: Path, quick: bool, model: str = MINILM) -> dict:
    """MiniLM on WNUT-16: the shipped finetune/ner recipe against run_ner.py's defaults."""
    steps, epochs = (40, 1.0) if quick else (-1, 3.0)
    ours_over = [f"training.max_steps={steps}"] if quick else []
    peer, ours, rounds = train_then_evaluate(ner, work, (steps, epochs, model), [f"model.name_or_path={model}", *ours_over],
                                             jobs=("ner_peer", "ner_ours"))
    middle = medians(rounds)
    peer["eval_samples_per_second"], ours["eval_samples_per_second"] = middle["peer"], middle["ours"]
    return {"peer": peer, "ours": ours, "eval_rounds": rounds, "ratio": {
        "train_samples_per_second": ours["train_samples_per_second"] / peer["train_samples_per_second"],
        "eval_samples_per_second": middle["ratio"],
        "eval_samples_per_second_per_epoch": ratio(ours["eval_samples_per_second_per_epoch"], middle["peer"]),
        "wall_seconds": ours["wall_seconds"] / peer["wall_seconds"]},
        "eval_f1_difference": ours["eval_f1"] - peer["eval_f1"]}


# ---------------------------------------------------------------------------------------------
# export: int8 with onnxruntime against bigmodel eval's torch fp32
# ---------------------------------------------------------------------------------------------
def export_section(mrpc: Path, run_dir: Path, work: Path, rounds: int = EVAL_ROUNDS) -> dict:
    """`bigmodel export --int8` of a fine-tuned MRPC classifier; then MRPC dev evaluated by `bigmodel
    eval`'s path with the torch model (fp32) and with the export (int8, onnxruntime), interleaved
    rounds in this process: examples/s, sizes, dev accuracy and F1."""
    from bigmodel_cli.classification.data import encode, load_glue
    from bigmodel_cli.classification.inference import evaluate_classifier
    from bigmodel_cli.classification.model import load_saved_classifier
    from bigmodel_cli.classification.tasks import get_task
    from bigmodel_cli.export.exporting import run
    from bigmodel_cli.exported import BATCH, EXPORT_BATCH

    out = work / "export"
    report = run(run_dir, out, True, 0.5, str(mrpc), None, 17, True)
    task = get_task("mrpc")
    sides = {"torch_fp32": load_saved_classifier(str(run_dir)), "onnx_int8": load_saved_classifier(str(out))}
    features = {name: encode(load_glue(task, "validation", str(mrpc)), tok) for name, (_, tok) in sides.items()}

    def one(name: str) -> tuple[float, dict]:  # each at `bigmodel eval`'s default batch for it
        model, tokenizer = sides[name]
        start = time.perf_counter()
        metrics = evaluate_classifier(model, tokenizer, features[name], task, EXPORT_BATCH if name == "onnx_int8" else BATCH)
        return len(features[name]) / (time.perf_counter() - start), metrics

    for name in sides:
        one(name)  # warm-up
    speeds = {name: [] for name in sides}
    for i in range(rounds):
        for name in (sorted(sides) if i % 2 else sorted(sides, reverse=True)):
            speeds[name].append(one(name)[0])
    metrics = {name: one(name)[1] for name in sides}
    middle = {name: statistics.median(v) for name, v in speeds.items()}
    return {"report": report, "eval_samples_per_second": middle, "rounds": speeds,
            "eval_accuracy": {n: m["eval_accuracy"] for n, m in metrics.items()},
            "eval_f1": {n: m["eval_f1"] for n, m in metrics.items()},
            "ratio": {"eval_samples_per_second": middle["onnx_int8"] / middle["torch_fp32"],
                      "bytes": report["int8"]["bytes"] / report["fp32"]["bytes"] if report.get("int8") else None,
                      "accuracy_points": 100 * (metrics["onnx_int8"]["eval_accuracy"] - metrics["torch_fp32"]["eval_accuracy"])}}


# ---------------------------------------------------------------------------------------------
# pretrain
# ---------------------------------------------------------------------------------------------
def pretrain_ours(corpus: Path, work: Path, budget: float, tokenizer_dir: Path | None, extra: tuple[str, ...] = (),
                  name: str = "ours-pretrain") -> dict:
    from bigmodel_cli.commands import pretrain
    from bigmodel_cli.recipe import load_recipe

    overrides = [f"data.train_files=[{corpus}]", f"training.time_budget={budget}", "training.report_to=[none]",
                 "training.save_strategy=no", *extra]
    if tokenizer_dir:
        overrides.append(f"tokenizer.name_or_path={tokenizer_dir}")
    recipe, _ = load_recipe("pretrain", "pretrain/bert-tiny", overrides=overrides)
    with watched_syncs() as syncs:
        metrics = pretrain.run(recipe, work / name, quiet=True)
    return {"train_tokens_per_second": metrics["train_tokens_per_second"],
            "train_tokens_per_second_steady": steady(work / name, "tokens_per_second"),
            "train_lines_per_second": metrics["train_lines_per_second"],
            "train_real_tokens": metrics["train_real_tokens"], "model_parameters": metrics["model_parameters"],
            "host_syncs": syncs.report()}


def pretrain_peer(corpus: Path, work: Path, budget: float, tokenizer_dir: Path) -> dict:
    from transformers import BertForMaskedLM, DataCollatorForLanguageModeling

    from bigmodel_cli.mlm.configs import bert_config
    from bigmodel_cli.mlm.corpus import load_corpus
    from bigmodel_cli.models import load_tokenizer
    from bigmodel_cli.recipe import load_recipe
    from bigmodel_cli.trainer.arguments import training_arguments
    from bigmodel_cli.trainer.callbacks import TimeBudget, budget_schedule
    from bigmodel_cli.trainer.trainer import CountingTrainer

    recipe, _ = load_recipe("pretrain", "pretrain/bert-tiny", overrides=[
        f"data.train_files=[{corpus}]", f"training.time_budget={budget}", "training.report_to=[none]",
        "training.save_strategy=no", f"tokenizer.name_or_path={tokenizer_dir}"])
    tokenizer = load_tokenizer(str(tokenizer_dir))
    raw = load_corpus(recipe).raw  # the same train/held-out lines as ours
    train = raw["train"].map(lambda b: tokenizer(b["text"], truncation=True, max_length=128,
                                                 return_special_tokens_mask=True),
                             batched=True, remove_columns=["text"])
    torch.manual_seed(42)
    model = BertForMaskedLM(bert_config(recipe, tokenizer))
    run_dir = work / "peer-pretrain"
    args = training_arguments(recipe.training, run_dir, quiet=True, eval_strategy="no")
    budget_cb = TimeBudget(budget)

    class PeerTrainer(CountingTrainer):
        def create_scheduler(self, num_training_steps, optimizer=None):
            self.lr_scheduler = budget_schedule(optimizer or self.optimizer, budget_cb, args.warmup_steps)
            return self.lr_scheduler

    trainer = PeerTrainer(model=model, args=args, train_dataset=train, callbacks=[budget_cb],
                          data_collator=DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15),
                          pad_token_id=tokenizer.pad_token_id)
    result = trainer.train()
    model.save_pretrained(run_dir)
    tokenizer.save_pretrained(run_dir)
    counts = trainer.throughput(result.metrics["train_runtime"])
    return {"train_tokens_per_second": counts["train_tokens_per_second"],
            "train_lines_per_second": counts["train_examples_per_second"],
            "train_real_tokens": counts["train_real_tokens"], "model_parameters": model.num_parameters()}


def pretrain_base(corpus: Path, work: Path, budget: float, bf16: bool, dry_run: bool, extra: tuple[str, ...] = (),
                  name: str = "") -> dict:
    """`pretrain/bert-base` (12 x 768, 128 tokens) for `budget` seconds, fp32 or bf16: real tokens/s and
    MFU over the whole run and once warm (the median logging window after the first)."""
    from bigmodel_cli.commands import pretrain
    from bigmodel_cli.recipe import load_recipe

    overrides = [f"data.train_files=[{corpus}]", f"training.time_budget={budget}", "training.max_steps=-1",
                 "training.report_to=[none]", "training.save_strategy=no", "training.eval_strategy=no",
                 f"training.bf16={str(bf16).lower()}", "tokenizer.vocab_size=30522", "training.logging_steps=10"]
    if dry_run:  # the plumbing only, on a CPU: a small model and batch
        overrides += ["model.num_hidden_layers=2", "model.hidden_size=64", "model.num_attention_heads=2",
                      "model.intermediate_size=128", "training.global_batch_size=16", "training.per_device_train_batch_size=16",
                      "training.logging_steps=2"]
    recipe, _ = load_recipe("pretrain", "pretrain/bert-base", overrides=[*overrides, *extra])
    run_dir = work / (name or f"base-{'bf16' if bf16 else 'fp32'}")
    with watched_syncs() as syncs:
        metrics = pretrain.run(recipe, run_dir, quiet=True)
    keys = ("train_tokens_per_second", "train_model_flops_per_second", "model_flops_utilization", "train_real_tokens",
            "train_step_seconds", "perplexity")
    return {**{k: metrics[k] for k in keys if k in metrics},
            "train_tokens_per_second_steady": steady(run_dir, "tokens_per_second"),
            "model_flops_utilization_steady": steady(run_dir, "model_flops_utilization"), "host_syncs": syncs.report()}


def nccl_launch(work: Path, dry_run: bool) -> dict:
    """One process under torchrun: the process group is NCCL on a GPU (gloo on a CPU dry run), so the
    collectives (the time budget's clock every step, the final sums) run as a multi-GPU run's do."""
    import subprocess

    run_dir = work / "launch"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "-m", "bigmodel_cli", "pretrain",
               "-r", "pretrain/tiny-debug", "-o", str(run_dir), "-q", "--set", "training.max_steps=-1",
               "--set", f"training.time_budget={5 if dry_run else 20}", "--set", "training.report_to=[none]"]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    metrics = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").is_file() else {}
    return {"returncode": result.returncode, "backend": "nccl" if torch.cuda.is_available() else "gloo",
            "seconds": time.perf_counter() - start, "perplexity": metrics.get("perplexity"),
            "stderr_tail": result.stderr[-1500:] if result.returncode else ""}


def held_out_perplexity(run_dir: Path, lines: list[str], work: Path) -> float:
    from bigmodel_cli.commands.evaluate import evaluate_mlm_on

    path = work / "held-out.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return evaluate_mlm_on(str(run_dir), str(path), 128)["perplexity"]


def useful_flops_per_token(params: int, vocab: int, hidden: int) -> float:
    """6 x (non-embedding parameters) per token, plus the MLM head's work on the 15 % it predicts."""
    non_embedding = params - vocab * hidden - 512 * hidden
    return 6 * non_embedding + 6 * vocab * hidden * 0.15


def finetune_flops_per_example(mrpc: Path, run_dir: Path) -> tuple[float, float]:
    """Useful multiply-adds x 2 per training and per evaluation example: what the stock model needs
    on the real (non-pad) tokens, 6 and 2 x (non-embedding parameters) per token. Padding the peer
    computes is waste and not counted; the work our first-token last layer skips is counted."""
    from bigmodel_cli.classification.data import encode, load_glue
    from bigmodel_cli.classification.tasks import get_task
    from bigmodel_cli.models import load_tokenizer

    config = json.loads((run_dir / "config.json").read_text())
    hidden, inner, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    per_token = layers * (4 * hidden * hidden + 2 * hidden * inner)  # multiply-adds of the encoder's linears
    tokenizer = load_tokenizer(str(run_dir))
    task = get_task("mrpc")
    ids = [encode(load_glue(task, split, str(mrpc)), tokenizer)["input_ids"] for split in ("train", "validation")]
    mean = [sum(map(len, rows)) / len(rows) for rows in ids]
    return 6 * per_token * mean[0], 2 * per_token * mean[1]


# ---------------------------------------------------------------------------------------------
# one GPU: `make bench-gpu`
# ---------------------------------------------------------------------------------------------
class GpuRun:
    """What every GPU section needs: the data, MiniLM's folder, a scratch folder, and whether this is
    a dry run (the same sections for seconds each, on any machine)."""

    def __init__(self, mrpc: Path, corpus: Path, work: Path, model: str, dry: bool):
        self.mrpc, self.corpus, self.work, self.model, self.dry = mrpc, corpus, work, model, dry

    def budget(self, seconds: float) -> float:
        return 8.0 if self.dry else seconds

    def logging(self) -> tuple[str, ...]:
        """BERT-tiny's logging steps in a dry run: enough logs in seconds to have a steady speed."""
        return ("training.logging_steps=5",) if self.dry else ()

    def finetune_overrides(self, *extra: str) -> list[str]:
        dry = ["training.max_steps=6", "training.logging_steps=2"] if self.dry else []  # logs enough to have a steady speed
        return [f"model.name_or_path={self.model}", *dry, *extra]


def in_side(ours: bool, name: str, *args):
    """One job in a fresh process of its own side."""
    with side_process(ours) as side:
        return side.submit(_train, name, *args).result()


def finetune_section(run: GpuRun) -> dict:
    """MiniLM on MRPC: ours (the shipped recipe) against run_glue.py's defaults (3 epochs)."""
    steps, epochs = (5, 1.0) if run.dry else (-1, 3.0)
    peer, ours, rounds = train_then_evaluate(run.mrpc, run.work, (steps, epochs, run.model), run.finetune_overrides(),
                                             rounds=1 if run.dry else EVAL_ROUNDS)
    middle = medians(rounds)
    peer["eval_samples_per_second"], ours["eval_samples_per_second"] = middle["peer"], middle["ours"]
    return {"peer": peer, "ours": ours, "rounds": rounds, "ratio": {
        "train_samples_per_second": ours["train_samples_per_second"] / peer["train_samples_per_second"],
        "eval_samples_per_second": middle["ratio"],
        "eval_samples_per_second_per_epoch": ratio(ours["eval_samples_per_second_per_epoch"], middle["peer"])}}


def held_out_lines(corpus: Path) -> list[str]:
    from bigmodel_cli.mlm.corpus import load_corpus
    from bigmodel_cli.recipe import load_recipe

    recipe, _ = load_recipe("pretrain", "pretrain/bert-tiny", overrides=[f"data.train_files=[{corpus}]"])
    return list(load_corpus(recipe).raw["validation"]["text"])


def pretrain_comparison(corpus: Path, work: Path, budget: float, logging: tuple[str, ...] = ()) -> dict:
    """BERT-tiny on WikiText-2, ours against run_mlm.py --line_by_line, the same seconds each, each side in
    its own process, one tokenizer (ours trains it, the peer reads it): speed and held-out perplexity."""
    ours = in_side(True, "pretrain_ours", corpus, work, budget, None, logging)
    peer = in_side(False, "pretrain_peer", corpus, work, budget, work / "ours-pretrain")
    held = held_out_lines(corpus)
    ours["perplexity"] = held_out_perplexity(work / "ours-pretrain", held, work)
    peer["perplexity"] = held_out_perplexity(work / "peer-pretrain", held, work)
    return {"budget_seconds": budget, "peer": peer, "ours": ours, "ratio": {
        "train_tokens_per_second": ours["train_tokens_per_second"] / peer["train_tokens_per_second"],
        "perplexity": ours["perplexity"] / peer["perplexity"]}}


def pretrain_tiny_section(run: GpuRun) -> dict:
    return pretrain_comparison(run.corpus, run.work, run.budget(45.0), run.logging())


def pretrain_base_section(run: GpuRun) -> dict:
    """`pretrain/bert-base` in fp32 and in bf16, the same seconds each: tokens/s, MFU, bf16 over fp32."""
    base = {precision: in_side(True, "pretrain_base", run.corpus, run.work, run.budget(30.0), precision == "bf16", run.dry)
            for precision in ("fp32", "bf16")}
    base["bf16_over_fp32"] = base["bf16"]["train_tokens_per_second"] / base["fp32"]["train_tokens_per_second"]
    base["bf16_over_fp32_steady"] = ratio(base["bf16"]["train_tokens_per_second_steady"],
                                          base["fp32"]["train_tokens_per_second_steady"])
    return base


def nccl_section(run: GpuRun) -> dict:
    return nccl_launch(run.work, run.dry)


# Ours alone with one setting changed, against the section that ran it at its default: whether bf16
# pays for fine-tuning, whether torch.compile pays, whether two loader workers (neither recipe has
# any), device-side masks and bucketed batches pay, whether evaluation wants larger batches on a GPU.
# name: (what runs, the overrides, the section compared with)
VARIANTS = {
    "finetune_bf16": ("finetune", ("training.bf16=true",), "finetune"),
    "pretrain_base_compiled": ("pretrain_base", ("training.torch_compile=true",), "pretrain_base"),
    "finetune_compiled": ("finetune", ("training.torch_compile=true",), "finetune"),
    "pretrain_base_workers": ("pretrain_base", ("training.dataloader_num_workers=2",), "pretrain_base"),
    "pretrain_tiny_host_masks": ("pretrain_tiny", ("data.mask_on_device=false",), "pretrain_tiny"),
    "pretrain_tiny_workers": ("pretrain_tiny", ("training.dataloader_num_workers=2",), "pretrain_tiny"),
    "finetune_unbucketed": ("finetune", ("data.pad_to_buckets=false",), "finetune"),
    "finetune_eval_batch_256": ("finetune_eval", ("training.per_device_eval_batch_size=256",), "finetune"),
}
SPEED_KEYS = {"finetune": ("train_samples_per_second", "train_samples_per_second_steady"),
              "finetune_eval": ("eval_samples_per_second",),
              "pretrain_tiny": ("train_tokens_per_second", "train_tokens_per_second_steady"),
              "pretrain_base": ("train_tokens_per_second", "train_tokens_per_second_steady")}


def variant_section(run: GpuRun, name: str) -> dict:
    kind, overrides, compared_with = VARIANTS[name]
    if kind == "finetune":
        ours = in_side(True, "finetune_ours", run.mrpc, run.work, run.finetune_overrides(*overrides), name)
    elif kind == "finetune_eval":  # evaluation alone (its speed does not depend on the weights): one training step
        with side_process(True) as side:
            side.submit(_train, "finetune_ours", run.mrpc, run.work,
                        run.finetune_overrides(*overrides, "training.max_steps=1", "training.eval_strategy=no"), name).result()
            side.submit(_evaluate_for, 0.0).result()  # warm-up, as in the finetune section's rounds
            examples, seconds = side.submit(_evaluate_for, 1.0 if run.dry else 20.0).result()
        ours = {"eval_samples_per_second": examples / seconds, "eval_seconds": seconds}
    elif kind == "pretrain_base":  # bf16, the recipe's precision; compiling gets time to pay back its compilation
        seconds = 60.0 if "training.torch_compile=true" in overrides else 30.0
        ours = in_side(True, "pretrain_base", run.corpus, run.work, run.budget(seconds), True, run.dry, overrides, name)
    else:
        ours = in_side(True, "pretrain_ours", run.corpus, run.work, run.budget(45.0), None, (*overrides, *run.logging()), name)
    return {"overrides": list(overrides), "compared_with": compared_with, "ours": ours}


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def variant_ratios(report: dict) -> None:
    """Each variant's speed over its section's at the default (where both ran in this report)."""
    for name, (kind, _, compared_with) in VARIANTS.items():
        variant, base = report.get(name), report.get(compared_with)
        if not variant or "ours" not in variant or not base or "error" in base:
            continue
        base = base["bf16"] if kind == "pretrain_base" else base["ours"]
        variant["ratio"] = {key: ratio(variant["ours"].get(key), base.get(key)) for key in SPEED_KEYS[kind]}


# name: (the function, expected seconds on an H100/H200). The expected seconds are rough guesses used
# only to skip what would not end before --deadline; each section's measured seconds are reported.
GPU_SECTIONS = {
    "finetune": (finetune_section, 100),
    "pretrain_tiny": (pretrain_tiny_section, 150),
    "pretrain_base": (pretrain_base_section, 100),
    "nccl_launch": (nccl_section, 50),
    **{name: (lambda run, name=name: variant_section(run, name), 120 if "compiled" in name else 60) for name in VARIANTS},
}
MAIN_SECTIONS = ("finetune", "pretrain_tiny", "pretrain_base", "nccl_launch")


def section_names(chosen: str) -> list[str]:
    """--sections: main (the comparisons with the peers), variants, all, or names separated by commas."""
    groups = {"main": list(MAIN_SECTIONS), "variants": list(VARIANTS), "all": list(GPU_SECTIONS)}
    names = [n for part in chosen.split(",") for n in groups.get(part.strip(), [part.strip()])]
    unknown = [n for n in names if n not in GPU_SECTIONS]
    if unknown:
        sys.exit(f"error: --sections {','.join(unknown)}: no such section; choose from main, variants, all, "
                 + ", ".join(GPU_SECTIONS))
    return names


def preflight(model: str) -> None:
    """Before a GPU's time is spent, in seconds: every package the sections import, the metric
    modules, MiniLM's folder. One line naming what is missing."""
    import numpy as np

    try:
        import datasets  # noqa: F401

        import bigmodel_cli.cli  # noqa: F401  (typer, rich: the torchrun launch runs the command)
        from bigmodel_cli.classification.metrics import task_metrics
        from bigmodel_cli.commands import pretrain  # noqa: F401  (pydantic, tokenizers)

        task_metrics(("accuracy", "f1"), np.array([0, 1]), np.array([0, 1]))  # evaluate, scikit-learn
    except ModuleNotFoundError as e:
        sys.exit(f"error: Python package {e.name} is missing; install it (on a GPU machine of ours: "
                 "source .gpu-payload/unpack.sh first)")
    from bigmodel_cli.models import resolve_model_path

    if not Path(resolve_model_path(model)).is_dir():
        sys.exit(f"error: MiniLM not found as {model}: pip install 'bigmodel[minilm]', or pass --model DIR "
                 "(BIGMODEL_MINILM=DIR)")


def gpu_report(opts, device: str) -> dict:
    """A new report, or with --keep the one in --out from this same device, whose sections are kept."""
    import transformers

    if opts.keep and opts.out.is_file():
        kept = json.loads(opts.out.read_text())
        if kept.get("machine", {}).get("device") == device and kept.get("mode") == ("gpu-dry-run" if opts.dry_run else "gpu"):
            return kept
        print(f"--keep: {opts.out} is from another device or mode; starting anew", file=sys.stderr)
    return {"mode": "gpu-dry-run" if opts.dry_run else "gpu",
            "machine": {"device": device, "torch": torch.__version__, "cuda": torch.version.cuda,
                        "transformers": transformers.__version__}}


def gpu_sections(opts, mrpc: Path, corpus: Path, work: Path, save) -> dict:
    """`make bench-gpu`: the chosen sections in order, each side in its own process, one after the
    other, on one GPU; a section that fails is recorded and the next one runs."""
    import traceback

    on_gpu = torch.cuda.is_available()
    report = gpu_report(opts, torch.cuda.get_device_name() if on_gpu else "cpu (dry run)")
    size = 4096 if on_gpu else 512
    report.setdefault("gemm_peak_flops", {"fp32": gemm_peak(torch.float32, size, 2.0, "cuda" if on_gpu else "cpu"),
                                          "bf16": gemm_peak(torch.bfloat16, size, 2.0, "cuda" if on_gpu else "cpu")})
    run, start = GpuRun(mrpc, corpus, work, opts.model, opts.dry_run), time.perf_counter()
    report["skipped"] = []
    for name in section_names(opts.sections):
        function, expected = GPU_SECTIONS[name]
        if opts.keep and name in report and "error" not in report[name]:
            continue
        if opts.deadline and time.perf_counter() - start + expected > opts.deadline:
            report["skipped"].append(name)
            continue
        began = time.perf_counter()
        print(f"bench-gpu: {name} ...", file=sys.stderr, flush=True)
        try:
            report[name] = function(run)
        except Exception as e:  # noqa: BLE001  (the GPU's minutes are scarce: record it, run the next)
            report[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
        report[name]["seconds"] = round(time.perf_counter() - began, 1)
        variant_ratios(report)
        save(report)
    report["seconds"] = round(time.perf_counter() - start, 1)
    save(report)
    return report


def _figure(x) -> str:
    return "-" if x is None else f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.3g}"


def _times(x) -> str:
    return "-" if x is None else f"{x:.3g}x"


def _stalls(*runs: dict) -> str:
    """Steps with host syncs outside logging, per run ("-": not watched, i.e. no GPU)."""
    counts = [run.get("host_syncs") or {} for run in runs]
    return "/".join(str(c["stalled_steps"]) if c.get("watched") else "-" for c in counts)


def summary_line(name: str, section: dict) -> str:
    f, times = _figure, _times
    if "error" in section:
        return f"{name}: FAILED {section['error'][:150]}"
    if name == "finetune":
        o, p, r = section["ours"], section["peer"], section["ratio"]
        return (f"finetune: train {f(o['train_samples_per_second'])} vs {f(p['train_samples_per_second'])} ex/s "
                f"({times(r['train_samples_per_second'])}), eval {times(r['eval_samples_per_second'])}; dev acc/F1 "
                f"{f(o['eval_accuracy'])}/{f(o['eval_f1'])} vs {f(p['eval_accuracy'])}/{f(p['eval_f1'])}; stalled steps {_stalls(o)}")
    if name == "pretrain_tiny":
        o, p, r = section["ours"], section["peer"], section["ratio"]
        return (f"pretrain_tiny: {f(o['train_tokens_per_second'])} vs {f(p['train_tokens_per_second'])} tokens/s "
                f"({times(r['train_tokens_per_second'])}); perplexity {f(o['perplexity'])} vs {f(p['perplexity'])}; "
                f"stalled steps {_stalls(o)}")
    if name == "pretrain_base":
        cells = [f"{k} {f(section[k]['train_tokens_per_second'])} tokens/s (steady {f(section[k]['train_tokens_per_second_steady'])}, "
                 f"MFU {f(section[k].get('model_flops_utilization'))}, steady {f(section[k]['model_flops_utilization_steady'])})"
                 for k in ("fp32", "bf16")]
        return (f"pretrain_base: {'; '.join(cells)}; bf16/fp32 {times(section['bf16_over_fp32'])} "
                f"(steady {times(section['bf16_over_fp32_steady'])}); stalled steps fp32/bf16 "
                f"{_stalls(section['fp32'], section['bf16'])}")
    if name == "nccl_launch":
        return f"nccl_launch: exit {section['returncode']} ({section['backend']}), perplexity {f(section['perplexity'])}"
    return f"{name}: " + ", ".join(f"{k} {times(v)}" for k, v in section["ratio"].items())


def gpu_summary(report: dict) -> str:
    """A short table of what decides issue 16's targets, printed last: a device call's reply carries
    the end of the output (the JSON holds everything)."""
    lines = [f"bench-gpu on {report['machine']['device']} ({report.get('seconds', '?')} s; skipped: "
             f"{', '.join(report.get('skipped', [])) or 'none'})"]
    for name, section in report.items():
        if isinstance(section, dict) and "seconds" in section:
            try:
                lines.append(summary_line(name, section))
            except (KeyError, TypeError):  # a section without its usual figures: they are in the JSON
                lines.append(f"{name}: see the JSON")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("BIGMODEL_DATA", "../shared/data")),
                        help="the folder with glue/mrpc and wikitext-2; default $BIGMODEL_DATA or ../shared/data")
    parser.add_argument("--out", type=Path, default=Path("bench-results/bench.json"))
    parser.add_argument("--quick", action="store_true", help="a few minutes: 60 s budgets, 40 fine-tuning steps")
    parser.add_argument("--only", choices=["finetune", "pretrain", "eval", "ner", "export"], default=None,
                        help="eval: fine-tuning's evaluation speed alone, on models trained one step (minutes); "
                        "ner: named entities on WNUT-16 against run_ner.py; export: int8 ONNX against torch fp32")
    parser.add_argument("--run", type=Path, default=None, help="with --only export: a fine-tuned MRPC run to export "
                        "(default: the one the finetune section trains)")
    parser.add_argument("--gpu", action="store_true", help="one GPU: finetune, BERT-tiny and BERT-base pretraining "
                        "(fp32 and bf16, MFU), a one-process NCCL launch (under 8 minutes); and variants")
    parser.add_argument("--dry-run", action="store_true", help="with --gpu: the same sections on any device, seconds "
                        "each, to check the script before a GPU's time is spent")
    parser.add_argument("--sections", default="main", help="with --gpu: main (against the peers), variants (ours with "
                        "bf16, torch.compile, two loader workers, host masks, no buckets, eval batch 256), all, or names, comma-separated")
    parser.add_argument("--deadline", type=float, default=None, help="with --gpu: seconds; skip a section that is "
                        "expected to end after it (the results so far are in --out after every section)")
    parser.add_argument("--keep", action="store_true", help="with --gpu: keep the sections already in --out (same "
                        "device) and run the others")
    parser.add_argument("--model", default=os.environ.get("BIGMODEL_MINILM", MINILM),
                        help="MiniLM: its hub id (from the bigmodel[minilm] package) or a folder; default $BIGMODEL_MINILM")
    opts = parser.parse_args()
    if opts.gpu and not opts.dry_run and not torch.cuda.is_available():
        sys.exit("error: --gpu needs a CUDA GPU (add --dry-run to check the script on this machine)")
    mrpc, corpus = opts.data / "glue" / "mrpc", opts.data / "wikitext-2" / "wiki.valid.tokens"
    for path in (mrpc / "train.tsv", corpus):
        if not path.is_file():
            sys.exit(f"error: {path} not found; pass --data with glue/mrpc and wikitext-2 in it")
    work = Path(tempfile.mkdtemp(prefix="bigmodel-bench-"))
    opts.out.parent.mkdir(parents=True, exist_ok=True)

    def save(written: dict | None = None) -> None:  # after each section: a long run that breaks keeps what it measured
        opts.out.write_text(json.dumps(written if written is not None else report, indent=2) + "\n")

    if opts.gpu:
        section_names(opts.sections)  # a typo fails now, not after minutes
        preflight(opts.model)
        report = gpu_sections(opts, mrpc, corpus, work, save)
        print(json.dumps(report, indent=2))
        print(gpu_summary(report))
        return
    report: dict = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                                "torch": torch.__version__},
                    "mode": "eval-only" if opts.only == "eval" else "quick" if opts.quick else "full",
                    "gemm_peak_flops": {"fp32": gemm_peak(torch.float32), "bf16": gemm_peak(torch.bfloat16)}}
    if opts.only == "eval":  # speed does not depend on the weights: one training step each
        *_, rounds = train_then_evaluate(mrpc, work, (1, 1.0), ["training.max_steps=1", "training.eval_strategy=no"])
        report["eval_only"] = {"rounds": rounds, **medians(rounds)}
    if opts.only in (None, "finetune"):
        steps, epochs = (40, 1.0) if opts.quick else (-1, 3.0)
        ours_over = [f"training.max_steps={steps}"] if opts.quick else []
        peer, ours, rounds = train_then_evaluate(mrpc, work, (steps, epochs), ours_over)
        middle = medians(rounds)
        peer["eval_samples_per_second"], ours["eval_samples_per_second"] = middle["peer"], middle["ours"]
        ours["eval_rounds"] = rounds
        train_per_example, eval_per_example = finetune_flops_per_example(mrpc, work / "ours-finetune")
        for side in (ours, peer):
            side["achieved_train_flops"] = train_per_example * side["train_samples_per_second"]
            side["achieved_eval_flops"] = eval_per_example * side["eval_samples_per_second"]
            side["train_fraction_of_fp32_peak"] = side["achieved_train_flops"] / report["gemm_peak_flops"]["fp32"]
            side["eval_fraction_of_fp32_peak"] = side["achieved_eval_flops"] / report["gemm_peak_flops"]["fp32"]
        report["finetune"] = {"peer": peer, "ours": ours, "ratio": {
            "train_samples_per_second": ours["train_samples_per_second"] / peer["train_samples_per_second"],
            "eval_samples_per_second": middle["ratio"],  # the median round's
            "eval_samples_per_second_of_medians": ours["eval_samples_per_second"] / peer["eval_samples_per_second"],
            # the evaluations finetune runs after each epoch, against the peer's evaluation
            "eval_samples_per_second_per_epoch": ratio(ours["eval_samples_per_second_per_epoch"], middle["peer"])}}
        save()
    if opts.only in (None, "export"):
        run_dir = opts.run or work / "ours-finetune"
        if not (run_dir / "model.safetensors").is_file():
            sys.exit(f"error: {run_dir} holds no model; pass --run with a fine-tuned MRPC run (or run the finetune section)")
        report["export"] = export_section(mrpc, run_dir, work)
        save()
    if opts.only in (None, "ner"):
        report["ner"] = ner_section(opts.data / "ner" / "wnut16", work, opts.quick, opts.model)
        save()
    if opts.only in (None, "pretrain"):
        report["pretrain"] = pretrain_comparison(corpus, work, 60.0 if opts.quick else 600.0)
        ours, peer = report["pretrain"]["ours"], report["pretrain"]["peer"]
        config = json.loads((work / "ours-pretrain" / "config.json").read_text())
        per_token = useful_flops_per_token(ours["model_parameters"], config["vocab_size"], config["hidden_size"])
        for side in (ours, peer):
            side["achieved_flops"] = per_token * side["train_tokens_per_second"]
            side["fraction_of_fp32_peak"] = side["achieved_flops"] / report["gemm_peak_flops"]["fp32"]
    save()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
