"""`bigmodel predict`: label names (or scores) and probabilities from a saved classifier, or the
entities a saved tagger finds (`entity_group`, `score`, `word`, `start`, `end`, as transformers'
token-classification pipeline gives them with `aggregation_strategy="simple"`).

Files stream through in chunks: memory stays bounded whatever the file size. One JSON line per
example: its inputs, the predicted `label` name and `probabilities` per label (or `score` for
regression).
"""

from __future__ import annotations

import json
from pathlib import Path

from bigmodel_cli.console import say, setup
from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.exported import default_batch
from bigmodel_cli.files import check_text_file


def command(model: str, text: str | None, text_pair: str | None, input_file: str | None, output: str | None,
            batch_size: int, quiet: bool) -> None:
    setup(True)
    batch_size = batch_size or default_batch(model)
    texts = [t for t in (text, text_pair) if t is not None]
    if text_pair is not None and text is None:
        raise BigmodelError("--text-pair needs --text")
    count = run(model, texts, input_file, output, batch_size, progress=not quiet and output is not None)
    if output and not quiet:
        say(f"wrote {count} predictions to {output}")


def run(model_dir: str, texts: list[str], input_file: str | None, output: str | None,
        batch_size: int, progress: bool) -> int:
    """Predict and write JSON lines to `output` (or stdout). Returns the number of examples."""
    from bigmodel_cli.classification.inference import predict_rows, sink, write_predictions
    from bigmodel_cli.classification.model import load_saved_classifier

    if bool(texts) == bool(input_file):
        raise BigmodelError("give either --text (and --text-pair) or --input-file")
    if output and Path(output).exists():
        raise BigmodelError(f"--output {output} already exists; choose another file (nothing was overwritten)")
    path = check_text_file(input_file, "--input-file") if input_file else None
    from bigmodel_cli.tagging.model import is_saved_tagger

    if is_saved_tagger(model_dir):
        return run_tagger(model_dir, texts, path, output, batch_size)
    model, tokenizer = load_saved_classifier(model_dir)
    if texts:
        columns = ["sentence1", "sentence2"][: len(texts)]
        with sink(output) as out:
            for record in predict_rows(model, tokenizer, [dict(zip(columns, texts))], columns, batch_size):
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
        return 1
    return write_predictions(model, tokenizer, path, output, batch_size, progress)


CONLL_SUFFIXES = {".conll", ".conllu", ".bio", ".iob", ".iob2", ".bioes", ".tsv"}


def run_tagger(model_dir: str, texts: list[str], path: Path | None, output: str | None, batch_size: int) -> int:
    """A tagger's entities, one JSON line per text: `--text`, a text file (a text per line), CoNLL words
    (one per line, a blank line between sentences) or JSON Lines with `text` or `tokens`."""
    from bigmodel_cli.tagging.inference import write_entities
    from bigmodel_cli.tagging.model import load_saved_tagger, saved_data_settings, trained_in_bf16
    from bigmodel_cli.tagging.reader import file_format, read_sentences, text_sentence
    from bigmodel_cli.tagging.tasks import task_from_model

    if len(texts) > 1:
        raise BigmodelError("--text-pair is for pair classifiers; a tagger takes --text alone")
    if path is None:
        lines = texts
    elif file_format(path) == "jsonl" or path.suffix.lower() in CONLL_SUFFIXES:
        lines = None
    else:
        lines = [line.rstrip("\n") for line in path.open(encoding="utf-8-sig")]
    if lines is None:
        sentences = read_sentences(path, "--input-file", labelled=False)
    else:
        sentences = [text_sentence(line, number) for number, line in enumerate(lines, start=1) if line.strip()]
    model, tokenizer = load_saved_tagger(model_dir)
    data = saved_data_settings(model_dir, tokenizer)
    return write_entities(model, tokenizer, sentences, task_from_model(model.config), output, data.max_seq_length,
                          data.stride, batch_size, trained_in_bf16(model_dir))
