"""`bigmodel pretrain` on big corpora against a run_mlm.py-style peer: phases, memory, cache disk.

    python benchmarks/scale.py --data ../shared/data --out bench-results/scale.json [--sizes 100M,1G,4G]

For each size, a corpus is written to a temporary folder from WikiText-2's lines (shuffled repeats,
seeded) and trained on for 20 steps (BERT-tiny, the `pretrain/bert-tiny` recipe) by three runs, one
after another, each a process of its own, its whole process tree sampled for memory every 0.2 s:
- ours, first: `bigmodel pretrain` with an empty cache (tokenizer training, tokenizing, packing);
- ours, again: the same command in another run folder (the tokenizer and the rows from the cache);
- peer: run_mlm.py's `--line_by_line` path, given our trained tokenizer: `load_dataset("text")`,
  `datasets.map` tokenization (truncated to 128, blank lines dropped, as many processes as ours),
  `DataCollatorForLanguageModeling`, `Trainer`.
Recorded: wall seconds, seconds per phase (reading, tokenizer training, tokenizing, packing, to the
first step), peak RSS of the largest process and of all together, peak anonymous RSS (memory not
backed by a file: the memory-mapped corpus counts in RSS but the kernel can drop it), what the
largest process's RSS held at its peak (anonymous memory, Arrow maps, other files), the disk the
caches use, and training tokens/s over the 20 steps.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STEPS = 20
UNITS = {"K": 1e3, "M": 1e6, "G": 1e9}


def size_bytes(text: str) -> int:
    return int(float(text[:-1]) * UNITS[text[-1].upper()]) if text[-1].upper() in UNITS else int(text)


def write_corpus(source: Path, target: int, path: Path, seed: int = 0) -> int:
    """WikiText-2's lines, shuffled and repeated until the file holds `target` bytes."""
    lines = [line for line in source.read_text(encoding="utf-8").splitlines(keepends=True) if line.strip()]
    rng, written = random.Random(seed), 0
    with path.open("w", encoding="utf-8") as f:
        while written < target:
            rng.shuffle(lines)
            block = "".join(lines)
            f.write(block)
            written += len(block.encode())
    return written


class TreeMemory:
    """Samples a process and its descendants: peak RSS of the largest, of all together, and peak
    anonymous RSS together (from /proc/PID/status); and the peak PSS of all together (from
    /proc/PID/smaps_rollup: each shared page counted once, split between the processes that share
    it, where summed RSS counts the pages forked workers share with their parent once per process).
    Each time the largest process reaches a new peak (at most once a second), what its RSS holds
    (/proc/PID/smaps): anonymous memory, pages of memory-mapped Arrow files, pages of other files
    (libraries), and when, in seconds from the start."""

    def __init__(self, pid: int, every: float = 0.2):
        self.pid, self.every = pid, every
        self.largest = self.total = self.anon = self.pss = self.pss_anon = 0
        self.processes = 0
        self.start, self.at_peak, self._broken_down = time.perf_counter(), {}, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        root = psutil.Process(self.pid)
        while not self._stop.is_set():
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            rss, anon, pss, pss_anon = [], 0, 0, 0
            for p in tree:
                status = read_status(p.pid)
                if status:
                    now = time.perf_counter()
                    if status.get("VmRSS", 0) > self.largest and now - self._broken_down >= 1.0:
                        self._broken_down = now
                        self.at_peak = {**resident_parts(p.pid), "seconds": round(now - self.start, 1)}
                    rss.append(status.get("VmRSS", 0))
                    anon += status.get("RssAnon", 0)
                    pss += status.get("Pss", 0)
                    pss_anon += status.get("Pss_Anon", 0)
            if rss:
                self.largest, self.total = max(self.largest, max(rss)), max(self.total, sum(rss))
                self.anon, self.processes = max(self.anon, anon), max(self.processes, len(rss))
                self.pss, self.pss_anon = max(self.pss, pss), max(self.pss_anon, pss_anon)
            time.sleep(self.every)

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        gb = 1024 ** 2  # /proc reports kB
        return {"peak_rss_gb_largest_process": round(self.largest / gb, 3), "peak_rss_gb_all": round(self.total / gb, 3),
                "peak_anon_rss_gb_all": round(self.anon / gb, 3), "peak_pss_gb_all": round(self.pss / gb, 3),
                "peak_anon_pss_gb_all": round(self.pss_anon / gb, 3), "processes": self.processes,
                "largest_process_at_peak": self.at_peak}


