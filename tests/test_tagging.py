"""Token classification (`finetune --task ner`): reading CoNLL and JSON Lines, tag schemes, sub-word
labels, windows for long sentences merged back into words, seqeval's strict scores, and the
commands end to end on the shipped tiny recipe."""

import json

import numpy as np
import pytest
from conftest import TINY, run_cli
from test_bad_input import fails

from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.tagging.data import IGNORED, check_labels, encode, merge, read_tagged, windows
from bigmodel_cli.tagging.metrics import tag_scores
from bigmodel_cli.tagging.reader import read_sentences, split_words
from bigmodel_cli.tagging.schemes import detect_scheme, entities, label_list, to_iob2
from bigmodel_cli.tagging.tasks import TagTask

NER_TINY = TINY / "ner-tiny"


# ---------------------------------------------------------------- schemes
@pytest.mark.unit
@pytest.mark.parametrize("tags, scheme, expected, repaired", [
    (["B-PER", "I-PER", "O", "B-LOC"], "iob", ["B-PER", "I-PER", "O", "B-LOC"], 0),
    # IOB1: I- starts an entity, B- only splits two of one type
    (["I-PER", "I-PER", "B-PER", "O", "I-LOC"], "iob", ["B-PER", "I-PER", "B-PER", "O", "B-LOC"], 2),
    (["I-PER", "I-LOC"], "iob", ["B-PER", "B-LOC"], 2),
    (["B-PER", "E-PER", "S-LOC", "O", "B-ORG", "I-ORG", "E-ORG"], "bioes",
     ["B-PER", "I-PER", "B-LOC", "O", "B-ORG", "I-ORG", "I-ORG"], 0),
    (["U-PER", "U-PER", "B-LOC", "L-LOC"], "bioes", ["B-PER", "B-PER", "B-LOC", "I-LOC"], 0),
    (["PER", "PER", "O", "LOC", "ORG"], "plain", ["B-PER", "I-PER", "O", "B-LOC", "B-ORG"], 0),
])
def test_every_scheme_becomes_iob2(tags, scheme, expected, repaired):
    assert detect_scheme(tags) == scheme
    assert to_iob2(tags, scheme) == (expected, repaired)


@pytest.mark.unit
def test_labels_hold_b_and_i_of_every_type_and_entities_read_strictly():
    assert label_list(["O", "B-PER", "B-LOC", "I-LOC"]) == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    assert entities(["B-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG"]) == [("PER", 0, 2), ("LOC", 4, 5)]


@pytest.mark.unit
def test_scores_are_seqevals_strict_entity_f1_and_word_accuracy():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    predicted = [["B-PER", "I-PER", "O", "I-LOC"], ["B-ORG", "B-PER"]]  # an I- opening is no entity in strict mode
    scores = tag_scores(gold, predicted)
    assert scores["precision"] == pytest.approx(2 / 3) and scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(2 / 3) and scores["accuracy"] == pytest.approx(4 / 6)
    assert scores["f1_LOC"] == 0 and scores["f1_PER"] == pytest.approx(2 / 3) and scores["f1_ORG"] == 1
    assert scores["per_type"]["PER"]["support"] == 1 and scores["entities"] == 3


# ---------------------------------------------------------------- reading
@pytest.mark.unit
def test_conll_with_spaces_docstart_and_a_chosen_column(tmp_path):
    path = tmp_path / "train.txt"  # CoNLL-2003's layout: word POS chunk NER
    path.write_text("-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n\nPeter NNP B-NP B-PER\n"
                    "Blackburn NNP I-NP I-PER\n")
    sentences = read_sentences(path, tag_column=3)
    assert [(s.words, s.tags, s.line) for s in sentences] == [
        (["EU", "rejects"], ["B-ORG", "O"], 3), (["Peter", "Blackburn"], ["B-PER", "I-PER"], 7)]
    assert read_sentences(path, tag_column=2)[0].tags == ["B-NP", "B-VP"]


