"""The tokenizer of a masked-LM run: the recipe's, or a WordPiece one trained on the corpus.

`tokenizer_object=`, never `vocab_file=`: the latter silently builds a 5-token tokenizer in
transformers 5.x.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.recipe import PretrainRecipe

MAX_UNKNOWN_RATE = 0.2  # a tokenizer that maps more of the corpus than this to [UNK] does not fit it
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def train_wordpiece(lines: Iterable[str], vocab_size: int, lowercase: bool, min_frequency: int, length=None):
    """A BERT-style WordPiece tokenizer (BERT normalizer and pre-tokenizer, [CLS]/[SEP] template)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=lowercase or None)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS, show_progress=True
    )
    tok.train_from_iterator(lines, trainer=trainer, length=length)
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


def unknown_rate(tokenizer, lines: list[str]) -> float:
    """Share of word-piece tokens that are [UNK]: a tokenizer that does not fit the corpus shows
    here before any training."""
    ids = tokenizer(lines, add_special_tokens=False)["input_ids"]
    total = sum(len(x) for x in ids)
    unk = sum(x.count(tokenizer.unk_token_id) for x in ids)
    return unk / max(total, 1)


def get_tokenizer(recipe: PretrainRecipe, train_lines, run_dir: Path):
    """The recipe's tokenizer, or a WordPiece one trained on the training lines (saved in the run
    directory, so a resumed run and every other process reuse it)."""
    from transformers import AutoTokenizer

    spec = recipe.tokenizer
    source = spec.name_or_path or (run_dir if (run_dir / "tokenizer.json").is_file() else None)
    if source:
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(source))
        except (OSError, ValueError) as e:
            raise BigmodelError(f"tokenizer.name_or_path '{source}' is not a tokenizer ({e.__class__.__name__})") from None
    else:
        tokenizer = train_wordpiece(
            (row["text"] for row in train_lines), spec.vocab_size, spec.lowercase, spec.min_frequency,
            length=len(train_lines),
        )
        tokenizer.save_pretrained(str(run_dir))
    if tokenizer.mask_token_id is None or tokenizer.pad_token_id is None:
        raise BigmodelError(f"tokenizer '{source}' has no [MASK] or [PAD] token; masked-LM training needs both")
    sample = [row["text"] for row in train_lines.select(range(min(500, len(train_lines))))]
    rate = unknown_rate(tokenizer, sample)
    if rate > MAX_UNKNOWN_RATE:
        raise BigmodelError(
            f"tokenizer '{source or 'trained'}' maps {rate:.0%} of the corpus to [UNK]; it does not fit this "
            "text: train one (tokenizer.name_or_path: null) or choose another"
        )
    return tokenizer


