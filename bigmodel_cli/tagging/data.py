"""Tagged sentences for finetune, eval and predict: read, tags made IOB2, checked against the
training labels, and cut into model inputs.

Each word's label goes on its first sub-word (run_ner.py's default), the others get -100, or with
`data.label_all_tokens` the word's label too (a B- continuing as I-). A sentence longer than
`max_seq_length` becomes overlapping windows, cut at word edges, `stride` tokens shared between
neighbours: every word is in a window, and `merge` later takes each word's prediction from the
window where it has the most context on both sides.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.recipe import LabelledDataSection
from bigmodel_cli.tagging.reader import Sentence, read_sentences
from bigmodel_cli.tagging.schemes import detect_scheme, label_list, to_iob2
from bigmodel_cli.tagging.tasks import TagTask

IGNORED = -100  # the label of sub-words that are not scored (as torch's cross-entropy skips it)
FAR = 1 << 20  # the context of a word at a sentence's own edge: nothing more to see on that side


@dataclass
class Tagged:
    """One file's sentences, their tags in IOB2, and what reading them changed (for the header)."""
    path: Path
    sentences: list[Sentence]
    scheme: str
    repaired: int  # I- tags that started an entity, made B- (IOB1's rule)


def read_tagged(path: str | Path, what: str, tag_column: int = -1) -> Tagged:
    """A labelled file's sentences with IOB2 tags."""
    sentences = read_sentences(path, what, tag_column)
    scheme = detect_scheme(tag for s in sentences for tag in s.tags)
    if scheme == "mixed":
        bad = next((s.line, t) for s in sentences for t in s.tags if t != "O" and "-" not in t[:2])
        raise BigmodelError(f"{what} {path} line {bad[0]}: tag '{bad[1]}' has no B-/I- prefix while others do; "
                            "use one tag scheme per file")
    repaired = 0
    for sentence in sentences:
        sentence.tags, fixed = to_iob2(sentence.tags, scheme)
        repaired += fixed
    return Tagged(Path(path), sentences, scheme, repaired)


def reading_note(tagged: Tagged) -> str:
    """The header's word on how a file's tags were read."""
    scheme = {"iob": "IOB", "bioes": "BIOES/BILOU, converted to IOB2", "plain": "plain labels, converted to IOB2"}
    note = f"{tagged.path.name}: {len(tagged.sentences)} sentences, tags {scheme[tagged.scheme]}"
    if tagged.repaired:
        note += f", {tagged.repaired} I- without a B- before it read as B- (IOB1)"
    return note


def check_labels(tagged: Tagged, task: TagTask, what: str) -> None:
    """Every tag of a dev, test or eval file must be one the model knows: an unknown one is an error
    naming its line (mapping it to O would score a wrong figure silently)."""
    known = task.label2id
    for sentence in tagged.sentences:
        for tag in sentence.tags:
            if tag not in known:
                types = ", ".join(task.types)
                raise BigmodelError(f"{what} {tagged.path} line {sentence.line}: tag '{tag}' is not among the training "
                                    f"data's entity types ({types}); fix the tag or add the type to the training data")


def load_splits(data: LabelledDataSection) -> tuple[TagTask, dict[str, Tagged]]:
    """The task (labels from the training file) and the `train` and `validation` files."""
    if not data.train_file or not data.validation_file:
        raise BigmodelError("--task ner needs --train-file and --validation-file (CoNLL or JSON Lines)")
    splits = {"train": read_tagged(data.train_file, "data.train_file", data.tag_column),
              "validation": read_tagged(data.validation_file, "data.validation_file", data.tag_column)}
    task = TagTask(tuple(label_list(t for s in splits["train"].sentences for t in s.tags)))
    check_labels(splits["validation"], task, "data.validation_file")
    for name, limit in (("train", data.max_train_samples), ("validation", data.max_eval_samples)):
        if limit:
            splits[name].sentences = splits[name].sentences[:limit]
    return task, splits


def special_template(tokenizer) -> tuple[list[int], list[int], int]:
    """(ids before a sentence's tokens, ids after them, their token type): the tokenizer's own
    template, read off one encoded word ([CLS] ... [SEP] for BERT, <s> ... </s> for RoBERTa)."""
    sample = tokenizer(["a"], is_split_into_words=True)
    words = sample.word_ids()
    first = words.index(0)
    last = len(words) - 1 - words[::-1].index(0)
    types = sample.get("token_type_ids", [0] * len(words))
    return sample["input_ids"][:first], sample["input_ids"][last + 1:], types[first]


def windows(word_ids: list[int], room: int, stride: int) -> list[tuple[int, int]]:
    """Token spans of at most `room` tokens covering a sentence, cut at word edges where a word
    fits, each sharing about `stride` tokens with the one before."""
    n = len(word_ids)
    if n <= room:
        return [(0, n)]
    starts = {i for i in range(n) if i == 0 or word_ids[i] != word_ids[i - 1]}

    def edge(at: int, above: int) -> int:  # the last word start at or before `at`, if above `above`
        back = at
        while back > above and back not in starts:
            back -= 1
        return back if back > above else at

    spans, start = [], 0
    while True:
        end = min(start + room, n)
        if end < n:
            end = edge(end, start)
        spans.append((start, end))
        if end == n:
            return spans
        start = max(edge(end - stride, start), start + 1)


