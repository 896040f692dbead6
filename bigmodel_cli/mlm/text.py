"""Plain text to training rows: one example per line, long lines split, lines packed into rows.

- `load_corpus`: train and held-out lines from local files (or a hub data set), blank lines dropped.
- `tokenize_lines`: one example per line; a line longer than `max_seq_length` is split into
  several examples rather than truncated (truncation dropped ~29 % of WikiText's tokens).
- `pack`: several lines share one sequence; the collator gives each its own block of the attention
  mask and its own positions, so every line still sees only itself (exact, no cross-talk).
"""

from __future__ import annotations

import bisect

from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.files import check_text_file
from bigmodel_cli.recipe import PretrainRecipe
from bigmodel_cli.seeds import derive_seed


def load_corpus(recipe: PretrainRecipe):
    """Train and held-out lines as a DatasetDict of `text`; blank and whitespace-only lines dropped."""
    from datasets import load_dataset

    data = recipe.data
    if data.train_files:
        files = {"train": [str(check_text_file(f, "data.train_files:")) for f in data.train_files]}
        if data.eval_files:
            files["validation"] = [str(check_text_file(f, "data.eval_files:")) for f in data.eval_files]
        raw = load_dataset("text", data_files=files)
    else:
        try:
            raw = load_dataset(data.dataset_name, data.dataset_config_name)
        except Exception as e:  # connection, offline mode, unknown name: all say the same to a user
            raise BigmodelError(
                f"data.dataset_name '{data.dataset_name}' could not be loaded ({type(e).__name__}); "
                "offline, give local text files in data.train_files"
            ) from None
    raw = raw.filter(lambda row: bool(row["text"].strip()), desc="dropping blank lines")
    if len(raw["train"]) == 0:
        raise BigmodelError("the training corpus has no non-blank lines; check data.train_files")
    if "validation" not in raw:
        split = raw["train"].train_test_split(
            test_size=data.validation_split_percentage / 100, seed=derive_seed(recipe.training.seed, "split")
        )
        raw["train"], raw["validation"] = split["train"], split["test"]
    if data.max_train_samples:
        raw["train"] = raw["train"].select(range(min(data.max_train_samples, len(raw["train"]))))
    if data.max_eval_samples:
        raw["validation"] = raw["validation"].select(range(min(data.max_eval_samples, len(raw["validation"]))))
    if len(raw["validation"]) == 0:
        raise BigmodelError("no held-out lines; raise data.validation_split_percentage or give data.eval_files")
    return raw


def chunk_line(ids: list[int], max_content: int) -> list[list[int]]:
    """Split one line's token ids into pieces of at most `max_content` tokens (none dropped)."""
    return [ids[i : i + max_content] for i in range(0, len(ids), max_content)] or [[]]


def tokenize_lines(dataset, tokenizer, max_seq_length: int, num_proc: int | None = None):
    """`text` lines -> examples with `input_ids` ([CLS] piece [SEP], at most max_seq_length) and a
    unique `example_id` that seeds the example's masks."""
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id

    def encode(batch):
        pieces = []
        for ids in tokenizer(batch["text"], add_special_tokens=False)["input_ids"]:
            pieces.extend([cls_id, *piece, sep_id] for piece in chunk_line(ids, max_seq_length - 2))
        return {"input_ids": pieces}

    data = dataset.map(
        encode, batched=True, remove_columns=dataset.column_names, num_proc=num_proc, desc="tokenizing"
    )
    return data.add_column("example_id", list(range(len(data))))


def pack(lengths: list[int], capacity: int) -> list[list[int]]:
    """Best-fit-decreasing bin packing: indices of examples grouped so that each group's lengths
    sum to at most `capacity`. Deterministic."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    free: list[tuple[int, int]] = []  # (space left, bin index), sorted
    bins: list[list[int]] = []
    for i in order:
        n = lengths[i]
        at = bisect.bisect_left(free, (n, -1))
        if at < len(free):
            space, b = free.pop(at)
            bins[b].append(i)
            if space - n > 0:
                bisect.insort(free, (space - n, b))
        else:
            bins.append([i])
            if capacity - n > 0:
                bisect.insort(free, (capacity - n, len(bins) - 1))
    return bins


def packed_dataset(examples, max_seq_length: int, packing: bool):
    """Rows of one or more examples: `input_ids` (concatenated), `lengths` and `example_ids`."""
    from datasets import Dataset

    ids, eids = examples["input_ids"], examples["example_id"]
    groups = pack([len(x) for x in ids], max_seq_length) if packing else [[i] for i in range(len(ids))]
    groups.sort(key=lambda g: min(eids[i] for i in g))  # keep corpus order; the sampler shuffles
    return Dataset.from_dict(
        {
            "input_ids": [[t for i in g for t in ids[i]] for g in groups],
            "lengths": [[len(ids[i]) for i in g] for g in groups],
            "example_ids": [[eids[i] for i in g] for g in groups],
        }
    )


def tokenize_corpus(recipe: PretrainRecipe, tokenizer, raw, packing: bool):
    """Lines -> examples (long lines split, not dropped) -> rows (packed when `packing`)."""
    rows = []
    for split in ("train", "validation"):
        examples = tokenize_lines(raw[split], tokenizer, recipe.data.max_seq_length)
        rows.append(packed_dataset(examples, recipe.data.max_seq_length, packing))
    return rows
