"""`bigmodel predict`: label names (or scores) and probabilities from a saved classifier.

Files stream through in chunks: memory stays bounded whatever the file size. One JSON line per
example: its inputs, the predicted `label` name and `probabilities` per label (or `score` for
regression).
"""

from __future__ import annotations

import json
from pathlib import Path

from bigmodel_cli.console import say, setup
from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.files import check_text_file


def command(model: str, text: str | None, text_pair: str | None, input_file: str | None, output: str | None,
            batch_size: int, quiet: bool) -> None:
    setup(True)
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
    model, tokenizer = load_saved_classifier(model_dir)
    if texts:
        columns = ["sentence1", "sentence2"][: len(texts)]
        with sink(output) as out:
            for record in predict_rows(model, tokenizer, [dict(zip(columns, texts))], columns, batch_size):
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
        return 1
    return write_predictions(model, tokenizer, path, output, batch_size, progress)
