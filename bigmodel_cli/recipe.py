"""Recipes: plain YAML turned into typed, validated objects at the edge.

`load_recipe()` merges defaults < YAML < command-line flags < `--set key=value` overrides, in that
order; where none of them sets the precision or compilation, an `accelerate launch` config's
does (`launch_settings`). An unknown key, a wrong type or an impossible value is a `BigmodelError` that names the
file, the key and, for a typo, the nearest valid key. Past this module no code sees a raw dict.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bigmodel_cli.errors import BigmodelError

SOURCE_RECIPES = Path(__file__).resolve().parent.parent / "recipes"  # a source checkout
PACKAGED_RECIPES = Path(__file__).resolve().parent / "recipes"  # an installed wheel


def recipes_dir() -> Path:
    return PACKAGED_RECIPES if PACKAGED_RECIPES.is_dir() else SOURCE_RECIPES


BUDGET_SCHEDULES = ("linear", "cosine", "constant", "constant_with_warmup")  # laid over a time budget


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------------------------
# Shared: the Trainer's own arguments, under their TrainingArguments names.
# --------------------------------------------------------------------------------------------
# TrainingArguments fields that bigmodel sets itself, and where the user sets them instead.
MANAGED_TRAINER_KEYS = {
    "output_dir": "give --output-dir",
    "disable_tqdm": "give --quiet",
    "use_cpu": "bigmodel trains on the GPU where there is one",
    "logging_nan_inf_filter": "bigmodel stops at the first non-finite loss",
    "fsdp": "launch with --config accelerate/fsdp",
    "deepspeed": "launch with --config accelerate/deepspeed-zero2",
    "local_rank": "the launcher sets it",
}


def trainer_fields() -> set[str]:
    """The fields `transformers.TrainingArguments` takes."""
    import dataclasses

    from transformers import TrainingArguments

    return {f.name for f in dataclasses.fields(TrainingArguments) if f.init}


def training_key_problems(section) -> dict[str, str]:
    """{key: what is wrong} for each key of a training section that is neither bigmodel's nor a
    `TrainingArguments` field (the nearest named), or one bigmodel sets itself."""
    if not isinstance(section, dict):
        return {}
    unknown = [key for key in section if key not in TrainingSection.model_fields]
    if not unknown:
        return {}
    fields, problems = trainer_fields(), {}
    for key in unknown:
        if key in MANAGED_TRAINER_KEYS:
            problems[key] = f"training.{key} is bigmodel's to set: {MANAGED_TRAINER_KEYS[key]}"
        elif key not in fields:
            near = difflib.get_close_matches(key, [*TrainingSection.model_fields, *fields], n=1, cutoff=0.5)
            hint = f" (did you mean 'training.{near[0]}'?)" if near else ""
            problems[key] = f"unknown key 'training.{key}'{hint}: neither a bigmodel key nor a TrainingArguments field"
    return problems


class ProbeSection(Section):
    """`training.probe`: during pretraining, a linear classifier fitted on the encoder's frozen features of a
    labelled task's training split (a sample of it), scored on its dev split; `probe_accuracy` and `probe_f1`
    are logged with the loss."""

    task: str = "mrpc"  # a GLUE classification task (checked where the probe reads it: mlm/probe.py)
    data_dir: str | None = None  # GLUE's files of the task; null: the hub's nyu-mll/glue
    every: int | str = 500  # steps between probes, or seconds as "60s"
    train_samples: int = Field(2000, ge=10)  # training pairs the classifier is fitted on (a seeded sample)
    pooling: Literal["mean", "cls"] = "mean"  # features: the mean of the last layer's token states, or [CLS]'s
    # a pair task: each sentence encoded alone, the classifier fed [u, v, |u-v|, u*v] (InferSent's features);
    # false: the pair encoded together, as one input
    pair_features: bool = True
    max_seq_length: int = Field(128, ge=8)  # tokens per example (at most data.max_seq_length)

    @field_validator("every")
    @classmethod
    def _every(cls, value):
        if isinstance(value, str):
            text = value.strip().lower()
            number = text[:-1] if text.endswith("s") else None
            try:
                seconds = float(number) if number is not None else None
            except ValueError:
                seconds = None
            if seconds is None or seconds <= 0:
                raise ValueError(f"training.probe.every '{value}': give steps (500) or seconds ('60s')")
            return f"{seconds:g}s"
        if value < 1:
            raise ValueError(f"training.probe.every {value}: give at least 1 step, or seconds ('60s')")
        return value

    def seconds(self) -> float | None:
        """The seconds between probes, or None where `every` counts steps."""
        return float(self.every[:-1]) if isinstance(self.every, str) else None


class TrainingSection(Section):
    """Fields named as in `transformers.TrainingArguments`, so `--set training.X=...` means what a
    Hugging Face user expects. `time_budget` is bigmodel's own. Any other `TrainingArguments` field
    (`gradient_checkpointing`, `lr_scheduler_kwargs`, ...) passes through to Trainer as given; a key
    that is neither is refused, naming the nearest."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _trainer_keys(cls, data):
        if not isinstance(data, dict):
            return data
        problems = training_key_problems(data)
        if problems:
            raise ValueError("; ".join(problems.values()))
        return data

    learning_rate: float = Field(5e-5, gt=0)  # peak learning rate of the schedule
    num_train_epochs: float = Field(3.0, gt=0)  # passes over the training set (max_steps wins if > 0)
    max_steps: int = -1  # total optimizer steps; -1 means num_train_epochs decides
    # examples per optimizer step, all processes together; per-device batch and accumulation are derived
    global_batch_size: int | None = Field(None, ge=1)
    per_device_train_batch_size: int = Field(32, ge=1)  # examples per process per micro-batch (with global_batch_size: the most that fits)
    per_device_eval_batch_size: int = Field(32, ge=1)  # per process; batches are length-sorted (on 2 cores 32 beat 256 by 1.6x)
    gradient_accumulation_steps: int = Field(1, ge=1)  # micro-batches summed into one step
    warmup_steps: float = Field(0.0, ge=0)  # an int is steps; a float in [0, 1) a fraction of all steps
    weight_decay: float = Field(0.0, ge=0)  # AdamW decoupled weight decay
    lr_scheduler_type: str = "linear"  # any transformers SchedulerType: linear, cosine, constant...
    max_grad_norm: float = Field(1.0, ge=0)  # gradient clipping; 0 turns it off
    adam_beta2: float = Field(0.999, gt=0, lt=1)
    seed: int = 42  # seeds model init, data order and masking
    logging_steps: float = Field(20, gt=0)  # log the training loss every N steps
    eval_strategy: Literal["no", "steps", "epoch"] = "epoch"  # when to evaluate during training
    eval_steps: float | None = None  # with eval_strategy=steps
    save_strategy: Literal["no", "steps", "epoch"] = "epoch"  # when to write a checkpoint
    save_steps: float = Field(500, gt=0)  # with save_strategy=steps
    save_total_limit: int | None = Field(2, ge=1)  # checkpoints kept on disk (the best is never deleted)
    bf16: bool = False  # bfloat16 autocast (Ampere+ GPU); MiniLM training on CPUs: 1.4x faster with AMX-BF16, 16x slower without
    fp16: bool = False  # float16 autocast with loss scaling: for GPUs without native bf16 (T4, V100, RTX 20xx)
    optim: str = "adamw_torch_fused"  # any transformers OptimizerNames; fused (one kernel for all tensors) is Trainer's own default
    dataloader_drop_last: bool = False  # each epoch in whole global batches: fill the last one (false) or cut it (true)
    dataloader_num_workers: int = Field(0, ge=0)  # background processes that collate batches
    report_to: list[str] = ["tensorboard"]  # experiment loggers: tensorboard, wandb, mlflow, none
    time_budget: float | None = Field(None, gt=0)  # seconds of training; the schedule ends at zero then
    ddp_timeout: int = Field(1800, ge=1)  # seconds a process waits for the others (one prepares the data while they wait)
    torch_compile: bool = False  # compile the model (torch.compile); GPU speed-up not measured yet, on CPU it was slower
    # keep the best evaluation's model, not the last: null lets the command decide (finetune: yes when it
    # evaluates; pretrain: no); true needs a checkpoint at every evaluation (save_strategy = eval_strategy)
    load_best_model_at_end: bool | None = None
    probe: ProbeSection | None = None  # pretrain: a downstream probe during training (ProbeSection)

    @field_validator("eval_strategy", "save_strategy", mode="before")
    @classmethod
    def _unquoted_no(cls, value):
        return "no" if value is False else value  # YAML reads an unquoted `no` as false

    @model_validator(mode="after")
    def _check(self) -> TrainingSection:
        if self.warmup_steps >= 1 and self.warmup_steps != int(self.warmup_steps):
            raise ValueError("warmup_steps: give whole steps (e.g. 100) or a fraction below 1 (e.g. 0.1)")
        if self.bf16 and self.fp16:
            raise ValueError("bf16 and fp16 are both true: choose one (bf16 on Ampere or newer GPUs, fp16 on older ones)")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError("max_steps: must be a positive number of steps, or -1 to use num_train_epochs")
        if self.time_budget and self.lr_scheduler_type not in BUDGET_SCHEDULES:
            raise ValueError(f"training.lr_scheduler_type {self.lr_scheduler_type} cannot follow training.time_budget "
                             f"(the number of steps is unknown): choose one of {', '.join(BUDGET_SCHEDULES)}, or give "
                             "training.max_steps instead of a time budget")
        return self

    def trainer_kwargs(self) -> dict[str, Any]:
        """The fields that `TrainingArguments` takes, in its own units."""
        kwargs = self.model_dump(exclude={"time_budget", "global_batch_size", "load_best_model_at_end", "probe"})
        if kwargs["warmup_steps"] >= 1:
            kwargs["warmup_steps"] = int(kwargs["warmup_steps"])
        if kwargs["eval_steps"] is None:
            kwargs.pop("eval_steps")
        return kwargs


