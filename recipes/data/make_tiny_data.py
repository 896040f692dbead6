"""Writes the tiny data the debug recipes and tests use (deterministic; run from anywhere).

    python recipes/data/make_tiny_data.py

tiny-corpus.txt: 600 English lines from templates (plus blank lines, as real corpora have).
mrpc-tiny/{train,dev}.tsv: MRPC's own byte format (UTF-8 BOM, tabs, literal quotes): a pair is a
paraphrase (1) when the second sentence restates the first, else (0).
ner-tiny/{train,dev}.conll: CoNLL files (a word and its IOB2 tag per line, a blank line between
sentences, a -DOCSTART- line first) with person, place and company names (PER, LOC, ORG).
"""

import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SUBJECTS = ["the farmer", "a young doctor", "the old teacher", "my neighbour", "the small company",
            "a tired student", "the city council", "her brother", "the new manager", "a local artist",
            "the quiet child", "our captain", "the famous writer", "a busy nurse", "the angry driver"]
VERBS = ["bought", "painted", "repaired", "sold", "described", "found", "carried", "opened",
         "cleaned", "visited", "ordered", "watched", "built", "moved", "studied"]
ADJECTIVES = ["red", "heavy", "beautiful", "broken", "expensive", "wooden", "strange", "ancient",
              "bright", "narrow", "quiet", "famous", "empty", "golden", "simple"]
NOUNS = ["house", "boat", "garden", "bridge", "window", "car", "painting", "table", "river",
         "market", "school", "letter", "machine", "church", "museum"]
PLACES = ["near the river", "in the morning", "after the storm", "before dinner", "in the village",
          "during the war", "at the station", "last summer", "on the hill", "with great care"]
SYNONYMS = {"bought": "purchased", "repaired": "fixed", "described": "explained", "found": "discovered",
            "carried": "moved", "watched": "observed", "built": "constructed", "studied": "examined",
            "sold": "traded", "painted": "coloured", "opened": "unlocked", "cleaned": "washed",
            "visited": "saw", "ordered": "requested", "moved": "shifted"}


def sentence(rng: random.Random) -> tuple[str, str, str, str, str]:
    return (rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(ADJECTIVES), rng.choice(NOUNS), rng.choice(PLACES))


def render(s, v, a, n, p) -> str:
    return f"{s.capitalize()} {v} the {a} {n} {p} ."


def corpus(rng: random.Random, lines: int = 600) -> str:
    out = []
    for i in range(lines):
        parts = [render(*sentence(rng)) for _ in range(rng.randint(1, 4))]
        out.append(" ".join(parts))
        if i % 10 == 9:
            out.append("")  # blank lines between paragraphs, as in WikiText
        if i % 50 == 49:
            out.append("   ")  # a whitespace-only line: must not become an example
    return "\n".join(out) + "\n"


def pair(rng: random.Random, positive: bool) -> tuple[str, str]:
    s, v, a, n, p = sentence(rng)
    first = render(s, v, a, n, p)
    if positive:
        second = f'{p.capitalize()} , {s} {SYNONYMS[v]} the {a} {n} .'
    else:
        s2, v2, a2, n2, p2 = sentence(rng)
        second = render(s2, v2, a2, n2, p2)
    if rng.random() < 0.2:
        first = first.replace(f"the {a} {n}", f'the " {a} {n} "')  # literal quotes, as in MRPC
    return first, second


def mrpc(rng: random.Random, size: int) -> str:
    rows = ["Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"]
    for i in range(size):
        label = int(rng.random() < 0.6)
        a, b = pair(rng, bool(label))
        rows.append(f"{label}\t{1000 + 2 * i}\t{1001 + 2 * i}\t{a}\t{b}")
    return "\ufeff" + "\n".join(rows) + "\n"


PEOPLE = ["Anna Berg", "John", "Maria Lopez", "Chen Wei", "Tom", "Sara Kim", "Omar Haddad", "Lena"]
CITIES = ["Paris", "New York", "Oslo", "Cairo", "Lima", "San Francisco", "Hanoi", "Berlin"]
COMPANIES = ["Acme Corp", "Globex", "Initech", "Blue River Bank", "Nordwind", "Umbrella Labs"]
FRAMES = ["{PER} visited {LOC} {p} .", "{PER} works for {ORG} in {LOC} .", "{ORG} opened a {n} in {LOC} .",
          "the {a} {n} of {ORG} was sold to {PER} .", "{PER} and {PER} moved to {LOC} {p} ."]


def tagged(rng: random.Random) -> list[tuple[str, str]]:
    """One sentence as (word, IOB2 tag) pairs."""
    words = []
    for part in rng.choice(FRAMES).split():
        kind = {"{PER}": "PER", "{LOC}": "LOC", "{ORG}": "ORG"}.get(part)
        if kind:
            name = rng.choice({"PER": PEOPLE, "LOC": CITIES, "ORG": COMPANIES}[kind]).split()
            words += [(w, f"{'B' if i == 0 else 'I'}-{kind}") for i, w in enumerate(name)]
        else:
            text = part.format(p=rng.choice(PLACES), n=rng.choice(NOUNS), a=rng.choice(ADJECTIVES))
            words += [(w, "O") for w in text.split()]
    return words


def conll(rng: random.Random, size: int) -> str:
    blocks = ["-DOCSTART- O"]
    for _ in range(size):
        blocks.append("\n".join(f"{w}\t{t}" for w, t in tagged(rng)))
    return "\n\n".join(blocks) + "\n"


if __name__ == "__main__":
    rng = random.Random(0)
    (HERE / "tiny-corpus.txt").write_text(corpus(rng), encoding="utf-8")
    (HERE / "mrpc-tiny" / "train.tsv").write_text(mrpc(rng, 160), encoding="utf-8")
    (HERE / "mrpc-tiny" / "dev.tsv").write_text(mrpc(rng, 48), encoding="utf-8")
    ner = random.Random(1)  # its own stream: the files above stay as they were
    (HERE / "ner-tiny").mkdir(exist_ok=True)
    (HERE / "ner-tiny" / "train.conll").write_text(conll(ner, 160), encoding="utf-8")
    (HERE / "ner-tiny" / "dev.conll").write_text(conll(ner, 40), encoding="utf-8")
