"""The fine-tuning trainer: `CountingTrainer` whose evaluations during training take `bigmodel eval`'s
path (length-sorted batches, padded in numpy, run side by side on a CPU's cores), so the epoch that
is kept is picked by the very figures `bigmodel eval` gives its checkpoint, at its speed."""

from __future__ import annotations

import math
import time

from bigmodel_cli.classification.inference import classifier_scores, spread_logits
from bigmodel_cli.classification.tasks import Task
from bigmodel_cli.trainer.trainer import CountingTrainer


class ClassifierTrainer(CountingTrainer):
    def __init__(self, *args, task: Task, **kwargs):
        super().__init__(*args, **kwargs)
        self.task = task

    @property
    def fast_evaluation(self) -> bool:
        """Whether evaluations take `bigmodel eval`'s path: not where the model is sharded over the
        processes (FSDP, DeepSpeed), whose every forward is a collective that Trainer's loop keeps in step."""
        return not self.model_sharded

    def evaluation_note(self) -> str:
        """The run header's word on how the evaluations run."""
        if self.fast_evaluation:
            return "per-epoch evaluation on bigmodel eval's path"
        return "per-epoch evaluation in Trainer's loop (the model is sharded over the processes)"

    def evaluation(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict:
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if not self.fast_evaluation or isinstance(dataset, dict):
            return super().evaluation(eval_dataset, ignore_keys, metric_key_prefix)
        start = time.time()
        batch = self.args.per_device_eval_batch_size
        logits, scored = spread_logits(self.model, self.processing_class, dataset, batch)
        metrics = {f"{metric_key_prefix}_{key.removeprefix('eval_')}": value
                   for key, value in classifier_scores(logits, dataset, self.task).items()
                   if isinstance(value, (int, float))}  # the confusion matrix stays out of the logs
        metrics[f"{metric_key_prefix}_examples"] = scored  # from every process together, each example once
        return self.evaluated(metrics, metric_key_prefix, start, len(dataset),
                              math.ceil(len(dataset) / (batch * self.args.world_size)))
