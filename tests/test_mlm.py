import pytest
import torch
from conftest import TINY
from transformers import BertConfig, BertForMaskedLM

from bigmodel_cli.mlm.evaluation import process_share
from bigmodel_cli.mlm.masking import MLMCollator
from bigmodel_cli.mlm.sparse_head import SparseHeadBertForMaskedLM
from bigmodel_cli.mlm.text import chunk_line, pack
from bigmodel_cli.mlm.tokenizer import train_wordpiece, unknown_rate

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def tokenizer():
    lines = [line for line in (TINY / "tiny-corpus.txt").read_text().splitlines() if line.strip()]
    return train_wordpiece(lines, vocab_size=300, lowercase=True, min_frequency=1)


def test_trained_tokenizer_has_the_size_asked_and_knows_ordinary_words(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    assert len(tokenizer) == 300
    assert unknown_rate(tokenizer, ["The farmer bought the red house near the river ."]) == 0.0
    ids = tokenizer("the farmer bought a boat")["input_ids"]
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    tokenizer.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)  # the 5-token trap of vocab_file= must not bite
    assert len(again) == 300 and again.tokenize("the boat") == tokenizer.tokenize("the boat")


def test_long_lines_are_split_not_dropped():
    pieces = chunk_line(list(range(10)), 4)
    assert pieces == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_pack_respects_capacity_and_places_every_example_once():
    lengths = [5, 3, 4, 2, 6, 1, 8, 7]
    bins = pack(lengths, 8)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 8 for b in bins)
    assert len(bins) == 5  # 36 tokens need at least 5 bins of 8


class FakeTokenizer:
    pad_token_id, mask_token_id, all_special_ids = 0, 4, [0, 1, 2, 3, 4]

    def __len__(self):
        return 100


def row(ids_list, eids):
    return {"input_ids": [t for ids in ids_list for t in ids], "lengths": [len(i) for i in ids_list], "example_ids": eids}


A = [2, *range(5, 45), 3]
B = [2, *range(50, 70), 3]


def test_masks_depend_on_seed_epoch_and_example_only():
    collator = MLMCollator(FakeTokenizer(), 0.3, seed=1)
    first = collator([row([A], [7]), row([B], [8])])
    alone = collator([row([A], [7])])
    assert torch.equal(first["labels"][0], alone["labels"][0])  # the batch around it does not matter
    collator.epoch = 1
    assert not torch.equal(collator([row([A], [7])])["labels"], alone["labels"])  # a new epoch, new masks
    labels = first["labels"][0]
    assert labels[0] == -100 and labels[len(A) - 1] == -100  # [CLS] and [SEP] are never targets
    assert 0 < (labels != -100).sum() < len(A)


def row_by_row(rows: list[dict], pad_id: int) -> tuple[torch.Tensor, ...]:
    """The collator's layout as it was first written, one row at a time: the reference."""
    batch, width = len(rows), max(len(r["input_ids"]) for r in rows)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    positions, segment, example_ids = (torch.zeros((batch, width), dtype=torch.long) for _ in range(3))
    for b, r in enumerate(rows):
        lengths, n = torch.tensor(r["lengths"], dtype=torch.long), sum(r["lengths"])
        input_ids[b, :n] = torch.tensor(r["input_ids"][:n], dtype=torch.long)
        line = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
        positions[b, :n] = torch.arange(n) - (torch.cumsum(lengths, 0) - lengths)[line]
        segment[b, :n] = line + 1
        example_ids[b, :n] = torch.tensor(r["example_ids"], dtype=torch.long)[line]
    return input_ids, positions, segment, example_ids


