"""What a tagging task means: its labels (IOB2, `O` first) and the metric that picks the best epoch.
A saved tagger carries its task in its config (`finetuning_task: ner`, `id2label`)."""

from __future__ import annotations

from dataclasses import dataclass

NAME = "ner"


@dataclass(frozen=True)
class TagTask:
    label_names: tuple[str, ...]  # IOB2 labels in id order, O first
    name: str = NAME
    best_metric: str = "f1"  # entity-level F1 (seqeval, strict IOB2)

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.label_names)}

    @property
    def types(self) -> list[str]:
        return sorted({name[2:] for name in self.label_names if name != "O"})


def is_tagger(config) -> bool:
    """Whether a saved model's config is a token classifier's."""
    return getattr(config, "finetuning_task", None) == NAME or any(
        a.endswith("ForTokenClassification") for a in (getattr(config, "architectures", None) or []))


def task_from_model(config) -> TagTask:
    return TagTask(tuple(config.id2label[i] for i in range(config.num_labels)))
