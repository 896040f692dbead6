"""The classifier model: a checkpoint with a fresh head for a task, or a saved classifier as it is."""

from __future__ import annotations

from bigmodel_cli.classification.tasks import Task
from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.models import model_error, resolve_model_path
from bigmodel_cli.recipe import FinetuneRecipe


def load_classifier(recipe: FinetuneRecipe, task: Task):
    """The recipe's model with a head for `task` (a checkpoint with another head gets a fresh one)."""
    from transformers import AutoModelForSequenceClassification

    path = resolve_model_path(recipe.model.name_or_path)
    labels = task.label_names or ("score",)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            path,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={name: i for i, name in enumerate(labels)},
            problem_type="regression" if task.is_regression else "single_label_classification",
            ignore_mismatched_sizes=True,  # a checkpoint with another head gets a fresh one
            use_safetensors=True,  # never unpickle weights: a .bin file can run code
            trust_remote_code=recipe.model.trust_remote_code,
        )
    except Exception as e:
        raise model_error(recipe.model.name_or_path, e) from None
    model.config.finetuning_task = task.name  # eval and predict find the task here
    model.config.text_columns = list(task.text_columns)  # and the columns that hold the inputs
    return model


def load_saved_classifier(model_dir: str):
    """A saved classifier (a finetune run, or any sequence-classification checkpoint), safetensors only,
    ready for inference on `inference_device()`: a BERT's last layer computed for [CLS] only (the same
    logits); or an exported folder run by onnxruntime (its int8 graph where there is one); and its tokenizer."""
    from transformers import AutoModelForSequenceClassification

    from bigmodel_cli.exported import is_export, load_export
    from bigmodel_cli.kernels import classify_from_first_token
    from bigmodel_cli.models import inference_device, load_tokenizer

    if is_export(model_dir):  # `bigmodel export`'s folder: onnxruntime runs it
        return load_export(model_dir)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(resolve_model_path(model_dir), use_safetensors=True)
    except Exception as e:
        raise model_error(model_dir, e) from None
    classify_from_first_token(model)
    return model.to(inference_device()), load_tokenizer(model_dir)


def check_lengths(recipe: FinetuneRecipe, model, tokenizer) -> None:
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and recipe.data.max_seq_length > limit:
        raise BigmodelError(
            f"data.max_seq_length {recipe.data.max_seq_length} is above the model's "
            f"max_position_embeddings {limit}; set data.max_seq_length to at most {limit}"
        )
    if len(tokenizer) > model.config.vocab_size:
        raise BigmodelError(
            f"the tokenizer of {recipe.model.name_or_path} has {len(tokenizer)} tokens but the model only "
            f"{model.config.vocab_size} embeddings: tokenizer and model do not belong together"
        )


def encoder_layers(model):
    """The encoder's stack of layers (BERT's `encoder.layer`, ModernBERT's `layers`, ...): the longest
    `ModuleList` in the base model."""
    import torch

    stacks = [m for m in model.base_model.modules() if isinstance(m, torch.nn.ModuleList)]
    if not stacks:
        raise BigmodelError(f"{type(model).__name__} has no stack of encoder layers to choose from; "
                            "use model.train_layers: all")
    return max(stacks, key=len)


def freeze_for(model, train_layers: str, freeze_embeddings: bool) -> str:
    """Leave trainable only what `model.train_layers` names (the head: every parameter outside the base
    model, and its pooler; the top K encoder layers too), the embeddings frozen on request; returns
    the run header's line with the trainable parameters."""
    total = sum(p.numel() for p in model.parameters())
    if train_layers != "all":
        base = model.base_model
        keep = {id(p) for name, p in model.named_parameters() if not name.startswith(model.base_model_prefix + ".")}
        keep |= {id(p) for name, p in base.named_parameters() if name.startswith("pooler.")}
        if train_layers.startswith("top-"):
            layers = encoder_layers(model)
            count = int(train_layers[4:])
            if count > len(layers):
                raise BigmodelError(f"model.train_layers {train_layers}: the model has {len(layers)} encoder layers; "
                                    f"use at most top-{len(layers)}, or all")
            keep |= {id(p) for layer in list(layers)[-count:] for p in layer.parameters()}
        for p in model.parameters():
            p.requires_grad_(id(p) in keep)
    if freeze_embeddings:
        embeddings = model.get_input_embeddings()
        for module in (getattr(model.base_model, "embeddings", None), embeddings):
            for p in (module.parameters() if module is not None else []):
                p.requires_grad_(False)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    what = {"all": "all layers", "head": "the head only"}.get(train_layers, f"the top {train_layers[4:]} layers and the head")
    frozen = ", embeddings frozen" if freeze_embeddings else ""
    return f"trains {what}{frozen}: {trainable:,} of {total:,} parameters ({100 * trainable / total:.1f} %)"
