"""The tagging trainer: `CountingTrainer` whose evaluations during training take `bigmodel eval`'s
path (windows merged per word, seqeval's strict entity F1), so the epoch kept is picked by the figures
`bigmodel eval` gives its checkpoint."""

from __future__ import annotations

import time

from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.tagging.inference import evaluate_tagger
from bigmodel_cli.tagging.reader import Sentence
from bigmodel_cli.tagging.tasks import TagTask
from bigmodel_cli.trainer.trainer import CountingTrainer


class TaggerTrainer(CountingTrainer):
    def __init__(self, *args, task: TagTask, eval_sentences: list[Sentence], max_length: int, stride: int, **kwargs):
        super().__init__(*args, **kwargs)
        if self.model_sharded:
            raise BigmodelError("--task ner runs under DDP (several processes, each with the whole model); "
                                "FSDP and DeepSpeed configs are not supported for it yet")
        self.task, self.eval_sentences, self.max_length, self.stride = task, eval_sentences, max_length, stride

    def evaluation(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict:
        start = time.time()
        scores = evaluate_tagger(self.model, self.processing_class, self.eval_sentences, self.task, self.max_length,
                                 self.stride, self.args.per_device_eval_batch_size, bf16=self.args.bf16)
        metrics = {f"{metric_key_prefix}_{key.removeprefix('eval_')}": value for key, value in scores.items()
                   if isinstance(value, (int, float))}  # per-type tables stay out of the logs
        return self.evaluated(metrics, metric_key_prefix, start, len(self.eval_sentences))
