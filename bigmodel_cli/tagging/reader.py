"""Reading tagged sentences: CoNLL files, JSON Lines of `tokens` and `tags`, JSON Lines of `text` and
character-span `entities`; and plain text, split into words, for prediction.

Every reader returns `Sentence`s with the file's line that each starts on, so that every error
names its file and line. A file is one format: a JSON line in a CoNLL file (or the other way round)
is an error, not a guess.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.files import check_text_file

WORD = re.compile(r"\w+(?:['’-]\w+)*|[^\w\s]")  # words (with inner hyphens and apostrophes), and each other sign


@dataclass
class Sentence:
    words: list[str]
    tags: list[str] | None  # None: unlabelled (text to predict)
    line: int  # the line of the file it starts on
    text: str | None = None  # the original text, where the words came from one
    offsets: list[tuple[int, int]] | None = None  # each word's characters in `text`


def split_words(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """Text -> words and their character offsets: runs of letters and digits (with inner hyphens
    and apostrophes), and every other sign on its own."""
    found = [(m.group(), m.span()) for m in WORD.finditer(text)]
    return [w for w, _ in found], [s for _, s in found]


def text_sentence(text: str, line: int) -> Sentence:
    """A text to tag, split into words that keep their character offsets in it."""
    words, offsets = split_words(text)
    return Sentence(words, None, line, text, offsets)


def file_format(path: Path) -> str:
    """`jsonl` where the first non-blank line is a JSON object, else `conll`."""
    with path.open(encoding="utf-8-sig") as f:
        for line in f:
            if line.strip():
                return "jsonl" if line.lstrip().startswith("{") else "conll"
    return "conll"


def read_sentences(path: str | Path, what: str = "data file", tag_column: int = -1, labelled: bool = True) -> list[Sentence]:
    """The sentences of a CoNLL or JSON Lines file (checked: not empty, UTF-8, one format, every
    word tagged where `labelled`)."""
    path = check_text_file(path, what)
    kind = file_format(path)
    sentences = read_jsonl(path, what, labelled) if kind == "jsonl" else read_conll(path, what, tag_column, labelled)
    if not sentences:
        raise BigmodelError(f"{what} {path} has no sentences")
    return sentences


def read_conll(path: Path, what: str, tag_column: int, labelled: bool) -> list[Sentence]:
    """A word per line, its columns split by tabs or spaces, the tag in `tag_column` (-1: the last);
    a blank line ends a sentence; `-DOCSTART-` lines are skipped."""
    sentences, words, tags, first = [], [], [], 0

    def close() -> None:
        nonlocal words, tags
        if words:
            sentences.append(Sentence(words, tags if labelled else None, first))
        words, tags = [], []

    with path.open(encoding="utf-8-sig") as f:
        for number, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                close()
                continue
            if fields[0] == "-DOCSTART-":
                close()
                continue
            if line.lstrip().startswith("{") and line.rstrip().endswith("}"):
                raise BigmodelError(f"{what} {path} line {number}: a JSON line in a CoNLL file; "
                                    "keep one format per file")
            if not words:
                first = number
            words.append(fields[0])
            if labelled:
                if len(fields) < 2:
                    raise BigmodelError(f"{what} {path} line {number}: '{fields[0]}' has no tag; "
                                        "give each word its tag after a tab or space")
                try:
                    tags.append(fields[tag_column])
                except IndexError:
                    raise BigmodelError(f"{what} {path} line {number}: no column {tag_column} (the line has "
                                        f"{len(fields)}); set data.tag_column to the tags' column") from None
    close()
    return sentences


def read_jsonl(path: Path, what: str, labelled: bool) -> list[Sentence]:
    """One JSON object per line: `tokens` and `tags` lists, or `text` and `entities` with character
    `start`, `end` and `label` (turned into word tags: a span that cuts a word is an error)."""
    sentences, kind = [], None
    with path.open(encoding="utf-8-sig") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{what} {path} line {number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise BigmodelError(f"{where}: not a JSON object (the file's first line is JSON Lines); "
                                    "keep one format per file") from None
            if not isinstance(record, dict):
                raise BigmodelError(f"{where}: not a JSON object")
            this = "tokens" if "tokens" in record else "text" if "text" in record else None
            if this is None:
                raise BigmodelError(f"{where}: needs 'tokens' (with 'tags') or 'text' (with 'entities'); "
                                    f"found {', '.join(record) or 'nothing'}")
            if kind is not None and this != kind:
                raise BigmodelError(f"{where}: '{this}' where the lines before have '{kind}'; keep one format per file")
            kind = this
            sentences.append(token_record(record, where, number, labelled) if this == "tokens"
                             else span_record(record, where, number, labelled))
    return sentences


def token_record(record: dict, where: str, number: int, labelled: bool) -> Sentence:
    words = record["tokens"]
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise BigmodelError(f"{where}: 'tokens' must be a list of strings")
    if not labelled:
        return Sentence(words, None, number)
    tags = record.get("tags", record.get("ner_tags"))
    if tags is None:
        raise BigmodelError(f"{where}: 'tokens' without 'tags'")
    if len(tags) != len(words):
        raise BigmodelError(f"{where}: {len(words)} tokens but {len(tags)} tags; give each token its tag")
    return Sentence(words, [str(t) for t in tags], number)


def span_record(record: dict, where: str, number: int, labelled: bool) -> Sentence:
    text = record["text"]
    if not isinstance(text, str):
        raise BigmodelError(f"{where}: 'text' must be a string")
    if not labelled:
        return text_sentence(text, number)
    words, offsets = split_words(text)
    spans = record.get("entities", record.get("spans"))
    if spans is None:
        raise BigmodelError(f"{where}: 'text' without 'entities' ([{{start, end, label}}, ...])")
    tags = ["O"] * len(words)
    starts = {start: i for i, (start, _) in enumerate(offsets)}
    ends = {end: i for i, (_, end) in enumerate(offsets)}
    for span in sorted(spans, key=lambda s: s.get("start", 0) if isinstance(s, dict) else 0):
        try:
            start, end, label = int(span["start"]), int(span["end"]), str(span["label"])
        except (KeyError, TypeError, ValueError):
            raise BigmodelError(f"{where}: each entity needs integer 'start', 'end' and a 'label'") from None
        first, last = starts.get(start), ends.get(end)
        if first is None or last is None or last < first:
            cut = text[max(start, 0):end]
            raise BigmodelError(f"{where}: the entity '{cut}' ({start}-{end}, {label}) cuts a word; "
                                "its start and end must fall on word edges")
        if any(tag != "O" for tag in tags[first:last + 1]):
            raise BigmodelError(f"{where}: the entity '{text[start:end]}' ({start}-{end}) overlaps another")
        tags[first:last + 1] = [f"B-{label}"] + [f"I-{label}"] * (last - first)
    return Sentence(words, tags, number, text, offsets)
