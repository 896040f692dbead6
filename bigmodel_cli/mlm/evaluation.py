"""Held-out masked-LM loss: per masked token over the whole set, with fixed masks.

`bigmodel eval --task mlm` and pretraining's own evaluation (`MLMTrainer.evaluation_loop`) both
sum through `masked_loss_sums`, so the two give the same figure for the same text and masks.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.mlm.pairs import SparseHeadBertForPreTraining
from bigmodel_cli.mlm.sparse_head import SparseHeadBertForMaskedLM


def perplexity(loss: float) -> float:
    try:
        return math.exp(loss)
    except OverflowError:
        return float("inf")


def masked_loss_sums(model, collator, rows, batches, counted: int | None = None, prepare=None, on_batch=None) -> torch.Tensor:
    """[summed loss, masked-token count, next sentences told right, sentence pairs] (float64; the last two
    0 but for BERT's own objective, mlm+nsp) over the batches of row indices `batches`, of
    which only the first `counted` add up (the others are forward passes that a sharded model,
    FSDP or DeepSpeed ZeRO-3, needs every process to take part in).

    The held-out loss is the first over the second: per masked token over the whole set, so it does
    not move with the batch size or the process count (Trainer's own loop averages per-batch means,
    weighted by rows). The masks are the collator's, fixed per example. Each batch goes through
    `prepare` (Trainer's `_prepare_inputs`), else to the model's device. The sums stay on that device
    until the end: one transfer, not one host sync per batch."""
    device = next(model.parameters()).device
    prepare = prepare or (lambda batch: {k: v.to(device) for k, v in batch.items()})
    total = None
    counted = len(batches) if counted is None else counted
    with torch.inference_mode():
        for k, indices in enumerate(batches):
            batch = collator([rows[i] for i in indices])
            batch = prepare(batch)
            nsp = torch.zeros(2, dtype=torch.float64, device=batch["input_ids"].device)
            if isinstance(getattr(model, "module", model), SparseHeadBertForPreTraining):
                out = model(**batch, num_items_in_batch=1)
                loss = out.mlm_loss  # summed over the masked tokens
                told = out.seq_relationship_logits.argmax(-1) == batch["next_sentence_label"]
                nsp = torch.stack([told.sum().double(), nsp.new_tensor(float(told.numel()))])
            elif isinstance(getattr(model, "module", model), SparseHeadBertForMaskedLM):
                loss = model(**batch, num_items_in_batch=1).loss  # summed over the masked tokens
            else:  # another family's stock head: its logits, summed here (its own loss may be a mean)
                logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch["labels"].reshape(-1),
                                       ignore_index=-100, reduction="sum")
            if k < counted:
                sums = torch.cat([torch.stack([loss.detach().double(), (batch["labels"] != -100).sum().double()]), nsp])
                total = sums if total is None else total + sums
            if on_batch:
                on_batch()
    return total.cpu() if total is not None else torch.zeros(4, dtype=torch.float64)


def batched(indices, size: int) -> list[list[int]]:
    indices = list(indices)
    return [indices[i : i + size] for i in range(0, len(indices), size)]


def process_share(rows: int, rank: int, world: int, size: int) -> tuple[list[list[int]], int]:
    """Process `rank`'s batches of an evaluation over `rows` rows, and how many of them count.

    Every world-th row from `rank` on, so each row is scored once over all processes; then repeats
    of row 0 that count nothing, so that every process runs as many forward passes as process 0."""
    batches = batched(range(rank, rows, world), size)
    counted = len(batches)
    busiest = -(-rows // world)  # process 0's rows: the most
    return batches + [[0]] * (-(-busiest // size) - counted), counted


def score_text_file(model, tokenizer, data_file: str | Path, max_seq_length: int, mlm_probability: float, seed: int,
                    batch_size: int, whole_words: bool = False) -> dict:
    """Held-out loss and perplexity of a masked LM on a text file, one example per line, packed as
    pretraining packs them and masked with the held-out masks of a run seeded `seed`."""
    from datasets import load_dataset

    from bigmodel_cli.mlm.masking import MLMCollator
    from bigmodel_cli.mlm.text import packed_dataset, tokenize_lines

    lines = load_dataset("text", data_files={"eval": str(data_file)})["eval"].filter(lambda r: bool(r["text"].strip()))
    if len(lines) == 0:
        raise BigmodelError(f"--data-file {data_file} has no non-blank lines")
    bert = isinstance(model, SparseHeadBertForMaskedLM)  # packed rows and the sparse head; one line per row else
    rows = packed_dataset(tokenize_lines(lines, tokenizer, max_seq_length), max_seq_length, packing=bert)
    collator = MLMCollator(tokenizer, mlm_probability, seed, "held_out_masks", positions=bert, whole_words=whole_words,
                           position_ids=bert)
    was_training = model.training
    model.eval()
    try:
        total, count, _, _ = masked_loss_sums(model, collator, rows, batched(range(len(rows)), batch_size)).tolist()
    finally:
        model.train(was_training)
    count = int(count)
    loss = total / max(count, 1)
    return {"eval_loss": loss, "perplexity": perplexity(loss), "eval_samples": len(lines), "eval_masked_tokens": count}