# --------------------------------------------------------------------------------------------
# pretrain
# --------------------------------------------------------------------------------------------
SHAPE_KEYS = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size", "max_position_embeddings")


FAMILIES = ("bert", "roberta", "modernbert")  # the families a new model can be


class BertSection(Section):
    """The shape of a model trained from scratch (`transformers.BertConfig` names), or the checkpoint
    to continue (`name_or_path`), which brings its own shape and tokenizer: its run's resolved recipe
    then holds the checkpoint's family and shape (null where the checkpoint names a key otherwise)."""

    name_or_path: str | None = None  # continue pretraining this checkpoint (folder or hub id); null: from scratch
    # a checkpoint without an MLM head: its fresh head trains alone for this share of the run (of the time
    # budget, else of the steps) before the encoder joins, so random head gradients do not wash through it
    fresh_head_warmup: float = Field(0.2, ge=0, lt=1)
    # a fresh head's learning rate (warm-up and after; null: training.learning_rate): a new layer learns
    # fast while the pretrained encoder moves little
    fresh_head_learning_rate: float | None = Field(None, gt=0)
    # the family of a new model, each with the tokenizer it trains: bert (WordPiece), roberta (byte-level
    # BPE, no token types), modernbert (rotary positions, GeGLU, local/global attention; byte-level BPE);
    # a continued checkpoint's own model_type
    type: str = "bert"
    # mlm: masked LM alone (RoBERTa found next-sentence prediction does not help); mlm+nsp: BERT's own
    # pretraining (BertForPreTraining), sentence pairs from consecutive lines of a document, half with a
    # random second sentence; a new bert model only
    objective: Literal["mlm", "mlm+nsp"] = "mlm"
    num_hidden_layers: int | None = Field(2, ge=1)  # transformer blocks
    hidden_size: int | None = Field(128, ge=8)  # width of every block
    num_attention_heads: int | None = Field(2, ge=1)  # must divide hidden_size
    intermediate_size: int | None = Field(512, ge=8)  # feed-forward width
    max_position_embeddings: int | None = Field(512, ge=8)  # longest sequence the model can see
    hidden_dropout_prob: float | None = Field(0.1, ge=0, lt=1)  # ModernBERT: its mlp and embedding dropout
    attention_probs_dropout_prob: float | None = Field(0.1, ge=0, lt=1)  # ModernBERT: its attention dropout

    @model_validator(mode="after")
    def _new_model_fits(self) -> BertSection:
        if self.objective != "mlm" and (self.name_or_path or self.type != "bert"):
            what = f"model.name_or_path {self.name_or_path}" if self.name_or_path else f"model.type {self.type}"
            raise ValueError(f"model.objective {self.objective} trains a new bert model (BertForPreTraining), not "
                             f"{what}: set model.objective=mlm")
        if self.name_or_path:  # a checkpoint's own family and shape, checked when it loads
            return self
        if self.fresh_head_learning_rate is not None:
            raise ValueError("model.fresh_head_learning_rate is for a continued checkpoint's fresh MLM head; a new model "
                             "trains at training.learning_rate: remove the key, or set model.name_or_path")
        if self.fresh_head_warmup != type(self).model_fields["fresh_head_warmup"].default:  # a saved recipe holds the default
            raise ValueError(f"model.fresh_head_warmup {self.fresh_head_warmup:g} is for a continued checkpoint's fresh MLM "
                             "head; a new model trains every layer from the first step: remove the key, or set "
                             "model.name_or_path")
        if self.type not in FAMILIES:
            raise ValueError(f"model.type {self.type}: a new model is one of {', '.join(FAMILIES)} (another family: "
                             "continue one of its checkpoints with model.name_or_path)")
        unset = [k for k in (*SHAPE_KEYS, "hidden_dropout_prob", "attention_probs_dropout_prob") if getattr(self, k) is None]
        if unset:
            raise ValueError(f"model.{unset[0]} is null: a new model needs a number (null is for a continued checkpoint)")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                f"{self.num_attention_heads}"
            )
        return self