@pytest.mark.unit
def test_json_lines_of_tokens_or_of_character_spans(tmp_path):
    tokens = tmp_path / "tokens.jsonl"
    tokens.write_text(json.dumps({"tokens": ["Anna", "visited", "Oslo"], "tags": ["B-PER", "O", "B-LOC"]}) + "\n")
    spans = tmp_path / "spans.jsonl"
    text = "Anna Berg visited New York, then Oslo."
    spans.write_text(json.dumps({"text": text, "entities": [{"start": 0, "end": 9, "label": "PER"},
                                                            {"start": 18, "end": 26, "label": "LOC"},
                                                            {"start": 33, "end": 37, "label": "LOC"}]}) + "\n")
    assert read_sentences(tokens)[0].tags == ["B-PER", "O", "B-LOC"]
    sentence = read_sentences(spans)[0]
    assert sentence.words == ["Anna", "Berg", "visited", "New", "York", ",", "then", "Oslo", "."]
    assert sentence.tags == ["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "O", "O", "B-LOC", "O"]
    assert [text[a:b] for a, b in sentence.offsets] == sentence.words


@pytest.mark.unit
def test_words_keep_inner_hyphens_and_apostrophes():
    words, offsets = split_words("Jean-Luc's café, (2024)!")
    assert words == ["Jean-Luc's", "café", ",", "(", "2024", ")", "!"]
    assert offsets[1] == (11, 15)


@pytest.mark.unit
@pytest.mark.parametrize("name, content, words", [
    ("a.conll", "Anna B-PER\nvisited\n", ["a.conll line 2", "'visited' has no tag"]),
    ("b.conll", "Anna B-PER\n{\"tokens\": [\"x\"], \"tags\": [\"O\"]}\n", ["b.conll line 2", "one format per file"]),
    ("c.jsonl", "{\"tokens\": [\"x\"], \"tags\": [\"O\"]}\nAnna B-PER\n", ["c.jsonl line 2", "not a JSON object"]),
    ("d.jsonl", "{\"tokens\": [\"x\"], \"tags\": [\"O\"]}\n{\"text\": \"x\", \"entities\": []}\n",
     ["d.jsonl line 2", "one format per file"]),
    ("e.jsonl", "{\"text\": \"New York\", \"entities\": [{\"start\": 0, \"end\": 6, \"label\": \"LOC\"}]}\n",
     ["e.jsonl line 1", "'New Yo'", "cuts a word"]),
    ("f.jsonl", "{\"tokens\": [\"x\", \"y\"], \"tags\": [\"O\"]}\n", ["f.jsonl line 1", "2 tokens but 1 tags"]),
    ("g.conll", "\n\n", ["g.conll", "is empty"]),
    ("h.conll", "-DOCSTART- O\n\n", ["h.conll has no sentences"]),
    ("i.conll", "Anna B-PER\nBerg PER\n", ["i.conll line 1", "'PER' has no B-/I- prefix"]),
])
def test_bad_files_name_the_file_and_line(tmp_path, name, content, words):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(BigmodelError) as error:
        read_tagged(path, "data.train_file")
    for word in words:
        assert word in str(error.value), (word, str(error.value))


@pytest.mark.unit
def test_a_dev_tag_that_training_never_had_is_an_error_naming_its_line(tmp_path):
    path = tmp_path / "dev.conll"
    path.write_text("Anna B-PER\n\nacme B-ORG\n")
    with pytest.raises(BigmodelError, match=r"dev.conll line 3: tag 'B-ORG' is not among .* \(PER\)"):
        check_labels(read_tagged(path, "data.validation_file"), TagTask(("O", "B-PER", "I-PER")), "data.validation_file")


# ---------------------------------------------------------------- sub-words and windows
@pytest.fixture(scope="module")
def tokenizer():
    from transformers import BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "anna", "visited", "new", "york", "oslo", "on",
             "mon", "##day", "##s", "the", "."]
    return BertTokenizerFast(vocab={v: i for i, v in enumerate(vocab)})


