"""The model of a masked-LM run: a new BERT, or a checkpoint to continue; and the training head
that skips unmasked positions.

`SparseHeadBertForMaskedLM` projects only the masked positions onto the vocabulary: the same
parameters and loss, ~15 % of the head's cost; saved and loaded as a plain `BertForMaskedLM`.
A continued checkpoint without an MLM head (a sentence encoder, a bare `BertModel`) gets a fresh
one, its decoder tied to the word embeddings as BERT's is.
"""

from __future__ import annotations

from pathlib import Path

import torch.nn.functional as F
from transformers import BertForMaskedLM
from transformers.modeling_outputs import MaskedLMOutput

from bigmodel_cli.recipe import PretrainRecipe


def bert_config(recipe: PretrainRecipe, tokenizer):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        architectures=["BertForMaskedLM"],
        **recipe.model.model_dump(exclude={"name_or_path", "type"}),
    )


def new_config(recipe: PretrainRecipe, tokenizer):
    """The config of a new model of the recipe's family and shape (`model.type`)."""
    m = recipe.model
    if m.type == "bert":
        return bert_config(recipe, tokenizer)
    shape = dict(vocab_size=len(tokenizer), hidden_size=m.hidden_size, num_hidden_layers=m.num_hidden_layers,
                 num_attention_heads=m.num_attention_heads, intermediate_size=m.intermediate_size,
                 pad_token_id=tokenizer.pad_token_id)
    if m.type == "roberta":
        from transformers import RobertaConfig

        return RobertaConfig(**shape, max_position_embeddings=m.max_position_embeddings + 2,  # positions start after pad
                             type_vocab_size=1, bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
                             hidden_dropout_prob=m.hidden_dropout_prob,
                             attention_probs_dropout_prob=m.attention_probs_dropout_prob, architectures=["RobertaForMaskedLM"])
    from transformers import ModernBertConfig

    return ModernBertConfig(**shape, max_position_embeddings=m.max_position_embeddings, cls_token_id=tokenizer.cls_token_id,
                            sep_token_id=tokenizer.sep_token_id, bos_token_id=tokenizer.cls_token_id,
                            eos_token_id=tokenizer.sep_token_id, local_attention=min(128, m.max_position_embeddings),
                            attention_dropout=m.attention_probs_dropout_prob, mlp_dropout=m.hidden_dropout_prob,
                            embedding_dropout=m.hidden_dropout_prob, architectures=["ModernBertForMaskedLM"])


def masked_lm(recipe: PretrainRecipe, tokenizer, checkpoint=None):
    """(model, what it is: one phrase for the run header): a new model of the recipe's family and
    shape, or the checkpoint `model.name_or_path` (its config `checkpoint`, from `checkpoint_config`)
    as a masked LM, with the dropout keys the recipe sets applied."""
    if not recipe.model.name_or_path:
        if recipe.model.type == "bert":
            return SparseHeadBertForMaskedLM(bert_config(recipe, tokenizer)), "new model"
        from transformers import AutoModelForMaskedLM

        return AutoModelForMaskedLM.from_config(new_config(recipe, tokenizer)), f"new {recipe.model.type} model"
    from transformers import AutoModelForMaskedLM

    from bigmodel_cli.errors import BigmodelError
    from bigmodel_cli.models import model_error, resolve_model_path

    name = recipe.model.name_or_path
    path = resolve_model_path(name)
    config = checkpoint
    if len(tokenizer) > config.vocab_size:
        raise BigmodelError(f"{name}'s tokenizer has {len(tokenizer)} tokens but the model only {config.vocab_size} "
                            "embeddings: tokenizer and model do not belong together")
    dropout = dropout_kwargs(recipe, config)
    model_class = SparseHeadBertForMaskedLM if config.model_type == "bert" else AutoModelForMaskedLM
    try:
        model, loading = model_class.from_pretrained(path, output_loading_info=True, use_safetensors=True, **dropout)
    except (OSError, ValueError) as e:
        raise model_error(name, e) from None
    head = {k for k in loading["missing_keys"] if not k.startswith(model.base_model_prefix + ".")}
    model.fresh_head = bool(head)  # read by the trainer: a fresh head warms up before the encoder trains
    if any(map(is_pooler_key, loading["unexpected_keys"])):  # BERT's and RoBERTa's pooler
        keep_pooler(model, path)
    said = f"continued from {name}"
    return model, said + (", with a fresh MLM head tied to its embeddings" if head else ", its own MLM head")


def load_saved_mlm(model_dir: str):
    """A saved masked LM, safetensors only, on `inference_device()`: BERT with the sparse head (the same
    loss, less work), any other family as transformers has it."""
    from transformers import AutoConfig, AutoModelForMaskedLM

    from bigmodel_cli.models import inference_device, model_error, resolve_model_path

    path = resolve_model_path(model_dir)
    try:
        bert = AutoConfig.from_pretrained(path).model_type == "bert"
        model = (SparseHeadBertForMaskedLM if bert else AutoModelForMaskedLM).from_pretrained(path, use_safetensors=True)
    except Exception as e:
        raise model_error(model_dir, e) from None
    return model.to(inference_device())


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


