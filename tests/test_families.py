"""`model.type`: three encoder families from scratch, each with the tokenizer the same command trains."""

from __future__ import annotations

import json
import math

import pytest
from conftest import TINY, run_cli

pytestmark = pytest.mark.smoke

FAMILIES = {  # model.type: (the class saved, the tokenizer model trained)
    "roberta": ("RobertaForMaskedLM", "BPE"),
    "modernbert": ("ModernBertForMaskedLM", "BPE"),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_family_pretrains_with_its_own_tokenizer_on_the_stock_path(tmp_path, family):
    run_dir = tmp_path / family
    extra = ["--set", "data.whole_word_masking=true"] if family == "roberta" else []  # byte-level BPE word starts
    result = run_cli("pretrain", "-r", f"pretrain/tiny-debug-{family}", "-o", run_dir, "--set", "training.report_to=[none]",
                     *extra)
    assert result.returncode == 0, result.stderr[-2000:]
    model_class, tokenizer_model = FAMILIES[family]
    header = next(line for line in result.stderr.splitlines() if line.startswith("bigmodel pretrain"))
    assert f"new {family} model" in header and f"stock code path ({model_class}" in header
    assert json.loads((run_dir / "tokenizer.json").read_text())["model"]["type"] == tokenizer_model
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    model = AutoModelForMaskedLM.from_pretrained(run_dir)
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    assert type(model).__name__ == model_class and len(tokenizer) == model.config.vocab_size == 400
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert math.isfinite(metrics["perplexity"]) and metrics["perplexity"] < 0.6 * len(tokenizer)  # uniform: 400
    again = run_cli("eval", "--model", run_dir, "--task", "mlm", "--data-file", TINY / "tiny-corpus.txt", "--json")
    assert again.returncode == 0, again.stderr[-2000:]
    assert math.isfinite(json.loads(again.stdout.strip().splitlines()[-1])["perplexity"])
    finetuned = run_cli("finetune", "-r", "finetune/mrpc-tiny-debug", "--model", run_dir, "-o", tmp_path / "ft", "-q",
                        "--set", "training.report_to=[none]")
    assert finetuned.returncode == 0, finetuned.stderr[-2000:]
    assert "eval_f1" in json.loads((tmp_path / "ft" / "metrics.json").read_text())


def test_an_unknown_family_and_packing_on_another_family_name_the_key(tmp_path):
    unknown = run_cli("pretrain", "-r", "pretrain/tiny-debug", "-o", tmp_path / "a", "--set", "model.type=gpt")
    assert unknown.returncode == 2 and "model.type" in unknown.stderr and "Traceback" not in unknown.stderr
    packed = run_cli("pretrain", "-r", "pretrain/tiny-debug-roberta", "-o", tmp_path / "b", "--set", "data.packing=true")
    assert packed.returncode == 2 and "data.packing is true but model.type is roberta" in packed.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
