"""A downstream probe during pretraining (`training.probe`): does the encoder learn something a task can use?

Every `every` steps (or seconds), the encoder's frozen features of a labelled task's examples (the mean of
the last layer's token states, or [CLS]'s) train a linear classifier (scikit-learn's logistic regression
over standardised features) on a seeded sample of the task's training split, which is scored on its dev
split. `probe_accuracy` and `probe_f1` are logged with the loss (trainer_state.json, TensorBoard, `bigmodel
report`), beside `probe_majority`: the dev set's majority-class share, the accuracy of knowing nothing.

The probe never changes the training: the model is read in eval mode without gradients, inside a forked
random state, and its examples are sampled by a generator of its own; its seconds are set aside from the
training speed and reported (`probe_seconds`, `probe_share`). It runs on the main process only.
"""

from __future__ import annotations

import inspect
import time

import numpy as np
import torch
from transformers import TrainerCallback

from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.recipe import ProbeSection
from bigmodel_cli.seeds import derive_seed

BATCH = 64  # examples per forward pass


def probe_examples(probe: ProbeSection, seed: int):
    """The task's training sample and dev split (datasets of `sentence1` [, `sentence2`], `label`)."""
    from bigmodel_cli.classification.data import load_glue
    from bigmodel_cli.classification.tasks import TASKS

    task = TASKS.get(probe.task.lower())
    if task is None or task.is_regression:
        choices = ", ".join(name for name, t in TASKS.items() if not t.is_regression)
        raise BigmodelError(f"training.probe.task '{probe.task}': the probe fits a classifier; choose one of {choices}")
    train = load_glue(task, "train", probe.data_dir)
    dev = load_glue(task, task.eval_split, probe.data_dir)
    if len(train) > probe.train_samples:  # a sample of its own generator: the training's streams untouched
        rng = np.random.default_rng(derive_seed(seed, "probe"))
        train = train.select(np.sort(rng.choice(len(train), probe.train_samples, replace=False)).tolist())
    return train, dev


def encoded_batches(texts: list[list[str]], tokenizer, max_length: int) -> tuple[list[dict], np.ndarray]:
    """Padded batches of the examples (`texts`: one list per text column, encoded together), sorted by
    length, and that order (the example of each row of the batches, in turn)."""
    encoded = tokenizer(*texts, truncation=True, max_length=max_length)
    order = np.argsort([len(ids) for ids in encoded["input_ids"]], kind="stable")
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded]
    batches = []
    for start in range(0, len(order), BATCH):
        rows = [{k: encoded[k][i] for k in keys} for i in order[start:start + BATCH]]
        padded = tokenizer.pad(rows, return_tensors="pt")
        batches.append({k: padded[k] for k in keys})
    return batches, order


def probe_inputs(dataset, tokenizer, max_length: int, pair_features: bool) -> list[tuple[list[dict], np.ndarray]]:
    """What the encoder reads of each example: the text, or the pair encoded together, as one input; or,
    with `pair_features`, each sentence of a pair as an input of its own."""
    columns = [list(dataset[c]) for c in ("sentence1", "sentence2") if c in dataset.column_names]
    if pair_features and len(columns) == 2:
        return [encoded_batches([column], tokenizer, max_length) for column in columns]
    return [encoded_batches(columns, tokenizer, max_length)]


def combined(parts: list[np.ndarray]) -> np.ndarray:
    """One input's features as they are; a pair's two, u and v, as InferSent's [u, v, |u - v|, u * v], with
    which a linear classifier can weigh how alike the two sentences are."""
    if len(parts) == 1:
        return parts[0]
    u, v = parts
    return np.concatenate([u, v, np.abs(u - v), u * v], axis=1)