def sentence_of(words, tags=None):
    from bigmodel_cli.tagging.reader import Sentence

    return Sentence(words, tags, 1)


@pytest.mark.unit
def test_first_sub_word_carries_the_label_or_every_one_does(tokenizer):
    task = TagTask(("O", "B-DAY", "I-DAY", "B-PER", "I-PER"))
    one = sentence_of(["anna", "visited", "mondays"], ["B-PER", "O", "B-DAY"])
    first = encode([one], tokenizer, 16, 2, task.label2id)
    assert first["input_ids"][0] == [2, 5, 6, 11, 12, 13, 3]
    assert first["labels"][0] == [IGNORED, 3, 0, 1, IGNORED, IGNORED, IGNORED]
    assert first["word_index"][0] == [-1, 0, 1, 2, -1, -1, -1]
    every = encode([one], tokenizer, 16, 2, task.label2id, label_all_tokens=True)
    assert every["labels"][0] == [IGNORED, 3, 0, 1, 2, 2, IGNORED]  # B-DAY continues as I-DAY


@pytest.mark.unit
def test_windows_cover_every_token_cut_at_word_edges_and_overlap():
    words = [0, 1, 1, 1, 2, 3, 4, 4, 5, 6, 7, 8, 9, 9, 9, 10]
    spans = windows(words, room=6, stride=2)
    assert spans[0][0] == 0 and spans[-1][1] == len(words)
    for (a, b), (c, d) in zip(spans, spans[1:]):
        assert c < b <= d and b - a <= 6  # overlapping, in order, within the room
    starts = {0} | {i for i in range(1, len(words)) if words[i] != words[i - 1]}
    assert all(a in starts for a, _ in spans) and all(b in starts or b == len(words) for _, b in spans)
    assert windows([0, 1, 2], room=6, stride=2) == [(0, 3)]


@pytest.mark.unit
def test_each_word_is_predicted_once_from_the_window_with_the_most_context(tokenizer):
    words = ["anna", "visited", "new", "york", "on", "mondays", "the", "oslo", "anna", "visited", "oslo", "."]
    long = sentence_of(words)
    columns = encode([long], tokenizer, max_length=8, stride=3)  # 6 tokens a window
    assert len(columns["input_ids"]) > 2 and max(map(len, columns["input_ids"])) <= 8
    # each window's logits say which window it is: the merged words say where each came from
    logits = [np.tile(np.eye(len(columns["input_ids"]), dtype=np.float32)[w] * 50, (len(ids), 1))
              for w, ids in enumerate(columns["input_ids"])]
    chosen = merge(columns, logits, [long])[0].argmax(axis=-1)
    assert len(chosen) == len(words)  # no word dropped
    for word, window in enumerate(chosen):
        contexts = [(columns["context"][w][columns["word_index"][w].index(word)], w)
                    for w in range(len(logits)) if word in columns["word_index"][w]]
        assert dict((w, c) for c, w in contexts)[window] == max(c for c, _ in contexts)  # ties: any of them


@pytest.mark.unit
def test_a_sentence_in_windows_scores_as_it_does_whole():
    """The same tagger on the same sentence: cut into windows (max_seq_length 12) or whole (128),
    every word gets the prediction of a window where it has context; with a model that sees only
    each token (no attention reach), both give the same tags."""
    import torch
    from transformers import BertConfig, BertForTokenClassification, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(40)]
    tok = BertTokenizerFast(vocab={v: i for i, v in enumerate(vocab)})
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=0, num_attention_heads=2,
                        intermediate_size=16, num_labels=3, max_position_embeddings=8)
    model = BertForTokenClassification(config).eval()
    model.bert.embeddings.position_embeddings.weight.data.zero_()  # no position: a token's logits are its own
    from bigmodel_cli.tagging.inference import word_probabilities

    long = sentence_of([f"w{i}" for i in range(30)])
    windowed = word_probabilities(model, tok, [long], max_length=8, stride=2)[0]
    shortened = [word_probabilities(model, tok, [sentence_of([w])], max_length=8, stride=2)[0][0] for w in long.words]
    np.testing.assert_allclose(windowed, np.stack(shortened), atol=1e-6)


