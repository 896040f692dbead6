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
gemm: this CPU's matrix-multiply peak, to put achieved FLOP/s against.

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
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
import torch  # noqa: E402

# A pass over MRPC's dev set takes seconds, and this shared machine's speed drifts by 10-20 % within
# minutes. So: one untimed pass each, then rounds in which both sides evaluate over the same span of
# time (ours repeats its pass until it has run as long as the peer's did), the side that goes first
# alternating; each round gives a ratio, and the median round is reported.
EVAL_ROUNDS = 7


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


def medians(rounds: list[dict]) -> dict:
    """The median round's ratio (both sides saw that round's drift) and each side's median speed."""
    return {key: statistics.median(r[key] for r in rounds) for key in ("ratio", "peer", "ours")}


def train_then_evaluate(mrpc: Path, work: Path, peer_args: tuple, ours_overrides: list[str]):
    """Each side fine-tunes in a process of its own, one after the other; then both evaluate in
    interleaved rounds. Returns (peer's figures, ours, the rounds)."""
    with side_process(False) as peer_side, side_process(True) as ours_side:
        peer = peer_side.submit(_train, "finetune_peer", mrpc, work, *peer_args).result()
        ours = ours_side.submit(_train, "finetune_ours", mrpc, work, ours_overrides).result()
        return peer, ours, eval_rounds(peer_side, ours_side, EVAL_ROUNDS)


def side_process(ours: bool) -> ProcessPoolExecutor:
    """A fresh process (spawned: nothing inherited from this one) for one side's jobs."""
    return ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=_start_side,
                               initargs=(ours,))


# ---------------------------------------------------------------------------------------------
# finetune
# ---------------------------------------------------------------------------------------------
def finetune_ours(mrpc: Path, work: Path, overrides: list[str]):
    """Trains; returns its figures and a function that evaluates the saved model once (samples/s)."""
    from bigmodel_cli.classification import finetuning
    from bigmodel_cli.recipe import load_recipe

    recipe, _ = load_recipe("finetune", "finetune/mrpc", flags={"data.data_dir": str(mrpc)},
                            overrides=[*overrides, "training.report_to=[none]", "training.save_total_limit=1"])
    metrics = finetuning.run(recipe, work / "ours-finetune", quiet=True)
    from transformers import AutoModelForSequenceClassification

    from bigmodel_cli.classification.data import encode, load_glue
    from bigmodel_cli.classification.inference import evaluate_classifier
    from bigmodel_cli.classification.tasks import get_task
    from bigmodel_cli.kernels import classify_from_first_token
    from bigmodel_cli.models import load_tokenizer

    model = AutoModelForSequenceClassification.from_pretrained(work / "ours-finetune")
    classify_from_first_token(model)  # as `bigmodel eval` loads it
    tokenizer = load_tokenizer(str(work / "ours-finetune"))
    task = get_task("mrpc")
    features = encode(load_glue(task, "validation", str(mrpc)), tokenizer)

    def evaluate() -> int:  # as `bigmodel eval` runs it, metrics included; returns the examples scored
        evaluate_classifier(model, tokenizer, features, task, recipe.training.per_device_eval_batch_size)
        return len(features)

    # Training speed with the per-epoch evaluations and checkpoints (which the peer does not do) set
    # aside; the figure with them is kept beside it.
    return {"train_samples_per_second": metrics["train_step_examples_per_second"],
            "train_samples_per_second_with_evaluations": metrics["train_samples_per_second"],
            "eval_accuracy": metrics["eval_accuracy"], "eval_f1": metrics["eval_f1"],
            "train_runtime": metrics["train_runtime"]}, evaluate


def finetune_peer(mrpc: Path, work: Path, max_steps: int, epochs: float):
    """run_glue.py's defaults; returns its figures and a function that runs its evaluation once."""
    import numpy as np
    from transformers import AutoModelForSequenceClassification, Trainer, TrainingArguments, default_data_collator

    from bigmodel_cli.classification.data import load_glue
    from bigmodel_cli.classification.metrics import task_metrics
    from bigmodel_cli.classification.tasks import get_task
    from bigmodel_cli.models import load_tokenizer, resolve_model_path

    task = get_task("mrpc")
    path = resolve_model_path("sentence-transformers/all-MiniLM-L6-v2")
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
# pretrain
# ---------------------------------------------------------------------------------------------
def pretrain_ours(corpus: Path, work: Path, budget: float, tokenizer_dir: Path | None) -> dict:
    from bigmodel_cli.commands import pretrain
    from bigmodel_cli.recipe import load_recipe

    overrides = [f"data.train_files=[{corpus}]", f"training.time_budget={budget}", "training.report_to=[none]",
                 "training.save_strategy=no"]
    if tokenizer_dir:
        overrides.append(f"tokenizer.name_or_path={tokenizer_dir}")
    recipe, _ = load_recipe("pretrain", "pretrain/bert-tiny", overrides=overrides)
    metrics = pretrain.run(recipe, work / "ours-pretrain", quiet=True)
    return {"train_tokens_per_second": metrics["train_tokens_per_second"],
            "train_samples_per_second": metrics["train_samples_per_second"],
            "train_real_tokens": metrics["train_real_tokens"], "model_parameters": metrics["model_parameters"]}


