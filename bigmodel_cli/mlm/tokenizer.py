"""The tokenizer of a masked-LM run: the recipe's, or a WordPiece one trained on the corpus.

Training is deterministic: the same lines give the same `tokenizer.json` in every process.
`tokenizers`' WordPiece trainer alone does not: it gives the continuing-subword tokens (`##e`) their
ids in the iteration order of a hash map, and those ids break ties between equally frequent merges
(huggingface/tokenizers#1794; the fix proposed upstream, #2066, is not merged). Here every `##c` of
the corpus is handed to the trainer up front, sorted, as the special tokens are, so each has its id
before the trainer's hash-map walk; they are plain vocabulary again afterwards.

`tokenizer_object=`, never `vocab_file=`: the latter silently builds a 5-token tokenizer in
transformers 5.x. The tokenizer is written to the run directory atomically (its files staged, then
moved in with `tokenizer.json` last), so a run killed while writing it starts cleanly again.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.mlm import cache
from bigmodel_cli.recipe import PretrainRecipe

MAX_UNKNOWN_RATE = 0.2  # a tokenizer that maps more of the corpus than this to [UNK] does not fit it
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


BATCH_LINES = 1000  # lines handed to the tokenizer trainer at a time


def line_batches(lines) -> Iterator[list[str]]:
    """The corpus in batches of lines, never all at once: a data set's `text` column read batch by
    batch from its Arrow files (`file_order_batches`), or a list of lines sliced; over-long lines in
    pieces (`corpus.bounded`)."""
    from bigmodel_cli.mlm.corpus import bounded, file_order_batches

    if hasattr(lines, "iter"):  # a datasets.Dataset
        batches = file_order_batches(lines, BATCH_LINES)
        if batches is None:
            batches = (batch["text"] for batch in lines.iter(batch_size=BATCH_LINES))
        for batch in batches:
            yield bounded(batch)
    else:
        for start in range(0, len(lines), BATCH_LINES):
            yield bounded(list(lines[start:start + BATCH_LINES]))


def continuing_pieces(tok, lines) -> list[str]:
    """`##c` for every character c that follows another inside a pre-tokenized word, sorted.

    BERT's pre-tokenizer makes words of the runs of characters that are neither whitespace nor
    punctuation (each punctuation mark is a word of its own), so c follows another inside a word
    exactly where c and the character before it are both word characters. Each batch of lines is
    normalized at once (the lines joined by a newline, which the normalizer makes a space: a word
    boundary, as the end of a line is), and only characters not yet found are looked for in it."""
    normalize = tok.normalizer.normalize_str
    found: set[str] = set()
    never: set[str] = set()  # whitespace and punctuation: words of their own, or none
    for batch in line_batches(lines):
        text = normalize("\n".join(batch))
        for c in set(text) - found - never:
            if not is_word_char(c):
                never.add(c)
                continue
            at = text.find(c, 1)
            while at != -1:
                if is_word_char(text[at - 1]):
                    found.add(c)
                    break
                at = text.find(c, at + 1)
    return [f"##{c}" for c in sorted(found)]


def is_word_char(c: str) -> bool:
    """Neither whitespace nor punctuation as `tokenizers`' BertPreTokenizer defines them (Unicode
    whitespace; ASCII punctuation or a Unicode punctuation category)."""
    import string
    import unicodedata

    return not (c.isspace() or c in string.punctuation or unicodedata.category(c).startswith("P"))


def train_wordpiece(lines, vocab_size: int, lowercase: bool, min_frequency: int, show_progress=True):
    """A BERT-style WordPiece tokenizer (BERT normalizer and pre-tokenizer, [CLS]/[SEP] template),
    the same for the same lines in every process. `lines`: a list of lines or a data set with a
    `text` column, streamed to the trainer in batches (`line_batches`)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=lowercase or None)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    pieces = continuing_pieces(tok, lines)
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS + pieces,
        show_progress=show_progress,
    )
    tok.train_from_iterator(line_batches(lines), trainer=trainer, length=len(lines) if hasattr(lines, '__len__') else None)
    saved = json.loads(tok.to_str())  # the pieces were special only to fix their ids: plain vocabulary again
    saved["added_tokens"] = [t for t in saved["added_tokens"] if t["content"] in SPECIAL_TOKENS]
    tok = Tokenizer.from_str(json.dumps(saved))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    # `tokenizer_object=`, never `vocab_file=`: the latter silently builds a 5-token tokenizer in 5.x.
    return BertTokenizerFast(
        tokenizer_object=tok,
        do_lower_case=lowercase,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


BPE_SPECIALS = {  # the special tokens of each byte-level BPE family, in id order
    "roberta": ["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
    "modernbert": ["[CLS]", "[PAD]", "[SEP]", "[UNK]", "[MASK]"],
}


def train_byte_level_bpe(lines, family: str, vocab_size: int, lowercase: bool, min_frequency: int,
                         show_progress=True):
    """A byte-level BPE tokenizer (GPT-2's byte alphabet: no unknown tokens) with the family's special
    tokens and template: RoBERTa's `<s> A </s></s> B </s>`, ModernBERT's `[CLS] A [SEP] B [SEP]`. The BPE
    trainer without a continuing-subword prefix numbers its tokens in a fixed order: deterministic."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, RobertaTokenizerFast

    specials = BPE_SPECIALS[family]
    tok = Tokenizer(models.BPE())
    if lowercase:
        tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=show_progress)
    tok.train_from_iterator(line_batches(lines), trainer=trainer, length=len(lines) if hasattr(lines, '__len__') else None)
    if family == "roberta":
        bos, pad, eos, unk, mask = specials
        tok.post_processor = processors.RobertaProcessing((eos, tok.token_to_id(eos)), (bos, tok.token_to_id(bos)))
        return RobertaTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, sep_token=eos, cls_token=bos,
                                    unk_token=unk, pad_token=pad, mask_token=mask)
    cls, pad, sep, unk, mask = specials
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, cls_token=cls, sep_token=sep, pad_token=pad, unk_token=unk,
                                   mask_token=mask)


def train_tokenizer(family: str, lines, vocab_size: int, lowercase: bool, min_frequency: int,
                    show_progress=True):
    """The tokenizer a new model of `family` trains on the corpus: WordPiece for bert, byte-level BPE else."""
    if family == "bert":
        return train_wordpiece(lines, vocab_size, lowercase, min_frequency, show_progress)
    return train_byte_level_bpe(lines, family, vocab_size, lowercase, min_frequency, show_progress)


def unknown_rate(tokenizer, lines: list[str]) -> float:
    """Share of word-piece tokens that are [UNK]: a tokenizer that does not fit the corpus shows
    here before any training."""
    ids = tokenizer(lines, add_special_tokens=False)["input_ids"]
    total = sum(len(x) for x in ids)
    unk = sum(x.count(tokenizer.unk_token_id) for x in ids)
    return unk / max(total, 1)


def get_tokenizer(recipe: PretrainRecipe, corpus, run_dir: Path | None) -> tuple[object, str | None]:
    """The recipe's tokenizer, or one trained on the training lines (the family's kind), with a note
    for the run header where it was trained or came from the cache. A trained tokenizer is kept in
    the cache (`cache.py`: `tokenizers/KEY`, keyed by the corpus, its split and the tokenizer
    settings) and copied into the run directory, so a resumed run, every other process and a later
    run on the same corpus reuse it. Without `run_dir` (`--prepare-only`), it is only cached.
    `corpus`: a `corpus.Corpus`, whose training lines train it."""
    from transformers import AutoTokenizer

    train_lines = corpus.raw["train"]
    spec = recipe.tokenizer
    note = None
    in_run = run_dir is not None and (run_dir / "tokenizer.json").is_file()
    source = spec.name_or_path or recipe.model.name_or_path or (run_dir if in_run else None)
    if source:
        from bigmodel_cli.models import resolve_model_path

        try:
            tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(str(source)))
        except (OSError, ValueError) as e:
            raise BigmodelError(f"tokenizer.name_or_path '{source}' is not a tokenizer ({e.__class__.__name__})") from None
    else:
        folder = cache.folder_for("tokenizers", {
            "corpus": cache.corpus_identity(recipe, corpus, ("train",)), "family": recipe.model.type,
            "vocab_size": spec.vocab_size, "lowercase": spec.lowercase, "min_frequency": spec.min_frequency})
        cached = cache.is_complete(folder)
        note = "tokenizer from the cache" if cached else "tokenizer trained and cached"
        if not cached:
            from bigmodel_cli.mlm.corpus import STREAM_TOKENIZER_LINES

            # streamed from its Arrow files in batches; a streamed corpus: its first lines
            lines = train_lines.take(STREAM_TOKENIZER_LINES) if corpus.streamed else train_lines.select_columns(["text"])
            cache.build(folder, lambda staging: train_tokenizer(
                recipe.model.type, lines, spec.vocab_size, spec.lowercase, spec.min_frequency).save_pretrained(str(staging)))
        if run_dir is not None:
            install_tokenizer(folder, run_dir)
        # Used as loaded back, as a resumed run uses it: both then write the very same files at the end.
        tokenizer = AutoTokenizer.from_pretrained(str(run_dir if run_dir is not None else folder))
    if tokenizer.mask_token_id is None or tokenizer.pad_token_id is None:
        raise BigmodelError(f"tokenizer '{source}' has no mask or padding token; masked-LM training needs both")
    if recipe.data.whole_word_masking:  # a tokenizer without word boundaries stops here, before tokenizing
        from bigmodel_cli.mlm.masking import word_start_table

        word_start_table(tokenizer)
    head = train_lines.take(500) if corpus.streamed else train_lines.select(range(min(500, len(train_lines))))
    sample = [row["text"] for row in head]
    rate = unknown_rate(tokenizer, sample)
    if rate > MAX_UNKNOWN_RATE:
        raise BigmodelError(
            f"tokenizer '{source or 'trained'}' maps {rate:.0%} of the corpus to [UNK]; it does not fit this "
            "text: train one (tokenizer.name_or_path: null) or choose another"
        )
    return tokenizer, note


def save_tokenizer(tokenizer, run_dir: Path) -> None:
    """`save_pretrained` into `run_dir`, atomically (`move_in`)."""
    staging = staging_folder(run_dir)
    shutil.rmtree(staging, ignore_errors=True)
    tokenizer.save_pretrained(str(staging))
    move_in(staging, run_dir)


def install_tokenizer(folder: Path, run_dir: Path) -> None:
    """A cached tokenizer's files copied into `run_dir`, atomically (`move_in`)."""
    staging = staging_folder(run_dir)
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(folder, staging, ignore=shutil.ignore_patterns(cache.COMPLETE))
    move_in(staging, run_dir)


def staging_folder(run_dir: Path) -> Path:
    """A staging folder of this process's own: the machines of a run share its directory, and each
    machine's first process installs the tokenizer. Those that killed processes of this machine left
    are removed."""
    import socket

    prefix = f"tmp-tokenizer-{socket.gethostname()}-"
    for old in run_dir.glob(prefix + "*"):
        pid = old.name.removeprefix(prefix)
        if pid.isdigit() and not alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    return run_dir / f"{prefix}{os.getpid()}"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def move_in(staging: Path, run_dir: Path) -> None:
    """A staged tokenizer's files moved into `run_dir` with `tokenizer.json` last, whose presence
    means a complete tokenizer; the staging folder removed."""
    files = sorted(staging.iterdir(), key=lambda p: p.name == "tokenizer.json")
    for path in files:
        os.replace(path, run_dir / path.name)
    staging.rmdir()