class TokenizerSection(Section):
    name_or_path: str | None = None  # an existing tokenizer; null trains one on the corpus (model.type's kind)
    vocab_size: int = Field(30522, ge=16)  # size of the trained vocabulary (WordPiece, or byte-level BPE)
    lowercase: bool = True  # lower-case and strip accents before splitting
    min_frequency: int = Field(2, ge=1)  # a pair must occur this often to become a token


class CorpusSection(Section):
    # files or globs (corpus/*.txt): plain text, one example per line (blank lines dropped), .gz/.zst
    # compressed, or JSON Lines (.jsonl) whose text_column holds the text
    train_files: list[str] = []
    eval_files: list[str] = []  # held-out text; empty: hold out validation_split_percentage of train
    dataset_name: str | None = None  # a hub data set, used when train_files is empty
    dataset_config_name: str | None = None
    text_column: str = "text"  # the key (JSON Lines) or column (hub data set) that holds the text
    encoding: str = "utf-8"  # of the text files
    shared_cache: bool = False  # the cache ($BIGMODEL_CACHE) is seen by every machine: one process in all prepares
    # read the lines as a stream and make rows on the fly (corpora bigger than the disk, or on the hub): nothing is
    # cached but the tokenizer; held out: data.eval_files, else the stream's first max_eval_samples (1000) lines
    streaming: bool = False
    validation_split_percentage: float = Field(5.0, gt=0, lt=100)  # % of lines held out
    max_seq_length: int = Field(128, ge=8)  # tokens per sequence, [CLS] and [SEP] included
    mlm_probability: float = Field(0.15, gt=0, lt=1)  # share of tokens masked for prediction
    max_train_samples: int | None = Field(None, ge=1)  # keep only the first N lines (debugging)
    max_eval_samples: int | None = Field(None, ge=1)
    packing: bool = True  # put several lines in one sequence (block-diagonal attention, exact)
    whole_word_masking: bool = False  # mask all pieces of a word together (WordPiece ## or byte-level BPE words)
    preprocessing_num_workers: int | None = Field(None, ge=1)  # processes that tokenize; null: the machine's cores
    # model.objective mlm+nsp: a line matching this regular expression (the whole stripped line) ends a
    # document and is dropped, and blank lines are skipped; null: blank lines end documents
    document_separator: str | None = None
    # mlm+nsp: the training pairs made this many times, each with other random second sentences (BERT's
    # create_pretraining_data used 10): over many epochs of a small corpus, one set is learnt by heart
    dupe_factor: int = Field(1, ge=1)
    # draw the training masks on the device (the same masks as on the host, no host work per line);
    # null: on a GPU only
    mask_on_device: bool | None = None

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        import codecs

        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"'{value}' is not an encoding Python knows (e.g. utf-8, latin-1, cp1252)") from None
        return value

    @field_validator("document_separator")
    @classmethod
    def _pattern(cls, value: str | None) -> str | None:
        import re

        if value is not None:
            try:
                re.compile(value)
            except re.error as e:
                raise ValueError(f"'{value}' is not a regular expression ({e})") from None
        return value

    @model_validator(mode="after")
    def _has_source(self) -> CorpusSection:
        if not self.train_files and not self.dataset_name:
            raise ValueError("give data.train_files (local text files) or data.dataset_name (hub)")
        return self