def resident_parts(pid: int) -> dict[str, float]:
    """A process's RSS in GB by what holds it (/proc/PID/smaps): anonymous memory (heap, tensors,
    copies on write), pages of memory-mapped `.arrow` files, pages of other files (libraries)."""
    parts, name = {"anon_gb": 0, "arrow_files_gb": 0, "other_files_gb": 0}, ""
    try:
        lines = Path(f"/proc/{pid}/smaps").read_text().splitlines()
    except OSError:
        return {}
    rss = 0
    for line in lines:
        fields = line.split()
        if not fields:
            continue
        if not fields[0].endswith(":"):  # a mapping's first line: range, perms, offset, dev, inode[, path]
            name = fields[5] if len(fields) > 5 else ""
        elif fields[0] == "Rss:":
            rss = int(fields[1])
        elif fields[0] == "Anonymous:":
            anon = int(fields[1])
            parts["anon_gb"] += anon
            if name.startswith("/"):
                parts["arrow_files_gb" if name.endswith(".arrow") else "other_files_gb"] += rss - anon
    return {key: round(kb / 1024 ** 2, 3) for key, kb in parts.items()}


def read_status(pid: int) -> dict[str, int]:
    """VmRSS and RssAnon (/proc/PID/status), Pss and Pss_Anon (/proc/PID/smaps_rollup), in kB."""
    out = {}
    for name, keys in (("status", ("VmRSS", "RssAnon")), ("smaps_rollup", ("Pss", "Pss_Anon"))):
        try:
            text = Path(f"/proc/{pid}/{name}").read_text()
        except OSError:
            return out
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key in keys:
                out[key] = int(value.split()[0])
    return out


def disk_gb(*folders: Path) -> float:
    total = sum(p.stat().st_size for folder in folders if folder.exists() for p in folder.rglob("*") if p.is_file())
    return round(total / 1e9, 3)


def measured(argv: list[str], env: dict, log: Path) -> dict:
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        memory = TreeMemory(proc.pid)
        code = proc.wait()
    figures = {"wall_seconds": round(time.perf_counter() - start, 2), **memory.stop()}
    if code != 0:
        raise SystemExit(f"{argv[:3]} exited {code}; see {log}:\n{log.read_text()[-2000:]}")
    return figures


def ours(corpus: Path, work: Path, name: str, env: dict) -> dict:
    run_dir = work / name
    argv = [sys.executable, "-m", "bigmodel_cli", "pretrain", "-r", "pretrain/bert-tiny", "-o", str(run_dir), "-q",
            "--set", f"data.train_files=[{corpus}]", "--set", f"training.max_steps={STEPS}",
            "--set", "training.report_to=[none]", "--set", "training.save_strategy=no",
            "--set", "training.eval_strategy=no", "--set", "data.max_eval_samples=2000"]
    figures = measured(argv, env, work / f"{name}.log")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    figures.update({k: v for k, v in metrics.items() if k.startswith("prepare_") or k == "first_step_seconds"})
    figures["train_tokens_per_second"] = metrics["train_tokens_per_second"]
    figures["train_lines"] = metrics["train_samples"]
    return figures


def peer(corpus: Path, work: Path, tokenizer: Path, env: dict) -> dict:
    out = work / "peer.json"
    argv = [sys.executable, str(Path(__file__).resolve()), "--peer", str(corpus), str(tokenizer), str(out)]
    figures = measured(argv, env, work / "peer.log")
    figures.update(json.loads(out.read_text()))
    return figures


