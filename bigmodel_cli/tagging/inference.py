"""Running a tagger: per-word predictions merged from the windows, their scores, and entities with
character offsets for `bigmodel predict`.

`evaluate_tagger` is what finetune writes in `metrics.json` and what `bigmodel eval` prints: one
path, so evaluating a run reproduces its dev figures. Batches are `classification.inference`'s
(length-sorted, padded in numpy, side by side on a CPU's cores).
"""

from __future__ import annotations

import numpy as np

from bigmodel_cli.classification.inference import as_rows, spread_logits
from bigmodel_cli.tagging.data import encode, merge, model_inputs
from bigmodel_cli.tagging.metrics import tag_scores
from bigmodel_cli.tagging.reader import Sentence
from bigmodel_cli.tagging.schemes import entities, to_iob2
from bigmodel_cli.tagging.tasks import TagTask


def word_probabilities(model, tokenizer, sentences: list[Sentence], max_length: int, stride: int,
                       batch_size: int = 32, progress: bool = False, bf16: bool = False) -> list[np.ndarray]:
    """Per sentence, a (words, labels) array of probabilities; the windows dealt out over a
    launch's processes (`spread_logits`), every process given all the sentences' figures."""
    columns = encode(sentences, tokenizer, max_length, stride)
    rows = as_rows(model_inputs(columns, tokenizer))
    logits = spread_logits(model, tokenizer, rows, batch_size, progress, per_token=True, bf16=bf16)[0] if rows else []
    return merge(columns, logits, sentences)


def evaluate_tagger(model, tokenizer, sentences: list[Sentence], task: TagTask, max_length: int, stride: int,
                    batch_size: int = 32, progress: bool = False, bf16: bool = False) -> dict:
    """`eval_` precision, recall, F1 (entities, strict IOB2), accuracy (words), F1 per type; in
    bfloat16 autocast for a run that trained in it."""
    probabilities = word_probabilities(model, tokenizer, sentences, max_length, stride, batch_size, progress, bf16)
    names = task.label_names
    predicted = [[names[i] for i in p.argmax(axis=-1)] for p in probabilities]
    scores = tag_scores([s.tags for s in sentences], predicted)
    return {f"eval_{k}": v for k, v in scores.items()}


def found_entities(sentence: Sentence, probabilities: np.ndarray, names: tuple[str, ...]) -> list[dict]:
    """The entities of one sentence as `pipeline(aggregation_strategy="simple")` gives them:
    `entity_group`, `score` (the mean of its words' probabilities), `word`, `start`, `end` (characters
    of the sentence's text; a sentence given as words is read as those words joined by spaces).
    Predicted tags are read as IOB1 would (an I- after O starts an entity)."""
    tags, _ = to_iob2([names[i] for i in probabilities.argmax(axis=-1)], "iob")
    text, offsets = sentence.text, sentence.offsets
    if text is None:
        text, offsets, at = " ".join(sentence.words), [], 0
        for word in sentence.words:
            offsets.append((at, at + len(word)))
            at += len(word) + 1
    found = []
    for kind, first, end in entities(tags):
        score = float(probabilities[np.arange(first, end), probabilities[first:end].argmax(axis=-1)].mean())
        start, stop = offsets[first][0], offsets[end - 1][1]
        found.append({"entity_group": kind, "score": round(score, 4), "word": text[start:stop],
                      "start": start, "end": stop})
    return found


def entity_records(model, tokenizer, sentences: list[Sentence], names: tuple[str, ...], max_length: int, stride: int,
                   batch_size: int = 32, bf16: bool = False):
    """One JSON-ready record per sentence: its `text` (or `tokens`) and `entities`."""
    probabilities = word_probabilities(model, tokenizer, sentences, max_length, stride, batch_size, bf16=bf16)
    for sentence, p in zip(sentences, probabilities):
        source = {"text": sentence.text} if sentence.text is not None else {"tokens": sentence.words}
        yield {**source, "entities": found_entities(sentence, p, names)}


def write_entities(model, tokenizer, sentences: list[Sentence], task: TagTask, output: str | None, max_length: int,
                   stride: int, batch_size: int = 32, bf16: bool = False) -> int:
    """Entities of `sentences` as JSON lines in `output` (stdout when None), in chunks; returns the count."""
    import json

    from bigmodel_cli.classification.inference import sink

    with sink(output) as out:
        for start in range(0, len(sentences), CHUNK):
            for record in entity_records(model, tokenizer, sentences[start:start + CHUNK], task.label_names,
                                         max_length, stride, batch_size, bf16):
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
    return len(sentences)


CHUNK = 2048  # sentences run at a time when predicting a file
