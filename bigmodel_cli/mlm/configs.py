"""The config of a masked-LM run's model: a new one of the recipe's family and shape, or the
checkpoint to continue, checked against the recipe before any work, with the recipe's dropout keys
under each family's own names."""

from __future__ import annotations

from bigmodel_cli.recipe import PretrainRecipe


def bert_config(recipe: PretrainRecipe, tokenizer):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        architectures=["BertForMaskedLM"],
        **recipe.model.model_dump(exclude={"name_or_path", "type", "objective"}),
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