def test_the_batch_is_laid_out_at_once_as_row_by_row():
    """Packed rows of one to five lines and of other widths, single-line rows, a row with tokens past
    its lines: the same ids, offsets, line numbers and example ids as the row-by-row reference."""
    generator = torch.Generator().manual_seed(0)
    rows = []
    for i in range(40):
        lengths = torch.randint(1, 30, (int(torch.randint(1, 6, (1,), generator=generator)),), generator=generator).tolist()
        ids = torch.randint(5, 100, (sum(lengths) + (3 if i == 7 else 0),), generator=generator).tolist()
        rows.append({"input_ids": ids, "lengths": lengths, "example_ids": [1000 * i + k for k in range(len(lengths))]})
    collator = MLMCollator(FakeTokenizer(), 0.3, seed=1)
    for batch in (rows, rows[:1], rows[5:9], [row([A], [7]), row([B], [8])]):
        for got, want in zip(collator.lay_out(batch), row_by_row(batch, FakeTokenizer.pad_token_id)):
            assert torch.equal(got, want)


def sparse_and_full(training: bool):
    """The sparse-head model and a stock `BertForMaskedLM` with its weights, dropout off."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    sparse = SparseHeadBertForMaskedLM(config).train(training)
    full = BertForMaskedLM(config).train(training)
    full.load_state_dict(sparse.state_dict())
    return sparse, full


def test_packed_rows_equal_separate_rows_and_sparse_head_equals_full_head():
    sparse, full = sparse_and_full(training=False)
    collator = MLMCollator(FakeTokenizer(), 0.3, seed=1)
    packed = collator([row([A, B], [7, 8])])
    separate = collator([row([A], [7]), row([B], [8])])
    assert packed["attention_mask"].shape == (1, 1, len(A) + len(B), len(A) + len(B))
    with torch.no_grad():
        loss_packed = sparse(**packed).loss
        loss_separate = sparse(**separate).loss
        loss_full = full(**separate).loss
    assert loss_packed.item() == pytest.approx(loss_separate.item(), abs=1e-5)
    assert loss_separate.item() == pytest.approx(loss_full.item(), abs=1e-5)


def test_sparse_head_gives_the_full_heads_loss_and_gradients():
    """Training mode, dropout off: the sparse head's loss and every parameter's gradient equal the
    stock `BertForMaskedLM`'s (the README says "exactly": within float rounding)."""
    sparse, full = sparse_and_full(training=True)
    batch = MLMCollator(FakeTokenizer(), 0.3, seed=1)([row([A, B], [7, 8]), row([B], [9])])
    sparse_loss, full_loss = sparse(**batch).loss, full(**batch).loss
    sparse_loss.backward()
    full_loss.backward()
    assert sparse_loss.item() == pytest.approx(full_loss.item(), abs=1e-6)
    grads = dict(full.named_parameters())
    for name, parameter in sparse.named_parameters():
        torch.testing.assert_close(parameter.grad, grads[name].grad, rtol=1e-4, atol=1e-7, msg=name)


@pytest.mark.parametrize("rows, world, size", [(65, 2, 32), (64, 2, 32), (7, 3, 2), (1, 4, 8), (0, 2, 4), (100, 1, 7)])
def test_evaluation_shares_score_each_row_once_in_as_many_passes_on_every_process(rows, world, size):
    shares = [process_share(rows, rank, world, size) for rank in range(world)]
    scored = sorted(i for batches, counted in shares for batch in batches[:counted] for i in batch)
    assert scored == list(range(rows))
    assert len({len(batches) for batches, _ in shares}) == 1  # a sharded model's forward needs every process
    assert all(len(batch) <= size for batches, _ in shares for batch in batches)


TIES = """
import sys
from bigmodel_cli.mlm.tokenizer import save_tokenizer, train_tokenizer
from pathlib import Path
lines = ["Wel come to the Tok en izers libr ary.", "abab cdcd efef ghgh ijij klkl mnmn", "xy yx zq qz wv vw uo ou"] * 5
size = 70 if sys.argv[2] == "bert" else 300
trained = train_tokenizer(sys.argv[2], lines, vocab_size=size, lowercase=True, min_frequency=1, show_progress=False)
save_tokenizer(trained, Path(sys.argv[1]))
"""


