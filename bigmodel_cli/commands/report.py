"""`bigmodel report`: plots and a Markdown summary of one or more run directories.

Reads what every run leaves behind (`trainer_state.json`'s log history, `metrics.json`) and writes
`training_loss.png`, `learning_rate.png`, `eval_metrics.png`, `confusion_matrix.png` (classifiers),
`entity_f1_RUN.png` (taggers: scores per entity type), `probe.png` (pretraining's downstream probe)
and `report.md` (one table comparing the runs).
"""

from __future__ import annotations

import json
from pathlib import Path

from bigmodel_cli.console import shown
from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.rundir import METRICS_FILE


def load_run(run_dir: Path) -> dict:
    metrics_path, state_path = run_dir / METRICS_FILE, run_dir / "trainer_state.json"
    if not metrics_path.is_file():
        raise BigmodelError(f"{run_dir} holds no metrics.json: is it a finished bigmodel run?")
    history = json.loads(state_path.read_text())["log_history"] if state_path.is_file() else []
    return {"name": run_dir.name, "dir": run_dir, "metrics": json.loads(metrics_path.read_text()), "history": history}


def _series(history: list[dict], key: str) -> tuple[list[float], list[float]]:
    rows = [e for e in history if key in e and isinstance(e[key], (int, float))]
    return [e["step"] for e in rows], [e[key] for e in rows]


def _plot(runs: list[dict], key: str, title: str, path: Path, ylabel: str) -> bool:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    drawn = False
    for run in runs:
        steps, values = _series(run["history"], key)
        if steps:
            ax.plot(steps, values, marker="o" if len(steps) < 30 else None, label=run["name"])
            drawn = True
    if drawn:
        ax.set(title=title, xlabel="optimizer step", ylabel=ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return drawn


def _probe(runs: list[dict], path: Path) -> bool:
    """Pretraining's downstream probe (`training.probe`): its dev accuracy and F1 over the steps of each run,
    against the accuracy of always answering the majority class (dashed)."""
    import matplotlib.pyplot as plt

    probed = [run for run in runs if _series(run["history"], "probe_accuracy")[0]]
    if not probed:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    for run in probed:
        steps, accuracy = _series(run["history"], "probe_accuracy")
        line, = ax.plot(steps, accuracy, marker="o" if len(steps) < 30 else None, label=f"{run['name']}: accuracy")
        ax.plot(*_series(run["history"], "probe_f1"), linestyle=":", color=line.get_color(), label=f"{run['name']}: F1")
        _, majority = _series(run["history"], "probe_majority")
        if majority:
            ax.axhline(majority[-1], linestyle="--", color=line.get_color(), alpha=0.6,
                       label=f"{run['name']}: majority class {majority[-1]:.3f}")
    ax.set(title="downstream probe: linear classifier on frozen features (dev)", xlabel="optimizer step",
           ylabel="score")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return True


def _confusion(run: dict, path: Path) -> bool:
    import matplotlib.pyplot as plt

    matrix = run["metrics"].get("eval_confusion_matrix")
    if not matrix:
        return False
    labels = run["metrics"].get("eval_label_names") or [str(i) for i in range(len(matrix))]
    fig, ax = plt.subplots(figsize=(4 + len(labels) * 0.4, 3.5 + len(labels) * 0.4))
    ax.imshow(matrix, cmap="Blues")
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            ax.text(j, i, str(count), ha="center", va="center")
    ax.set(xticks=range(len(labels)), yticks=range(len(labels)), xticklabels=labels, yticklabels=labels,
           xlabel="predicted", ylabel="true", title=f"{run['name']}: dev confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return True


def _entity_f1(run: dict, path: Path) -> bool:
    """A tagger's dev precision, recall and F1 per entity type, with each type's count, as bars."""
    import matplotlib.pyplot as plt
    import numpy as np

    per_type = run["metrics"].get("eval_per_type")
    if not per_type:
        return False
    kinds = list(per_type)
    at = np.arange(len(kinds))
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(kinds) + 2), 4))
    for shift, key in ((-0.27, "precision"), (0, "recall"), (0.27, "f1")):
        ax.bar(at + shift, [per_type[k][key] for k in kinds], width=0.27, label=key)
    ax.set(xticks=at, xticklabels=[f"{k}\n({per_type[k]['support']})" for k in kinds], ylim=(0, 1),
           title=f"{run['name']}: dev entity scores per type (entities in dev)", ylabel="score")
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return True


def run(run_dirs: list[Path], output: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    runs = [load_run(Path(d)) for d in run_dirs]
    output.mkdir(parents=True, exist_ok=True)
    written = []
    eval_keys = sorted({k for r in runs for e in r["history"] for k in e
                        if k.startswith("eval_") and not k.endswith(("runtime", "per_second", "masked_tokens"))})
    plots = [("loss", "training loss", "training_loss.png", "loss"),
             ("learning_rate", "learning rate", "learning_rate.png", "learning rate"),
             ("tokens_per_second", "training speed (since the log before)", "training_speed.png", "real tokens/s"),
             ("model_flops_utilization", "model FLOP utilisation", "model_flops_utilization.png", "MFU")]
    plots += [(k, k.removeprefix("eval_"), f"{k}.png", k.removeprefix("eval_")) for k in eval_keys]
    for key, title, name, ylabel in plots:
        if _plot(runs, key, title, output / name, ylabel):
            written.append(output / name)
    if _probe(runs, output / "probe.png"):
        written.append(output / "probe.png")
    for r in runs:
        if _confusion(r, output / f"confusion_matrix_{r['name']}.png"):
            written.append(output / f"confusion_matrix_{r['name']}.png")
        if _entity_f1(r, output / f"entity_f1_{r['name']}.png"):
            written.append(output / f"entity_f1_{r['name']}.png")
    keys = sorted({k for r in runs for k, v in r["metrics"].items() if isinstance(v, (int, float))
                   and (k.startswith(("eval_", "probe_")) or k in ("perplexity", "train_runtime", "train_samples_per_second",
                                                       "train_tokens_per_second", "train_loss"))})
    lines = ["# bigmodel report", "", "| metric | " + " | ".join(r["name"] for r in runs) + " |",
             "| --- |" + " --- |" * len(runs)]
    for key in keys:
        cells = [r["metrics"].get(key) for r in runs]
        lines.append(f"| {key} | " + " | ".join("" if c is None else shown(c)
                                               for c in cells) + " |")
    lines += ["", *[f"![{p.stem}]({p.name})" for p in written]]
    (output / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [*written, output / "report.md"]