# ---------------------------------------------------------------- the commands
@pytest.fixture(scope="module")
def tagger(tmp_path_factory, pretrained):
    run_dir = tmp_path_factory.mktemp("ner") / "run"
    result = run_cli("finetune", "-r", "finetune/ner-tiny-debug", "-m", pretrained, "-o", run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir, result


@pytest.mark.smoke
def test_finetune_ner_learns_keeps_the_best_epoch_and_eval_reproduces_it(tagger):
    run_dir, result = tagger
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["eval_f1"] > 0.3, metrics  # the tiny model finds names (0.66 seen), far above nothing
    assert set(metrics["eval_per_type"]) == {"LOC", "ORG", "PER"}
    history = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
    f1s = [h["eval_f1"] for h in history if "eval_f1" in h]
    assert len(f1s) == 10 and metrics["eval_f1"] == pytest.approx(max(f1s))
    assert "tags IOB" in result.stderr and "first sub-word" in result.stderr
    again = run_cli("eval", "-m", run_dir, "--data-file", NER_TINY / "dev.conll", "--json")
    assert again.returncode == 0, again.stderr[-2000:]
    scores = json.loads(again.stdout.strip().splitlines()[-1])
    for key in ("eval_f1", "eval_precision", "eval_recall", "eval_accuracy", "eval_f1_PER"):
        assert scores[key] == pytest.approx(metrics[key], abs=1e-9), key


@pytest.mark.smoke
def test_eval_reads_the_dev_set_as_json_lines_spans_to_the_same_figures(tagger, tmp_path):
    run_dir, _ = tagger
    lines = []
    for sentence in read_sentences(NER_TINY / "dev.conll"):
        text, spans, at = " ".join(sentence.words), [], 0
        starts = []
        for word in sentence.words:
            starts.append(at)
            at += len(word) + 1
        for kind, first, end in entities(sentence.tags):
            spans.append({"start": starts[first], "end": starts[end - 1] + len(sentence.words[end - 1]), "label": kind})
        lines.append(json.dumps({"text": text, "entities": spans}))
    (tmp_path / "dev.jsonl").write_text("\n".join(lines) + "\n")
    conll = run_cli("eval", "-m", run_dir, "--data-file", NER_TINY / "dev.conll", "--json")
    spans = run_cli("eval", "-m", run_dir, "--data-file", tmp_path / "dev.jsonl", "--json")
    assert spans.returncode == 0, spans.stderr[-2000:]
    a, b = (json.loads(r.stdout.strip().splitlines()[-1]) for r in (conll, spans))
    assert a["eval_f1"] == b["eval_f1"] and a["eval_accuracy"] == b["eval_accuracy"]


@pytest.mark.smoke
def test_predict_gives_entities_with_character_offsets_and_the_pipeline_loads_the_run(tagger, tmp_path):
    run_dir, _ = tagger
    text = "Maria Lopez works for Globex in San Francisco ."
    result = run_cli("predict", "-m", run_dir, "--text", text)
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["text"] == text and record["entities"]
    for entity in record["entities"]:
        assert text[entity["start"]:entity["end"]] == entity["word"] and 0 < entity["score"] <= 1
        assert entity["entity_group"] in {"PER", "LOC", "ORG"}
    (tmp_path / "in.txt").write_text(f"{text}\n\nJohn visited Oslo .\n")
    out = tmp_path / "out.jsonl"
    assert run_cli("predict", "-m", run_dir, "-i", tmp_path / "in.txt", "--output", out).returncode == 0
    assert [json.loads(line)["text"] for line in out.read_text().splitlines()] == [text, "John visited Oslo ."]
    from transformers import pipeline

    found = pipeline("token-classification", model=str(run_dir), aggregation_strategy="simple")(text)
    assert found and all(f["entity_group"] in {"PER", "LOC", "ORG"} for f in found)


@pytest.mark.smoke
def test_bad_ner_input_exits_2_naming_file_and_line_and_writes_nothing(tmp_path, pretrained):
    (tmp_path / "dev.conll").write_text("Anna B-PER\nin O\nOslo B-CITY\n")
    result = run_cli("finetune", "--task", "ner", "-m", pretrained, "--train-file", NER_TINY / "train.conll",
                     "--validation-file", tmp_path / "dev.conll", "-o", tmp_path / "run")
    fails(result, "dev.conll line 1", "tag 'B-CITY'")
    assert not (tmp_path / "run").exists()
    result = run_cli("finetune", "--task", "ner", "-m", pretrained, "--train-file", NER_TINY / "train.conll",
                     "-o", tmp_path / "run")
    fails(result, "--validation-file")


@pytest.mark.smoke
def test_a_run_trained_in_bf16_is_scored_in_bf16_by_eval_too(tmp_path, pretrained):
    run_dir = tmp_path / "run"
    result = run_cli("finetune", "-r", "finetune/ner-tiny-debug", "-m", pretrained, "-o", run_dir, "-q",
                     "--set", "training.bf16=true", "--set", "training.num_train_epochs=3")
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    again = run_cli("eval", "-m", run_dir, "--data-file", NER_TINY / "dev.conll", "--json")
    scores = json.loads(again.stdout.strip().splitlines()[-1])
    assert scores["eval_f1"] == metrics["eval_f1"] and scores["eval_accuracy"] == metrics["eval_accuracy"]


@pytest.mark.unit
def test_bf16_scoring_runs_under_autocast_and_fp32_does_not(tokenizer):
    """The evaluation's precision follows the run's: its batches see bfloat16 autocast only when asked."""
    import torch

    from bigmodel_cli.tagging.inference import word_probabilities

    seen = []

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))
            self.config = type("C", (), {"num_labels": 3})()

        def forward(self, input_ids, **_):
            seen.append(torch.is_autocast_enabled("cpu"))
            return type("O", (), {"logits": torch.zeros(*input_ids.shape, 3)})()

    sentences = [sentence_of(["anna", "visited", "oslo"])] * 3
    word_probabilities(Probe(), tokenizer, sentences, 16, 2, bf16=True)
    assert seen and all(seen)
    seen.clear()
    word_probabilities(Probe(), tokenizer, sentences, 16, 2)
    assert seen and not any(seen)


