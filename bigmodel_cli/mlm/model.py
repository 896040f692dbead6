"""The model of a masked-LM run: a new one, or a checkpoint to continue; and a saved one to evaluate.

A continued checkpoint without an MLM head (a sentence encoder, a bare `BertModel`) gets a fresh
one, its decoder tied to the word embeddings as BERT's is.
"""

from __future__ import annotations

from bigmodel_cli.mlm.configs import bert_config, dropout_kwargs, new_config
from bigmodel_cli.mlm.pooler import is_pooler_key, keep_pooler
from bigmodel_cli.mlm.sparse_head import SparseHeadBertForMaskedLM
from bigmodel_cli.recipe import PretrainRecipe


def masked_lm(recipe: PretrainRecipe, tokenizer, checkpoint=None):
    """(model, what it is: one phrase for the run header): a new model of the recipe's family and
    shape, or the checkpoint `model.name_or_path` (its config `checkpoint`, from `checkpoint_config`)
    as a masked LM, with the dropout keys the recipe sets applied."""
    if not recipe.model.name_or_path:
        if recipe.model.objective == "mlm+nsp":
            from bigmodel_cli.mlm.pairs import SparseHeadBertForPreTraining

            config = bert_config(recipe, tokenizer)
            config.architectures = ["BertForPreTraining"]
            return SparseHeadBertForPreTraining(config), "new model, BERT's objective: masked LM + next sentence"
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
