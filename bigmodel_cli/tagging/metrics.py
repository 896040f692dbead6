"""Scores of predicted tags: entity-level precision, recall and F1 by seqeval in strict IOB2 mode
(the CoNLL standard: an entity counts when its type and both its edges are right), per entity type
too, and word-level accuracy."""

from __future__ import annotations


def tag_scores(gold: list[list[str]], predicted: list[list[str]]) -> dict:
    """`precision`, `recall`, `f1` (micro over entities), `accuracy` (words), and per type
    `f1_TYPE` with `per_type` ({type: {precision, recall, f1, support}}) for reports."""
    import warnings

    from seqeval.metrics import accuracy_score, classification_report
    from seqeval.scheme import IOB2

    with warnings.catch_warnings():  # no entity at all: numpy warns of empty means; the figures are 0
        warnings.simplefilter("ignore", RuntimeWarning)
        report = classification_report(gold, predicted, mode="strict", scheme=IOB2, output_dict=True, zero_division=0)
    micro = report.pop("micro avg")
    for key in ("macro avg", "weighted avg"):
        report.pop(key, None)
    per_type = {kind: {k: float(v) for k, v in figures.items()} for kind, figures in sorted(report.items())}
    scores = {
        "precision": float(micro["precision"]),
        "recall": float(micro["recall"]),
        "f1": float(micro["f1-score"]),
        "accuracy": float(accuracy_score(gold, predicted)),
        "entities": int(micro["support"]),
        "per_type": {kind: {"precision": f["precision"], "recall": f["recall"], "f1": f["f1-score"],
                            "support": int(f["support"])} for kind, f in per_type.items()},
    }
    scores.update({f"f1_{kind}": figures["f1"] for kind, figures in scores["per_type"].items()})
    return scores
