"""A continued checkpoint's pooler, kept in the masked LM that has none, so that a classifier
fine-tuned from the run starts from the checkpoint's pooler and not a random one."""

from __future__ import annotations

from pathlib import Path


def keep_pooler(model, path) -> None:
    """The checkpoint's pooler rides along, frozen, in the masked LM that has none (`BertForMaskedLM`
    builds its encoder without one), so the run saves it and a classifier fine-tuned from the run
    starts from the checkpoint's pooler, not a random one. The MLM loss never reaches it. Only the
    pooler's tensors are read from the checkpoint's files, not the whole model a second time."""
    import torch

    base = model.base_model
    if not hasattr(base, "pooler"):  # a family without one: nothing to read
        return
    weights = pooler_weights(path)
    if not weights:
        return
    with torch.device("meta"):  # the family's own pooler class and shape, no memory, no initialisation
        pooler = type(base)(base.config, add_pooling_layer=True).pooler
    dtype = base.get_input_embeddings().weight.dtype  # the model's, whatever the file holds
    pooler.load_state_dict({name: tensor.to(dtype) for name, tensor in weights.items()}, assign=True)
    model.base_model.pooler = pooler.requires_grad_(False)


def is_pooler_key(key: str) -> bool:
    """Whether a checkpoint's tensor name is its pooler's (`pooler.dense.weight`, `bert.pooler...`)."""
    return "pooler" in key.split(".")


def pooler_weights(path) -> dict:
    """The pooler's tensors of the safetensors checkpoint at `path` (a folder or hub id, sharded or
    not), under the pooler's own names (`dense.weight`); only the files that hold them are opened."""
    import json

    from safetensors import safe_open
    from transformers.utils import cached_file

    index = cached_file(path, "model.safetensors.index.json", _raise_exceptions_for_missing_entries=False)
    if index:
        files = sorted({file for key, file in json.loads(Path(index).read_text())["weight_map"].items()
                        if is_pooler_key(key)})
    else:
        files = ["model.safetensors"]
    weights = {}
    for name in files:
        with safe_open(cached_file(path, name), framework="pt") as f:
            for key in filter(is_pooler_key, f.keys()):
                weights[key.split("pooler.", 1)[1]] = f.get_tensor(key)
    return weights