def encode(sentences: list[Sentence], tokenizer, max_length: int, stride: int, label2id: dict[str, int] | None = None,
           label_all_tokens: bool = False) -> dict[str, list]:
    """Sentences -> windows as columns: `input_ids`, `token_type_ids`, `attention_mask`, `labels`
    (where `label2id` is given and the sentences are tagged), `length`, and for merging predictions
    `sentence` (its index), `word_index` (per token: the word whose first sub-word it is in this
    window, else -1) and `context` (per token: tokens of context on its narrower side)."""
    before, after, type_id = special_template(tokenizer)
    room = max_length - len(before) - len(after)
    if stride >= room // 2 + 1:
        raise BigmodelError(f"data.stride {stride} is too large for data.max_seq_length {max_length}; "
                            f"use at most {room // 2}")
    columns = {k: [] for k in ("input_ids", "token_type_ids", "attention_mask", "length", "sentence", "word_index",
                               "context")}
    labelled = label2id is not None and all(s.tags is not None for s in sentences)
    if labelled:
        columns["labels"] = []
        later = continuing(label2id) if label_all_tokens else None
    for chunk in range(0, len(sentences), 1000):
        part = sentences[chunk:chunk + 1000]
        encoded = tokenizer([s.words for s in part], is_split_into_words=True, add_special_tokens=False)
        for offset, sentence in enumerate(part):
            ids = encoded["input_ids"][offset]
            words = [-1 if w is None else w for w in encoded.word_ids(offset)]
            firsts = [i == 0 or words[i] != words[i - 1] for i in range(len(words))]
            tag_ids = [label2id[t] for t in sentence.tags] if labelled else None
            for start, end in windows(words, room, stride):
                span = range(start, end)
                index = [words[i] if firsts[i] else -1 for i in span]
                left = [i - start + (FAR if start == 0 else 0) for i in span]
                right = [end - 1 - i + (FAR if end == len(ids) else 0) for i in span]
                pad_before, pad_after = [-1] * len(before), [-1] * len(after)
                columns["input_ids"].append(before + ids[start:end] + after)
                columns["token_type_ids"].append([type_id] * (len(before) + end - start + len(after)))
                columns["attention_mask"].append([1] * len(columns["input_ids"][-1]))
                columns["length"].append(len(columns["input_ids"][-1]))
                columns["sentence"].append(chunk + offset)
                columns["word_index"].append(pad_before + index + pad_after)
                columns["context"].append(pad_before + [min(a, b) for a, b in zip(left, right)] + pad_after)
                if labelled:
                    labels = [tag_ids[words[i]] if firsts[i] else later[tag_ids[words[i]]] if later else IGNORED
                              for i in span]
                    columns["labels"].append([IGNORED] * len(before) + labels + [IGNORED] * len(after))
    return columns


def continuing(label2id: dict[str, int]) -> list[int]:
    """Per label id, the label of a word's later sub-words under `label_all_tokens`: a B- continues as
    its I-, any other label as itself."""
    return [label2id.get(f"I-{name[2:]}", i) if name.startswith("B-") else i for name, i in label2id.items()]


def model_inputs(columns: dict[str, list], tokenizer) -> dict[str, list]:
    """The windows' columns the model takes (`input_ids`, and the tokenizer's others that `encode` makes)."""
    return {k: columns[k] for k in ("input_ids", "token_type_ids", "attention_mask")
            if k in tokenizer.model_input_names or k == "input_ids"}


def merge(columns: dict[str, list], logits: list[np.ndarray], sentences: list[Sentence]) -> list[np.ndarray]:
    """Per sentence, per word, the probabilities from the window where the word has the most
    context (a word no window holds, one its tokenizer made nothing of, gets O: probability 1)."""
    labels = logits[0].shape[-1] if logits else 1
    out = []
    for s in sentences:
        empty = np.zeros((len(s.words), labels), dtype=np.float32)
        empty[:, 0] = 1.0
        out.append(empty)
    best = [np.full(len(s.words), -1, dtype=np.int64) for s in sentences]
    for row, scores in enumerate(logits):
        sentence = columns["sentence"][row]
        index = np.asarray(columns["word_index"][row])
        context = np.asarray(columns["context"][row])
        at = np.nonzero(index >= 0)[0]
        words = index[at]
        better = context[at] > best[sentence][words]
        at, words = at[better], words[better]
        shifted = scores[at] - scores[at].max(axis=-1, keepdims=True)
        probabilities = np.exp(shifted)
        out[sentence][words] = probabilities / probabilities.sum(axis=-1, keepdims=True)
        best[sentence][words] = context[at]
    return out


def training_dataset(columns: dict[str, list]):
    """The model's columns of the windows as a `datasets.Dataset` for Trainer (with `length` for
    length-grouped batches)."""
    from datasets import Dataset

    keep = ("input_ids", "token_type_ids", "attention_mask", "labels", "length")
    return Dataset.from_dict({k: columns[k] for k in keep if k in columns})
