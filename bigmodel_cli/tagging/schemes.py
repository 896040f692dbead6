"""Tag schemes: every file's tags become IOB2 (`B-` starts an entity, `I-` continues it), the scheme
seqeval scores strictly. IOB1 (`I-` starts an entity, `B-` only between two of one type), BIOES and
BILOU (`S-`/`U-` single words, `E-`/`L-` ends) and plain labels (`PER PER O LOC`) are converted."""

from __future__ import annotations

OUTSIDE = "O"
PREFIXES = {"B", "I", "E", "S", "L", "U"}


def split_tag(tag: str) -> tuple[str, str]:
    """('B', 'PER') from B-PER; ('', 'PER') from a plain PER; ('O', '') from O."""
    if tag == OUTSIDE:
        return OUTSIDE, ""
    head, dash, rest = tag.partition("-")
    if dash and head.upper() in PREFIXES and rest:
        return head.upper(), rest
    return "", tag


def detect_scheme(tags) -> str:
    """`bioes` where a tag has S-, E-, U- or L-; `plain` where none has a prefix; else `iob`
    (IOB2, or IOB1: converted the same way)."""
    prefixes = {split_tag(tag)[0] for tag in tags} - {OUTSIDE}
    if prefixes & {"E", "S", "L", "U"}:
        return "bioes"
    if prefixes and prefixes <= {""}:
        return "plain"
    if "" in prefixes:
        return "mixed"
    return "iob"


def to_iob2(tags: list[str], scheme: str) -> tuple[list[str], int]:
    """One sentence's tags in IOB2, and how many `I-` tags started an entity (turned into `B-`, the
    IOB1 rule: counted so a file that claims IOB2 can be told)."""
    out, repaired, previous = [], 0, (OUTSIDE, "")
    for tag in tags:
        prefix, kind = split_tag(tag)
        if prefix == OUTSIDE:
            out.append(OUTSIDE)
        elif scheme == "plain" or prefix == "":
            out.append(f"{'I' if previous[1] == kind and previous[0] != OUTSIDE else 'B'}-{kind}")
        elif prefix in ("B", "S", "U"):
            out.append(f"B-{kind}")
        else:  # I, E, L: continue an entity of the same type, else start one
            continues = previous[0] in ("B", "I") and previous[1] == kind
            if not continues and scheme != "bioes":
                repaired += 1
            out.append(f"{'I' if continues else 'B'}-{kind}")
        # after an E-/S-/L-/U- the entity has ended: the next I- cannot continue it
        previous = (OUTSIDE, "") if prefix in ("E", "S", "L", "U") else (out[-1][0], kind)
    return out, repaired


def label_list(tags) -> list[str]:
    """The model's labels: O, then B- and I- of every entity type (both, so a type seen only as
    single words can still be continued), types sorted."""
    kinds = sorted({split_tag(tag)[1] for tag in tags} - {""})
    return [OUTSIDE] + [f"{p}-{kind}" for kind in kinds for p in ("B", "I")]


def entities(tags: list[str]) -> list[tuple[str, int, int]]:
    """(type, first word, end word) of each entity in IOB2 tags, as seqeval's strict mode reads them."""
    found, start, kind = [], None, None
    for i, tag in enumerate([*tags, OUTSIDE]):
        prefix, this = split_tag(tag)
        if start is not None and not (prefix == "I" and this == kind):
            found.append((kind, start, i))
            start = None
        if prefix == "B":
            start, kind = i, this
    return found