def pretrain_peer(corpus: Path, work: Path, budget: float, tokenizer_dir: Path) -> dict:
    from transformers import BertForMaskedLM, DataCollatorForLanguageModeling

    from bigmodel_cli.mlm.head import bert_config
    from bigmodel_cli.mlm.text import load_corpus
    from bigmodel_cli.models import load_tokenizer
    from bigmodel_cli.recipe import load_recipe
    from bigmodel_cli.trainer.arguments import training_arguments
    from bigmodel_cli.trainer.callbacks import TimeBudget, budget_schedule
    from bigmodel_cli.trainer.trainer import CountingTrainer

    recipe, _ = load_recipe("pretrain", "pretrain/bert-tiny", overrides=[
        f"data.train_files=[{corpus}]", f"training.time_budget={budget}", "training.report_to=[none]",
        "training.save_strategy=no", f"tokenizer.name_or_path={tokenizer_dir}"])
    tokenizer = load_tokenizer(str(tokenizer_dir))
    raw = load_corpus(recipe)  # the same train/held-out lines as ours
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
            "train_samples_per_second": counts["train_examples_per_second"],
            "train_real_tokens": counts["train_real_tokens"], "model_parameters": model.num_parameters()}


def pretrain_base(corpus: Path, work: Path, budget: float, bf16: bool, dry_run: bool) -> dict:
    """`pretrain/bert-base` (12 x 768, 128 tokens) for `budget` seconds, fp32 or bf16: real tokens/s, MFU."""
    from bigmodel_cli.commands import pretrain
    from bigmodel_cli.recipe import load_recipe

    overrides = [f"data.train_files=[{corpus}]", f"training.time_budget={budget}", "training.max_steps=-1",
                 "training.report_to=[none]", "training.save_strategy=no", "training.eval_strategy=no",
                 f"training.bf16={str(bf16).lower()}", "tokenizer.vocab_size=30522"]
    if dry_run:  # the plumbing only, on a CPU: a small model and batch
        overrides += ["model.num_hidden_layers=2", "model.hidden_size=64", "model.num_attention_heads=2",
                      "model.intermediate_size=128", "training.global_batch_size=16", "training.per_device_train_batch_size=16"]
    recipe, _ = load_recipe("pretrain", "pretrain/bert-base", overrides=overrides)
    metrics = pretrain.run(recipe, work / f"base-{'bf16' if bf16 else 'fp32'}", quiet=True)
    keys = ("train_tokens_per_second", "train_model_flops_per_second", "model_flops_utilization", "train_real_tokens",
            "train_step_seconds", "perplexity")
    return {k: metrics[k] for k in keys if k in metrics}


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


