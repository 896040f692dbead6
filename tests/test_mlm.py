import pytest
import torch
from conftest import TINY
from transformers import BertConfig, BertForMaskedLM

from bigmodel_cli.mlm.evaluation import process_share
from bigmodel_cli.mlm.head import SparseHeadBertForMaskedLM
from bigmodel_cli.mlm.masking import MLMCollator
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


def test_packed_rows_equal_separate_rows_and_sparse_head_equals_full_head():
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    sparse = SparseHeadBertForMaskedLM(config).eval()
    full = BertForMaskedLM(config).eval()
    full.load_state_dict(sparse.state_dict())
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


@pytest.mark.parametrize("rows, world, size", [(65, 2, 32), (64, 2, 32), (7, 3, 2), (1, 4, 8), (0, 2, 4), (100, 1, 7)])
def test_evaluation_shares_score_each_row_once_in_as_many_passes_on_every_process(rows, world, size):
    shares = [process_share(rows, rank, world, size) for rank in range(world)]
    scored = sorted(i for batches, counted in shares for batch in batches[:counted] for i in batch)
    assert scored == list(range(rows))
    assert len({len(batches) for batches, _ in shares}) == 1  # a sharded model's forward needs every process
    assert all(len(batch) <= size for batches, _ in shares for batch in batches)