class PretrainRecipe(Section):
    model: BertSection = BertSection()
    tokenizer: TokenizerSection = TokenizerSection()
    data: CorpusSection
    training: TrainingSection = TrainingSection()

    @model_validator(mode="after")
    def _fits(self) -> PretrainRecipe:
        if self.model.type != "bert" and self.data.packing:  # a new model's family, or the checkpoint's (`with_checkpoint`)
            if "packing" in self.data.model_fields_set:
                family = (f"{self.model.name_or_path} is a {self.model.type} checkpoint" if self.model.name_or_path
                          else f"model.type is {self.model.type}")
                raise ValueError(f"data.packing is true but {family}: packed rows (block-diagonal masks, per-line "
                                 "positions) are proven for bert only; set data.packing=false")
            self.data.packing = False  # one line per row, and the resolved recipe says so
        if self.model.objective == "mlm+nsp":
            if self.data.streaming:
                raise ValueError("model.objective mlm+nsp pairs lines of whole documents, which a stream does not "
                                 "hold: set data.streaming=false, or model.objective=mlm")
            if self.data.packing:
                if "packing" in self.data.model_fields_set:
                    raise ValueError("data.packing is true but model.objective is mlm+nsp: each row is one sentence "
                                     "pair, whose [CLS] predicts the next sentence; set data.packing=false")
                self.data.packing = False  # one pair per row, and the resolved recipe says so
        elif self.data.document_separator is not None or self.data.dupe_factor != 1:
            key = "document_separator splits documents" if self.data.document_separator is not None else \
                "dupe_factor makes sentence pairs"
            raise ValueError(f"data.{key} for model.objective mlm+nsp; the masked LM alone reads lines: remove the "
                             "key, or set model.objective=mlm+nsp")
        if self.data.streaming:
            training = self.training
            if training.max_steps <= 0 and not training.time_budget:
                raise ValueError("data.streaming: a stream has no known length; give training.max_steps or "
                                 "training.time_budget")
            if training.dataloader_num_workers:
                raise ValueError("data.streaming: the stream is read in the main process (its position is saved with "
                                 "each checkpoint); set training.dataloader_num_workers=0")
            for key in ("eval_strategy", "save_strategy"):
                if getattr(training, key) == "epoch":
                    raise ValueError(f"data.streaming: a stream has no epochs, so training.{key}=epoch would never "
                                     f"come; set training.{key}=steps (or no)")
        if self.model.name_or_path and self.tokenizer.name_or_path:
            raise ValueError(f"tokenizer.name_or_path {self.tokenizer.name_or_path} and model.name_or_path "
                             f"{self.model.name_or_path}: a continued checkpoint keeps its own tokenizer; remove "
                             "tokenizer.name_or_path")
        if self.model.name_or_path:  # the checkpoint's positions decide, checked when it loads
            return self
        if self.data.max_seq_length > self.model.max_position_embeddings:
            raise ValueError(
                f"data.max_seq_length {self.data.max_seq_length} is above "
                f"model.max_position_embeddings {self.model.max_position_embeddings}"
            )
        return self