def gpu_sections(opts, mrpc: Path, corpus: Path, work: Path, report: dict, save) -> None:
    """`make bench-gpu`: each side in its own process, one after the other, on one GPU."""
    dry = opts.dry_run
    device = "cuda" if torch.cuda.is_available() else "cpu"
    report["machine"] = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu (dry run)",
                         "torch": torch.__version__}
    report["gemm_peak_flops"] = {"fp32": gemm_peak(torch.float32, 4096 if device == "cuda" else 512, 2.0, device),
                                 "bf16": gemm_peak(torch.bfloat16, 4096 if device == "cuda" else 512, 2.0, device)}
    steps, epochs = (5, 1.0) if dry else (-1, 3.0)  # run_glue.py's 3 epochs; ours the shipped recipe's
    peer, ours, rounds = train_then_evaluate(mrpc, work, (steps, epochs), ["training.max_steps=5"] if dry else [])
    middle = medians(rounds)
    report["finetune"] = {"peer": peer, "ours": ours, "rounds": rounds, "ratio": {
        "train_samples_per_second": ours["train_samples_per_second"] / peer["train_samples_per_second"],
        "eval_samples_per_second": middle["ratio"]}}
    save()
    budget = 8.0 if dry else 60.0
    with side_process(True) as side:
        ours = side.submit(_train, "pretrain_ours", corpus, work, budget, None).result()
    with side_process(False) as side:
        peer = side.submit(_train, "pretrain_peer", corpus, work, budget, work / "ours-pretrain").result()
    from bigmodel_cli.mlm.text import load_corpus
    from bigmodel_cli.recipe import load_recipe

    recipe, _ = load_recipe("pretrain", "pretrain/bert-tiny", overrides=[f"data.train_files=[{corpus}]"])
    held = list(load_corpus(recipe)["validation"]["text"])
    ours["perplexity"] = held_out_perplexity(work / "ours-pretrain", held, work)
    peer["perplexity"] = held_out_perplexity(work / "peer-pretrain", held, work)
    report["pretrain_tiny"] = {"budget_seconds": budget, "peer": peer, "ours": ours, "ratio": {
        "train_tokens_per_second": ours["train_tokens_per_second"] / peer["train_tokens_per_second"],
        "perplexity": ours["perplexity"] / peer["perplexity"]}}
    save()
    base = {}
    for bf16 in (False, True):
        with side_process(True) as side:
            base["bf16" if bf16 else "fp32"] = side.submit(_train, "pretrain_base", corpus, work, 8.0 if dry else 45.0,
                                                           bf16, dry).result()
    base["bf16_over_fp32"] = base["bf16"]["train_tokens_per_second"] / base["fp32"]["train_tokens_per_second"]
    report["pretrain_base"] = base
    save()
    report["nccl_launch"] = nccl_launch(work, dry)
    save()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=Path("bench-results/bench.json"))
    parser.add_argument("--quick", action="store_true", help="a few minutes: 60 s budgets, 40 fine-tuning steps")
    parser.add_argument("--only", choices=["finetune", "pretrain", "eval"], default=None,
                        help="eval: fine-tuning's evaluation speed alone, on models trained one step (minutes)")
    parser.add_argument("--gpu", action="store_true", help="one GPU: finetune, BERT-tiny and BERT-base pretraining "
                        "(fp32 and bf16, MFU), a one-process NCCL launch; under 8 minutes")
    parser.add_argument("--dry-run", action="store_true", help="with --gpu: the same sections on any device, seconds "
                        "each, to check the script before a GPU's time is spent")
    opts = parser.parse_args()
    if opts.gpu and not opts.dry_run and not torch.cuda.is_available():
        sys.exit("error: --gpu needs a CUDA GPU (add --dry-run to check the script on this machine)")
    mrpc, corpus = opts.data / "glue" / "mrpc", opts.data / "wikitext-2" / "wiki.valid.tokens"
    for path in (mrpc / "train.tsv", corpus):
        if not path.is_file():
            sys.exit(f"error: {path} not found; pass --data with glue/mrpc and wikitext-2 in it")
    work = Path(tempfile.mkdtemp(prefix="bigmodel-bench-"))
    opts.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after each section, so a long run that breaks keeps what it measured
        opts.out.write_text(json.dumps(report, indent=2) + "\n")

    if opts.gpu:
        report = {"mode": "gpu-dry-run" if opts.dry_run else "gpu"}
        gpu_sections(opts, mrpc, corpus, work, report, save)
        print(json.dumps(report, indent=2))
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
            "eval_samples_per_second_of_medians": ours["eval_samples_per_second"] / peer["eval_samples_per_second"]}}
        save()
    if opts.only in (None, "pretrain"):
        budget = 60.0 if opts.quick else 600.0
        with side_process(True) as side:
            ours = side.submit(_train, "pretrain_ours", corpus, work, budget, None).result()
        tokenizer_dir = work / "ours-pretrain"  # the tokenizer ours trained: both sides share it
        with side_process(False) as side:
            peer = side.submit(_train, "pretrain_peer", corpus, work, budget, tokenizer_dir).result()
        from bigmodel_cli.mlm.text import load_corpus
        from bigmodel_cli.recipe import load_recipe

        recipe, _ = load_recipe("pretrain", "pretrain/bert-tiny", overrides=[f"data.train_files=[{corpus}]"])
        held = list(load_corpus(recipe)["validation"]["text"])
        ours["perplexity"] = held_out_perplexity(work / "ours-pretrain", held, work)
        peer["perplexity"] = held_out_perplexity(work / "peer-pretrain", held, work)
        config = json.loads((work / "ours-pretrain" / "config.json").read_text())
        per_token = useful_flops_per_token(ours["model_parameters"], config["vocab_size"], config["hidden_size"])
        for side in (ours, peer):
            side["achieved_flops"] = per_token * side["train_tokens_per_second"]
            side["fraction_of_fp32_peak"] = side["achieved_flops"] / report["gemm_peak_flops"]["fp32"]
        report["pretrain"] = {"budget_seconds": budget, "peer": peer, "ours": ours, "ratio": {
            "train_tokens_per_second": ours["train_tokens_per_second"] / peer["train_tokens_per_second"],
            "perplexity": ours["perplexity"] / peer["perplexity"]}}
    save()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