def run_peer(corpus: Path, tokenizer_dir: Path, out: Path) -> None:
    """run_mlm.py --line_by_line, as it runs: its own process, timed phase by phase."""
    import psutil
    import torch
    from datasets import load_dataset
    from transformers import AutoTokenizer, BertForMaskedLM, DataCollatorForLanguageModeling, Trainer, TrainerCallback

    from bigmodel_cli.mlm.configs import bert_config
    from bigmodel_cli.recipe import load_recipe
    from bigmodel_cli.trainer.arguments import training_arguments

    started = psutil.Process().create_time()
    figures = {}
    t = time.perf_counter()
    raw = load_dataset("text", data_files={"train": [str(corpus)]})
    raw["validation"] = load_dataset("text", data_files={"train": [str(corpus)]}, split="train[:5%]")
    raw["train"] = load_dataset("text", data_files={"train": [str(corpus)]}, split="train[5%:]")
    figures["prepare_read_seconds"] = round(time.perf_counter() - t, 3)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))

    def tokenize(examples):  # run_mlm.py's tokenize_function, line by line
        examples["text"] = [line for line in examples["text"] if len(line) > 0 and not line.isspace()]
        return tokenizer(examples["text"], padding=False, truncation=True, max_length=128,
                         return_special_tokens_mask=True)

    t = time.perf_counter()
    data = raw.map(tokenize, batched=True, num_proc=os.cpu_count(), remove_columns=["text"],
                   desc="Running tokenizer on dataset line_by_line")
    figures["prepare_tokenize_seconds"] = round(time.perf_counter() - t, 3)
    recipe, _ = load_recipe("pretrain", "pretrain/bert-tiny", overrides=[
        f"data.train_files=[{corpus}]", f"training.max_steps={STEPS}", "training.report_to=[none]",
        "training.save_strategy=no", "training.eval_strategy=no"])
    torch.manual_seed(42)
    model = BertForMaskedLM(bert_config(recipe, tokenizer))
    args = training_arguments(recipe.training, out.parent / "peer-run", quiet=True, eval_strategy="no")

    class FirstStep(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            figures.setdefault("first_step_seconds", round(time.time() - started, 3))

    trainer = Trainer(model=model, args=args, train_dataset=data["train"], callbacks=[FirstStep()],
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15))
    result = trainer.train()
    # run_mlm.py reports samples/s; its rows' mean length (a sample of them: the order is random) makes tokens/s
    lengths = [len(ids) for ids in data["train"].select(range(min(len(data["train"]), 10_000)))["input_ids"]]
    figures["train_tokens_per_second"] = round(sum(lengths) / len(lengths) * result.metrics["train_samples_per_second"], 1)
    figures["train_lines"] = len(data["train"])
    out.write_text(json.dumps(figures))


