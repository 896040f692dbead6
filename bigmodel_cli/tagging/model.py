"""The tagger model: a checkpoint with a fresh token-classification head, or a saved tagger; and a
tokenizer that takes words (byte-level BPE ones, RoBERTa's and ModernBERT's, need a space before each)."""

from __future__ import annotations

from bigmodel_cli.models import load_tokenizer, model_error, resolve_model_path
from bigmodel_cli.tagging.tasks import TagTask


def load_tagger(name_or_path: str, task: TagTask, trust_remote_code: bool = False):
    from transformers import AutoModelForTokenClassification

    try:
        model = AutoModelForTokenClassification.from_pretrained(
            resolve_model_path(name_or_path),
            num_labels=len(task.label_names),
            id2label=dict(enumerate(task.label_names)),
            label2id=task.label2id,
            ignore_mismatched_sizes=True,  # a checkpoint with another head gets a fresh one
            use_safetensors=True,
            trust_remote_code=trust_remote_code,
        )
    except Exception as e:
        raise model_error(name_or_path, e) from None
    model.config.finetuning_task = task.name  # eval and predict find the task here
    return model


def word_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    """The model's tokenizer, set up to take sentences already split into words."""
    tokenizer = load_tokenizer(name_or_path, trust_remote_code)
    if getattr(tokenizer, "add_prefix_space", None) is False or byte_level(tokenizer):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(name_or_path), add_prefix_space=True,
                                                  trust_remote_code=trust_remote_code)
    return tokenizer


def byte_level(tokenizer) -> bool:
    """Whether a fast tokenizer splits bytes (GPT-2's pre-tokenizer: RoBERTa, ModernBERT)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and "ByteLevel" in str(backend.pre_tokenizer)


def load_saved_tagger(model_dir: str):
    """A saved tagger and its tokenizer, ready for inference on `inference_device()`; or an exported
    folder run by onnxruntime (its int8 graph where there is one)."""
    from transformers import AutoModelForTokenClassification

    from bigmodel_cli.exported import is_export, load_export
    from bigmodel_cli.models import inference_device

    if is_export(model_dir):
        return load_export(model_dir)[0], word_tokenizer(model_dir)

    try:
        model = AutoModelForTokenClassification.from_pretrained(resolve_model_path(model_dir), use_safetensors=True)
    except Exception as e:
        raise model_error(model_dir, e) from None
    return model.to(inference_device()), word_tokenizer(model_dir)


def is_saved_tagger(model_dir: str) -> bool:
    """Whether `model_dir` holds a token classifier (a `finetune --task ner` run or any other)."""
    from transformers import AutoConfig

    from bigmodel_cli.tagging.tasks import is_tagger

    try:
        return is_tagger(AutoConfig.from_pretrained(resolve_model_path(model_dir)))
    except Exception as e:
        raise model_error(model_dir, e) from None


def saved_data_settings(model_dir: str, tokenizer):
    """The data settings of the run that made a tagger (window length, stride, tag column), so eval and
    predict cut sentences as it did; a model from elsewhere: its tokenizer's length and the defaults."""
    from bigmodel_cli.recipe import LabelledDataSection, read_saved_recipe

    saved = read_saved_recipe(model_dir, "finetune")
    return saved.data if saved else LabelledDataSection(task="ner", max_seq_length=min(tokenizer.model_max_length, 512))


def trained_in_bf16(model_dir: str) -> bool:
    """Whether the run that made a saved tagger trained (and so evaluated) in bfloat16: eval and
    predict score it the same way. An exported folder runs in its graph's own precision."""
    from bigmodel_cli.exported import is_export
    from bigmodel_cli.recipe import read_saved_recipe

    saved = read_saved_recipe(model_dir, "finetune")
    return bool(saved and saved.training.bf16) and not is_export(model_dir)