# --------------------------------------------------------------------------------------------
# finetune
# --------------------------------------------------------------------------------------------
class ClassifierSection(Section):
    name_or_path: str = "sentence-transformers/all-MiniLM-L6-v2"  # local directory or hub id
    trust_remote_code: bool = False  # run code shipped with a hub model (off unless you trust it)
    # what fine-tuning updates: all, head (the new output layer and the pooler feeding it), or top-K (the last K
    # encoder layers and the head); the rest stays as the checkpoint has it
    train_layers: str = "all"
    freeze_embeddings: bool = False  # keep the embeddings as they are (with train_layers: all)

    @field_validator("train_layers")
    @classmethod
    def _layers(cls, value: str) -> str:
        value = value.strip().lower()
        if value in ("all", "head") or (value.startswith("top-") and value[4:].isdigit() and int(value[4:]) > 0):
            return value
        raise ValueError("must be all, head or top-K (K a whole number of encoder layers, e.g. top-2)")


class LabelledDataSection(Section):
    task: str | None = None  # a GLUE task (cola, sst2, mrpc, ...); null for your own files
    data_dir: str | None = None  # a folder in GLUE's own layout; null loads nyu-mll/glue from the hub
    train_file: str | None = None  # your own CSV, TSV, JSON or JSON Lines file
    validation_file: str | None = None
    test_file: str | None = None
    text_column: str | None = None  # null: found as run_glue.py finds it
    text_pair_column: str | None = None
    label_column: str | None = None
    max_seq_length: int = Field(128, ge=8)  # longer inputs are truncated
    # pad training batches to a few bucket lengths, so a GPU reuses its kernels; null: on where CUDA is
    pad_to_buckets: bool | None = None
    max_train_samples: int | None = Field(None, ge=1)  # keep the first N examples (debugging)
    max_eval_samples: int | None = Field(None, ge=1)
    # token classification (task: ner): CoNLL or JSON Lines files
    tag_column: int = -1  # the CoNLL column of the tags (-1: the last; CoNLL-2003's NER tags: 3)
    label_all_tokens: bool = False  # label every sub-word of a word, not just its first (a B- continues as I-)
    stride: int = Field(32, ge=0)  # tokens that neighbouring windows of a sentence over max_seq_length share