def one_size(label: str, source: Path, work: Path) -> dict:
    corpus = work / f"corpus-{label}.txt"
    written = write_corpus(source, size_bytes(label), corpus)
    cache, hf = work / "cache", work / "hf-datasets"
    env = {**os.environ, "BIGMODEL_CACHE": str(cache), "HF_DATASETS_CACHE": str(hf), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = {"corpus_bytes": written}
    result["ours_first"] = ours(corpus, work, "ours-first", env)
    result["ours_first"]["cache_disk_gb"] = disk_gb(cache)
    result["ours_first"]["datasets_cache_disk_gb"] = disk_gb(hf)
    result["ours_again"] = ours(corpus, work, "ours-again", env)
    shutil.rmtree(hf, ignore_errors=True)  # the peer's text is read anew, as on its first run
    peer_env = {**env, "HF_DATASETS_CACHE": str(work / "hf-peer")}
    result["peer"] = peer(corpus, work, work / "ours-first", peer_env)
    result["peer"]["datasets_cache_disk_gb"] = disk_gb(work / "hf-peer")
    first, again, other = result["ours_first"], result["ours_again"], result["peer"]
    result["ratios"] = {
        "first_step_peer_over_ours_first": round(other["first_step_seconds"] / first["first_step_seconds"], 2),
        "first_step_ours_first_over_again": round(first["first_step_seconds"] / again["first_step_seconds"], 2),
        "first_step_target_met": first["first_step_seconds"] <= other["first_step_seconds"] + first["prepare_tokenizer_seconds"],
        "train_tokens_per_second_ours_over_peer": round(first["train_tokens_per_second"] / other["train_tokens_per_second"], 2),
    }
    corpus.unlink()
    for folder in ("cache", "hf-peer", "ours-first", "ours-again", "peer-run"):
        shutil.rmtree(work / folder, ignore_errors=True)
    return result


def table(report: dict) -> str:
    rows = ["| corpus | run | first step s | read / tokenizer / tokenize / pack s | wall s | peak RSS GB (largest, all, anon) "
            "| peak PSS GB (all, anon) | largest at its peak: anon, Arrow maps, other files GB (s) | cache GB |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for label, result in report["sizes"].items():
        for run in ("ours_first", "ours_again", "peer"):
            f = result[run]
            phases = " / ".join(str(round(f.get(f"prepare_{p}_seconds", 0), 1)) for p in ("read", "tokenizer", "tokenize", "pack"))
            disk = f.get("cache_disk_gb", 0) + f.get("datasets_cache_disk_gb", 0)
            at = f.get("largest_process_at_peak") or {}
            parts = (f"{at['anon_gb']:.2f}, {at['arrow_files_gb']:.2f}, {at['other_files_gb']:.2f} ({at['seconds']:.0f})"
                     if "anon_gb" in at else "")
            rows.append(f"| {label} | {run} | {f['first_step_seconds']:.1f} | {phases} | {f['wall_seconds']:.0f} | "
                        f"{f['peak_rss_gb_largest_process']:.2f}, {f['peak_rss_gb_all']:.2f}, {f['peak_anon_rss_gb_all']:.2f} | "
                        f"{f.get('peak_pss_gb_all', 0):.2f}, {f.get('peak_anon_pss_gb_all', 0):.2f} | {parts} | {disk:.2f} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "scale.json")
    parser.add_argument("--sizes", default="100M,1G,4G", help="corpus sizes, e.g. 100M,1G,4G")
    parser.add_argument("--work", type=Path, default=None, help="where the corpora are written (default: a temp folder)")
    parser.add_argument("--peer", nargs=3, metavar=("CORPUS", "TOKENIZER", "OUT"), help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.peer:
        return run_peer(Path(opts.peer[0]), Path(opts.peer[1]), Path(opts.peer[2]))
    source = opts.data / "wikitext-2" / "wiki.valid.tokens"
    report = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, "steps": STEPS, "sizes": {}}
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=opts.work) as tmp:
        for label in opts.sizes.split(","):
            work = Path(tmp) / label
            work.mkdir()
            report["sizes"][label] = one_size(label, source, work)
            opts.out.write_text(json.dumps(report, indent=2))  # after each size: a long run that breaks keeps what it measured
            print(table({"sizes": {label: report["sizes"][label]}}).splitlines()[-3:], flush=True)
    sizes = list(report["sizes"].values())
    report["flat"] = {}
    for key in ("peak_rss_gb_largest_process", "peak_pss_gb_all", "peak_anon_rss_gb_all"):  # ours, first run, by size
        figures = [s["ours_first"][key] for s in sizes]
        report["flat"][key] = {"by_size": figures, "largest_over_smallest": round(max(figures) / min(figures), 2)}
    opts.out.write_text(json.dumps(report, indent=2))
    print(table(report))


if __name__ == "__main__":
    main()
