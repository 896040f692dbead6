"""An exported folder run by onnxruntime behind the interface `classification.inference` uses: a
module with `config`, a device and `model(**batch).logits`, so `bigmodel eval` and `bigmodel predict`
score and print an export exactly as they do a saved model."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch

ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
BATCH = 32  # examples per batch of eval and predict (length-sorted; on 2 CPU cores 32 ran 1.6x faster than 256)
EXPORT_BATCH = 16  # ... of an exported folder: onnxruntime's int8 MiniLM ran fastest there (MRPC dev: ~330 vs ~310 at 32)


def default_batch(model_dir: str | Path) -> int:
    """The batch size of `bigmodel eval` and `predict` when none is given: `EXPORT_BATCH` for an export."""
    return EXPORT_BATCH if is_export(model_dir) else BATCH


def is_export(folder: str | Path) -> bool:
    folder = Path(folder)
    return (folder / ONNX_FILE).is_file() and not (folder / "model.safetensors").is_file()


def session(path: Path, threads: int | None = None):
    """An onnxruntime CPU session; `threads` per run (None: onnxruntime's choice, all cores)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxModel(torch.nn.Module):
    """`session` as a classifier: `forward(**batch)` returns an object with `logits` (a tensor). One
    thread per run: `predict_logits` runs batches side by side, one per core, as it does torch's."""

    def __init__(self, path: Path, config, threads: int | None = 1):
        super().__init__()
        self.config, self.path = config, Path(path)
        self.session = session(path, threads)
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.anchor = torch.nn.Parameter(torch.zeros(1), requires_grad=False)  # says the device: the CPU

    def forward(self, **batch):
        feed = {name: batch[name].numpy() if name in batch else torch.zeros_like(batch["input_ids"]).numpy()
                for name in self.inputs}
        return SimpleNamespace(logits=torch.from_numpy(self.session.run(["logits"], feed)[0]))


def load_export(folder: str | Path, int8: bool | None = None):
    """The classifier of an exported folder (its int8 graph where there is one, unless `int8` is False)
    and its tokenizer."""
    from transformers import AutoConfig

    from bigmodel_cli.models import load_tokenizer

    folder = Path(folder)
    path = folder / INT8_FILE if int8 is not False and (folder / INT8_FILE).is_file() else folder / ONNX_FILE
    return OnnxModel(path, AutoConfig.from_pretrained(folder)), load_tokenizer(str(folder))
