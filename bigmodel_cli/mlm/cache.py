"""The on-disk cache of prepared corpora: trained tokenizers and packed rows, each in a folder named
by a hash of everything that decides it, made whole or not at all.

`$BIGMODEL_CACHE` (default `~/.cache/bigmodel`) holds `tokenizers/KEY/` and `rows/KEY/`. A folder is
built under a staging name and renamed into place when complete, so a run killed while building
leaves nothing another run would read, and two processes building the same folder keep one.
A changed corpus file (path, size, modification time) or setting gives another key: never stale.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from bigmodel_cli.recipe import PretrainRecipe

FORMAT = 2  # raised when what a folder holds changes: older folders are then never read
COMPLETE = "complete"  # the file whose presence marks a folder whole


def cache_root() -> Path:
    """Where prepared corpora are kept: `$BIGMODEL_CACHE`, else `~/.cache/bigmodel`."""
    return Path(os.environ.get("BIGMODEL_CACHE") or Path.home() / ".cache" / "bigmodel").expanduser()


def file_identity(path: str) -> list:
    """A file as the cache knows it: its absolute path, size and modification time."""
    stat = Path(path).stat()
    return [str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns]


def corpus_identity(recipe: PretrainRecipe, corpus, splits: tuple[str, ...]) -> dict:
    """The `splits` of `corpus` (`corpus.Corpus`) as the cache knows them: the local files (globs
    expanded, blank files left out), or the hub data set with the files `datasets` cached it in; and
    the held-out split's settings, which decide the training lines too."""
    data = recipe.data
    if corpus.files:
        identity = {split: [file_identity(f) for f in corpus.files.get(split, [])] for split in splits}
        identity["text_column"] = data.text_column  # JSON Lines: which key is the text
        identity["encoding"] = data.encoding
    elif corpus.streamed:  # a hub data set read as a stream: its name is all there is
        identity = {"hub": [data.dataset_name, data.dataset_config_name, data.text_column]}
    else:
        identity = {"hub": [data.dataset_name, data.dataset_config_name, data.text_column],
                    "files": [file_identity(c["filename"]) for split in splits for c in corpus.raw[split].cache_files]}
    if corpus.streamed:  # its tokenizer trains on the stream's first lines, its held-out lines are the first
        identity["streamed"] = True
    identity["held_out"] = [data.validation_split_percentage, recipe.training.seed, data.max_train_samples,
                            data.max_eval_samples, bool(corpus.files.get("validation"))]
    if recipe.model.objective != "mlm":  # whole documents held out, and the pairs made of them
        identity["documents"] = [recipe.model.objective, data.document_separator, data.dupe_factor]
    return identity


def folder_for(kind: str, decided: dict) -> Path:
    """The cache folder of `kind` (tokenizers, rows) for what `decided` holds, hashed."""
    key = hashlib.sha256(json.dumps({"format": FORMAT, **decided}, sort_keys=True).encode()).hexdigest()[:24]
    return cache_root() / kind / key


def is_complete(folder: Path) -> bool:
    return (folder / COMPLETE).is_file()


def build(folder: Path, fill: Callable[[Path], None]) -> None:
    """`fill` a staging folder, mark it complete and rename it to `folder`; where another process
    finished first, its folder is kept and ours dropped."""
    staging = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    fill(staging)
    (staging / COMPLETE).write_text("")
    try:
        staging.rename(folder)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not is_complete(folder):
            raise