@pytest.mark.unit
@pytest.mark.parametrize("family", ["bert", "roberta", "modernbert"])
def test_tokenizer_training_gives_the_same_file_in_every_process(tmp_path, family):
    """A corpus rich in ties between merges (huggingface/tokenizers#1794's own, and more): the stock
    trainer gives a different vocabulary in most fresh processes (6 of 6 differed here); ours the same
    tokenizer.json, byte for byte."""
    import subprocess
    import sys

    files = []
    for i in range(5):  # each in a process of its own: a hash map's order is fixed per process
        out = tmp_path / str(i)
        out.mkdir()
        subprocess.run([sys.executable, "-c", TIES, str(out), family], check=True, timeout=120)
        files.append((out / "tokenizer.json").read_bytes())
        assert not list(out.glob("tmp-tokenizer*"))
    assert all(f == files[0] for f in files)
    import json

    saved = json.loads(files[0])
    if family == "bert":
        assert [t["content"] for t in saved["added_tokens"]] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        assert "##b" in saved["model"]["vocab"]  # the continuing pieces are plain vocabulary


def corpus_lines() -> list[str]:
    return [line for line in (TINY / "tiny-corpus.txt").read_text().splitlines() if line.strip()]


def byte_level_bpe():
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus_lines(), vocab_size=300, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"], show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", mask_token="<mask>")


def word_numbers(tokens: list[str], begins) -> list[int]:
    """The word each token belongs to, counted from 0."""
    numbers, word = [], -1
    for i, token in enumerate(tokens):
        word += 1 if i == 0 or begins(token) else 0
        numbers.append(word)
    return numbers


@pytest.mark.parametrize("kind", ["wordpiece", "byte-level-bpe"])
def test_whole_word_masking_masks_all_pieces_of_a_word_together_80_10_10(tokenizer, kind):
    tok = tokenizer if kind == "wordpiece" else byte_level_bpe()
    begins = (lambda t: not t.startswith("##")) if kind == "wordpiece" else (lambda t: t.startswith("Ġ"))
    whole = MLMCollator(tok, 0.2, seed=3, whole_words=True)
    pieces_split = chosen_words = words = 0
    replaced = {"mask": 0, "random_or_kept": 0}
    for eid, line in enumerate(corpus_lines()[:300]):
        ids = torch.tensor(tok(line, add_special_tokens=False)["input_ids"])
        inputs, labels = whole.mask(ids, eid)
        again = whole.mask(ids, eid)
        assert torch.equal(inputs, again[0]) and torch.equal(labels, again[1])  # seeded like today's masks
        numbers = word_numbers(tok.convert_ids_to_tokens(ids.tolist()), begins)
        for word in set(numbers):
            picked = {bool(labels[i] != -100) for i, n in enumerate(numbers) if n == word}
            assert len(picked) == 1, (line, word)  # all of a word's pieces, or none
            words += 1
            chosen_words += picked.pop()
            pieces_split += sum(1 for n in numbers if n == word) > 1
        replaced["mask"] += int(((labels != -100) & (inputs == tok.mask_token_id)).sum())
        replaced["random_or_kept"] += int(((labels != -100) & (inputs != tok.mask_token_id)).sum())
    assert pieces_split > 50  # the corpus has words of several pieces: the test sees them
    assert chosen_words / words == pytest.approx(0.2, abs=0.03)
    assert replaced["mask"] / sum(replaced.values()) == pytest.approx(0.8, abs=0.05)


def test_whole_word_masking_needs_a_tokenizer_with_word_boundaries():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from bigmodel_cli.errors import BigmodelError

    words = Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1, "[MASK]": 2, "a": 3}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=words, pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]")
    with pytest.raises(BigmodelError, match="data.whole_word_masking: the tokenizer \\(WordLevel\\) marks no word boundaries"):
        MLMCollator(tok, 0.15, whole_words=True)