# The recipe's dropout keys under each family's own config names (BERT's names elsewhere).
DROPOUT_NAMES = {"modernbert": {"hidden_dropout_prob": ("mlp_dropout", "embedding_dropout"),
                                "attention_probs_dropout_prob": ("attention_dropout",)}}


def dropout_names(config, key: str) -> tuple[str, ...]:
    """The config attributes that the recipe's dropout `key` sets in this checkpoint (none: it has no such key)."""
    names = DROPOUT_NAMES.get(config.model_type, {}).get(key, (key,))
    return tuple(n for n in names if hasattr(config, n))


def dropout_kwargs(recipe: PretrainRecipe, config) -> dict:
    """The dropout values that the recipe changes from the checkpoint's, under the checkpoint's names."""
    kwargs = {}
    for key in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
        value = getattr(recipe.model, key)
        for name in dropout_names(config, key):
            if value is not None and value != getattr(config, name):
                kwargs[name] = value
    return kwargs


def with_checkpoint(recipe: PretrainRecipe, config) -> PretrainRecipe:
    """`recipe` as the run of checkpoint `config` (from `checkpoint_config`): the checkpoint's family,
    shape and dropout (where the recipe sets none); the recipe's own check then gives a family packing
    is not proven for one line per row. The resolved recipe says what the run trained, and a rerun
    compares equal."""
    from pydantic import ValidationError

    from bigmodel_cli.errors import BigmodelError
    from bigmodel_cli.recipe import SHAPE_KEYS, describe_errors

    chosen = recipe.model.model_fields_set
    model = recipe.model.model_dump()
    model["type"] = config.model_type
    for key in SHAPE_KEYS:
        model[key] = getattr(config, key, None)
    for key in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
        names = dropout_names(config, key)
        if key in chosen and model[key] is not None and not names:
            raise BigmodelError(f"model.{key}: {recipe.model.name_or_path} ({config.model_type}) has no such dropout "
                                "setting; remove the key")
        if key not in chosen:  # the checkpoint's value; null where it has none or several (ModernBERT's two)
            values = {getattr(config, n) for n in names}
            model[key] = values.pop() if len(values) == 1 else None
    resolved = recipe.model_copy(deep=True)
    try:  # the recipe's own check of family against packing runs on this assignment
        resolved.model = type(recipe.model).model_validate(model)
    except ValidationError as e:
        raise BigmodelError(describe_errors(e, type(recipe), "pretrain")) from None
    return resolved


def checkpoint_config(recipe: PretrainRecipe):
    """The config of the checkpoint to continue, checked before any work: it loads, it is a model
    transformers can make a masked LM of, and the shape keys the recipe sets and its length fit it."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    from bigmodel_cli.errors import BigmodelError
    from bigmodel_cli.models import model_error, resolve_model_path
    from bigmodel_cli.recipe import SHAPE_KEYS

    name = recipe.model.name_or_path
    try:
        config = AutoConfig.from_pretrained(resolve_model_path(name))
    except Exception as e:
        raise model_error(name, e) from None
    if config.model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        raise BigmodelError(
            f"model.name_or_path {name} is a {config.model_type} checkpoint, which cannot become a masked LM; "
            "choose an encoder (BERT, RoBERTa, ModernBERT, ...)")
    chosen = recipe.model.model_fields_set
    for key in SHAPE_KEYS:
        if key in chosen and getattr(config, key, None) != getattr(recipe.model, key):
            raise BigmodelError(
                f"model.{key} {getattr(recipe.model, key)} differs from {name}'s {getattr(config, key, None)}: a "
                "continued checkpoint keeps its shape; remove the key (recipe pretrain/continue sets none)")
    limit = getattr(config, "max_position_embeddings", None)
    if limit and recipe.data.max_seq_length > limit:
        raise BigmodelError(f"data.max_seq_length {recipe.data.max_seq_length} is above {name}'s "
                            f"max_position_embeddings {limit}; set data.max_seq_length to at most {limit}")
    return config


class SparseHeadBertForMaskedLM(BertForMaskedLM):
    """`BertForMaskedLM` whose training loss projects only the masked positions onto the
    vocabulary. Same parameters, same loss; saved and loaded as a plain `BertForMaskedLM`."""

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                labels=None, num_items_in_batch=None, masked_positions=None, **kwargs):
        if labels is None:
            return super().forward(input_ids=input_ids, attention_mask=attention_mask,
                                   token_type_ids=token_type_ids, position_ids=position_ids, **kwargs)
        hidden = self.bert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                           position_ids=position_ids, return_dict=True).last_hidden_state
        if masked_positions is None:  # found here: a boolean index, which waits for the GPU
            targets = labels != -100
            hidden, labels = hidden[targets], labels[targets]
        else:  # the collator's flat indices of the masked tokens: a gather, no host sync
            hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, masked_positions)
            labels = labels.reshape(-1).index_select(0, masked_positions)
        logits = self.cls(hidden).float()
        if num_items_in_batch is None:  # one micro-batch: the mean over its masked tokens
            loss = F.cross_entropy(logits, labels)
        else:  # the Trainer's count over all micro-batches (and processes): exact accumulation
            loss = F.cross_entropy(logits, labels, reduction="sum") / num_items_in_batch
        return MaskedLMOutput(loss=loss, logits=None)