class Probe(TrainerCallback):
    """`training.probe` as a callback of the pretraining Trainer (`attach` it to the trainer, which logs)."""

    def __init__(self, probe: ProbeSection, tokenizer, seed: int, max_seq_length: int, bf16: bool = False,
                 stop=None):
        self.settings = probe
        self.stop = stop  # the run's GracefulStop: a run stopped by a signal ends without a last probe
        train, dev = probe_examples(probe, seed)
        length = min(probe.max_seq_length, max_seq_length)
        self.train_inputs = probe_inputs(train, tokenizer, length, probe.pair_features)
        self.dev_inputs = probe_inputs(dev, tokenizer, length, probe.pair_features)
        self.train_labels = np.asarray(list(train["label"]))
        self.dev_labels = np.asarray(list(dev["label"]))
        self.classes = len(set(self.train_labels.tolist()) | set(self.dev_labels.tolist()))
        self.majority = float(np.bincount(self.dev_labels).max() / len(self.dev_labels))
        self.examples = (len(train), len(dev))
        self.bf16 = bf16
        self.trainer = None
        self.seconds = 0.0  # spent probing in this part of the run
        self.last: dict[str, float] = {}
        self.last_step: int | None = None
        self.last_time: float | None = None

    def note(self) -> str:
        """What the run header says of the probe."""
        probe, (train, dev) = self.settings, self.examples
        every = f"every {probe.every}" if isinstance(probe.every, str) else f"every {probe.every} steps"
        pairs = len(self.train_inputs) == 2  # each sentence of a pair read alone
        kind = f"{probe.pooling} features" + (" of each sentence, [u, v, |u-v|, u*v]," if pairs else "")
        return f"probe: {probe.task} {every} ({kind} of {train} training examples, scored on {dev} dev examples)"

    def attach(self, trainer) -> None:
        if trainer.model_sharded:
            raise BigmodelError("training.probe: the model is sharded over the processes (FSDP or DeepSpeed), and "
                                "the probe reads it whole on the main process; remove training.probe or launch with DDP")
        self.trainer = trainer
        trainer.add_callback(self)

    def due(self, step: int) -> bool:
        seconds = self.settings.seconds()
        if seconds is None:
            return step % self.settings.every == 0
        return self.last_time is None or time.monotonic() - self.last_time >= seconds

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.last_time = time.monotonic()
        if state.global_step == 0:  # where the run starts from: a fresh model's (or a checkpoint's) figure
            self.run(model, state)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.due(state.global_step):
            self.run(model, state)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if getattr(self.stop, "stopped_by", None):  # saved and leaving within the signal's grace: no probe
            return
        if self.last_step != state.global_step:  # the model the run ends with
            self.run(model, state)

    def run(self, model, state) -> None:
        """Probe `model` now (main process only) and log its figures at the current step."""
        self.last_step, self.last_time = state.global_step, time.monotonic()
        if not state.is_world_process_zero:
            return
        start = time.perf_counter()
        figures = self.score(model)
        spent = time.perf_counter() - start
        self.seconds += spent
        self.last = {**figures, "probe_majority": round(self.majority, 4), "probe_seconds": round(spent, 3)}
        if self.trainer is not None:
            self.trainer.aside_seconds += spent  # not training speed
            self.trainer.log(dict(self.last))

    def score(self, model) -> dict[str, float]:
        """Accuracy and F1 (binary: of class 1; else macro) on the dev split of a logistic regression fitted
        on the training sample's features."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.metrics import accuracy_score, f1_score
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        train, dev = (combined([self.features(model, *part) for part in inputs])
                      for inputs in (self.train_inputs, self.dev_inputs))
        classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        classifier.fit(train, self.train_labels)
        predicted = classifier.predict(dev)
        average = "binary" if self.classes == 2 else "macro"
        return {"probe_accuracy": round(float(accuracy_score(self.dev_labels, predicted)), 4),
                "probe_f1": round(float(f1_score(self.dev_labels, predicted, average=average)), 4)}

    @torch.no_grad()
    def features(self, model, batches: list[dict], order: np.ndarray) -> np.ndarray:
        """The encoder's features of each example (`batches` hold them in `order`; returned in the examples'
        own order): no gradients, eval mode (no dropout), the random state restored after (nothing here
        draws from it, and nothing could)."""
        encoder = getattr(model, "module", model).base_model  # BertModel, RobertaModel, ModernBertModel
        device = next(encoder.parameters()).device
        accepted = inspect.signature(encoder.forward).parameters
        was_training = model.training
        model.eval()
        out = []
        try:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
                    torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16):
                for batch in batches:  # the inputs the encoder takes (ModernBERT has no token types)
                    inputs = {k: v.to(device, non_blocking=True) for k, v in batch.items() if k in accepted}
                    states = encoder(**inputs).last_hidden_state.float()
                    if self.settings.pooling == "cls":
                        pooled = states[:, 0]
                    else:
                        mask = inputs["attention_mask"].unsqueeze(-1).to(states.dtype)
                        pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1.0)
                    out.append(pooled.cpu().numpy())
        finally:
            model.train(was_training)
        features = np.empty((len(order), out[0].shape[1]), dtype=np.float32)
        features[order] = np.concatenate(out)
        return features

    def metrics(self, train_seconds: float) -> dict[str, float]:
        """The end of the run's figures for metrics.json: the last probe's, and what probing cost."""
        if not self.last:
            return {}
        return {"probe_accuracy": self.last["probe_accuracy"], "probe_f1": self.last["probe_f1"],
                "probe_majority": self.last["probe_majority"], "probe_seconds": round(self.seconds, 3),
                "probe_share": round(self.seconds / max(train_seconds, 1e-9), 4)}