class FinetuneRecipe(Section):
    model: ClassifierSection = ClassifierSection()
    data: LabelledDataSection = LabelledDataSection()
    training: TrainingSection = TrainingSection()

    @model_validator(mode="after")
    def _has_data(self) -> FinetuneRecipe:
        if not self.data.task and not self.data.train_file:
            raise ValueError("give a GLUE task (--task / data.task) or your own data.train_file")
        if self.training.probe is not None:
            raise ValueError("training.probe is pretrain's (a probe of a model being pretrained); fine-tuning "
                             "evaluates the task itself: remove training.probe")
        return self


RECIPE_TYPES: dict[str, type[Section]] = {"pretrain": PretrainRecipe, "finetune": FinetuneRecipe}


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------
def find_recipe(name_or_path: str) -> Path:
    """A YAML path, or the name of a shipped recipe such as `pretrain/bert-tiny`."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = recipes_dir() / f"{name_or_path.removesuffix('.yaml')}.yaml"
    if shipped.is_file():
        return shipped
    if path.suffix in {".yaml", ".yml"} or path.parent != Path("."):
        names = ", ".join(list_recipes())
        raise BigmodelError(f"recipe '{name_or_path}' not found: no such file, and no shipped recipe {names}")
    raise BigmodelError(f"recipe '{name_or_path}' not found; shipped recipes: {', '.join(list_recipes())}")


def list_recipes(kind: str | None = None) -> list[str]:
    root = recipes_dir()
    names = sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml")
                   if p.relative_to(root).parts[0] != "accelerate")  # Accelerate's configs, not recipes
    return [n for n in names if kind is None or n.startswith(f"{kind}/")]


YAML11_WORDS = {"yes", "no", "on", "off", "y", "n"}


def parse_override(text: str) -> tuple[list[str], Any]:
    """`training.learning_rate=3e-5` -> (["training", "learning_rate"], 3e-5). Values are YAML:
    `[a.txt,b.txt]` is a list, `null` is None, `true` a bool."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise BigmodelError(f"--set '{text}': expected key=value, e.g. training.learning_rate=3e-5")
    if raw.strip().lower() in YAML11_WORDS:  # `save_strategy=no` means "no", not False
        return key.strip().split("."), raw.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def _set_nested(tree: dict, keys: list[str], value: Any, origin: str) -> None:
    for key in keys[:-1]:
        node = tree.setdefault(key, {})
        if not isinstance(node, dict):
            raise BigmodelError(f"{origin}: '{key}' is a value, not a section")
        tree = node
    tree[keys[-1]] = value