@pytest.mark.smoke
def test_report_plots_f1_per_entity_type(tagger, tmp_path):
    run_dir, _ = tagger
    result = run_cli("report", run_dir, "-o", tmp_path / "report")
    assert result.returncode == 0, result.stderr[-2000:]
    plot = tmp_path / "report" / f"entity_f1_{run_dir.name}.png"
    assert plot.is_file() and plot.stat().st_size > 5000
    assert plot.name in (tmp_path / "report" / "report.md").read_text()


@pytest.mark.unit
def test_a_byte_level_tokenizer_takes_words_with_a_space_before_each(tmp_path):
    """RoBERTa's and ModernBERT's byte-level BPE: a word at a sentence's start is tokenized as it is
    mid-sentence (with its space), so a split sentence encodes as the text does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, RobertaTokenizerFast

    from bigmodel_cli.tagging.model import byte_level, word_tokenizer

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(["Anna visited New York", "Oslo is cold"] * 20,
                            trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    RobertaTokenizerFast(tokenizer_object=raw).save_pretrained(tmp_path)
    tok = word_tokenizer(str(tmp_path))
    assert byte_level(tok) and not byte_level(PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(
        {"[UNK]": 0}, unk_token="[UNK]"))))
    words = tok(["Anna", "visited", "Oslo"], is_split_into_words=True, add_special_tokens=False)["input_ids"]
    text = tok(" Anna visited Oslo", add_special_tokens=False)["input_ids"]
    assert words == text