def _nearest_key(model: type[BaseModel], loc: tuple) -> str | None:
    """The valid key closest to an unknown one, walking the sections named by `loc`."""
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            return None
        model = field.annotation
    match = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1, cutoff=0.5)
    return ".".join([*map(str, loc[:-1]), match[0]]) if match else None


def describe_errors(error: ValidationError, model: type[BaseModel], origin: str, problems: list[str] | None = None) -> str:
    problems = list(problems or [])
    for item in error.errors():
        loc = tuple(p for p in item["loc"] if not isinstance(p, int) or len(item["loc"]) == 1)
        key = ".".join(str(p) for p in item["loc"])
        if item["type"] == "extra_forbidden":
            near = _nearest_key(model, loc)
            hint = f" (did you mean '{near}'?)" if near else ""
            problems.append(f"unknown key '{key}'{hint}")
        elif item["type"] == "missing":
            problems.append(f"missing key '{key}'")
        else:
            message = item["msg"].removeprefix("Value error, ")
            got = item.get("input")
            shown = "" if isinstance(got, dict) or got is None else f" (got {got!r})"
            problems.append(f"'{key}': {message}{shown}" if key else message)
    return f"{origin}: " + "; ".join(problems)


def load_recipe(
    kind: str,
    name_or_path: str,
    flags: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
) -> tuple[Any, dict]:
    """Load a recipe of `kind` ("pretrain" or "finetune"). Returns the typed recipe and the merged
    raw tree (what `--set` and the flags changed, for the record)."""
    path = find_recipe(name_or_path)
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise BigmodelError(f"recipe {path}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    except UnicodeDecodeError:
        raise BigmodelError(f"recipe {path}: not UTF-8 text") from None
    if not isinstance(tree, dict):
        raise BigmodelError(f"recipe {path}: expected a mapping of sections (model, data, training)")
    for dotted, value in (flags or {}).items():
        if value is not None:
            _set_nested(tree, dotted.split("."), value, f"recipe {path}")
    for text in overrides or []:
        keys, value = parse_override(text)
        _set_nested(tree, keys, value, f"--set {text}")
    launch_settings(tree, f"recipe {path}")
    model = RECIPE_TYPES[kind]
    # Keys that are no TrainingArguments field: said with every other problem, not alone
    wrong = training_key_problems(tree.get("training"))
    checked = {**tree, "training": {k: v for k, v in tree["training"].items() if k not in wrong}} if wrong else tree
    try:
        recipe = model.model_validate(checked)
    except ValidationError as e:
        raise BigmodelError(describe_errors(e, model, f"recipe {path}", list(wrong.values()))) from None
    if wrong:
        raise BigmodelError(f"recipe {path}: " + "; ".join(wrong.values()))
    resolve_paths(recipe, path.parent)
    return recipe, tree


LAUNCH_PRECISION = "ACCELERATE_MIXED_PRECISION"  # `accelerate launch` passes its config's mixed_precision in it
LAUNCH_COMPILER = "ACCELERATE_DYNAMO_BACKEND"  # ... and its dynamo_backend in this


def launch_settings(tree: dict, where: str) -> None:
    """What an `accelerate launch` config sets that a recipe also says: its `mixed_precision` and its
    `dynamo_backend`, which the launcher passes on in the environment, where Trainer and Accelerate
    took them over the recipe's. Here they fill in `training.bf16` / `training.fp16` and
    `training.torch_compile` where the recipe, its flags and `--set` name none of those keys, so the
    header and the resolved recipe say what the run does; a recipe that names one decides
    (`trainer.arguments` makes Trainer follow it). A value bigmodel has no key for is an error."""
    training = tree.get("training") if isinstance(tree.get("training"), dict) else {}
    precision = os.environ.get(LAUNCH_PRECISION, "no").strip().lower()
    if precision != "no" and not {"bf16", "fp16"} & training.keys():
        if precision not in ("bf16", "fp16"):
            raise BigmodelError(f"{LAUNCH_PRECISION}={precision} (the Accelerate config's mixed_precision): bigmodel "
                                "trains in bf16, fp16 or fp32; set mixed_precision to bf16, fp16 or no")
        _set_nested(tree, ["training", precision], True, where)
    compiler = os.environ.get(LAUNCH_COMPILER, "no").strip().lower()
    if compiler != "no" and "torch_compile" not in training:
        if compiler != "inductor":
            raise BigmodelError(f"{LAUNCH_COMPILER}={compiler} (the Accelerate config's dynamo_backend): bigmodel "
                                "compiles with inductor (training.torch_compile); set dynamo_backend to inductor or no")
        _set_nested(tree, ["training", "torch_compile"], True, where)


PATH_FIELDS = ("train_files", "eval_files", "data_dir", "train_file", "validation_file", "test_file")


def resolve_paths(recipe: Section, recipe_dir: Path) -> None:
    """Relative data paths resolve against the working directory, else against the recipe's own
    folder (so a shipped recipe finds the data shipped beside it from anywhere)."""

    def resolve(value: str) -> str:
        if Path(value).is_absolute() or Path(value).exists():
            return value
        beside = (recipe_dir / value).resolve()
        return str(beside) if beside.exists() else value

    data = getattr(recipe, "data", None)
    for name in PATH_FIELDS:
        value = getattr(data, name, None)
        if isinstance(value, list):
            setattr(data, name, [resolve(v) for v in value])
        elif isinstance(value, str):
            setattr(data, name, resolve(value))


def recipe_name(name_or_path: str) -> str:
    """A short name for run directories: `pretrain/bert-tiny` -> `bert-tiny`."""
    return Path(name_or_path).stem


RECIPE_FILE = "resolved_recipe.yaml"  # beside every model: the recipe a run used, every value resolved


def dump_recipe(recipe: Section, path: Path, header: str) -> None:
    """Write the resolved recipe: every value the run used, defaults included. A resume with the
    same values leaves the file as it is; a new one replaces it whole (write, then rename), so a kill
    never leaves half a recipe."""
    import os

    text = yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
    try:
        if path.read_text(encoding="utf-8").split("\n", 1)[1] == text:
            return
    except (OSError, UnicodeDecodeError, IndexError):
        pass
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(f"# {header}\n{text}", encoding="utf-8")
    os.replace(tmp, path)


def read_saved_recipe(run_dir: str | Path, kind: str) -> Section | None:
    """The typed recipe a run of `kind` saved in its folder, the same object the run was given;
    None where the folder holds no recipe of that kind (a model from elsewhere, or a damaged file)."""
    path = Path(run_dir) / RECIPE_FILE
    if not path.is_file():
        return None
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
        return RECIPE_TYPES[kind].model_validate(tree)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, ValidationError):
        return None
