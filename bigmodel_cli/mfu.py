"""Model FLOP utilisation (MFU) of masked-LM pretraining: the stock model's useful work per second
over the GPU's dense bf16 peak.

The work counted is what a stock BERT must do for the real (non-padding) tokens, forward and backward
(3x the forward's 2 FLOPs per multiply-add), with L layers, width h, feed-forward width i, rows of
s tokens and a vocabulary of V:

    per real token:    6 * L * (4*h*h + 2*h*i)  +  12 * L * s * h
                       (Q, K, V and output projections, the feed-forward pair; scores Q.K^T and the
                       weighted sum of values over the s tokens of its row)
    per masked token:  6 * (h*h + h*V)
                       (the MLM head's transform and vocabulary projection, on masked positions only)

    MFU = (real tokens * per real token + masked tokens * per masked token) / (seconds * peak)

Embedding lookups, biases, LayerNorm, softmax and GELU are left out (a few per cent), and so is the
work bigmodel skips or wastes: the head on unmasked positions, padding. The peak is the GPU's dense
bf16 tensor-core figure from its data sheet; `BIGMODEL_PEAK_TFLOPS` sets it for a GPU not listed.
"""

from __future__ import annotations

import os

# Dense (not sparse) bf16 tensor-core peaks, TFLOP/s, by a name `torch.cuda.get_device_name()` contains.
PEAK_BF16_TFLOPS = {
    "H200": 989.4,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 989.4,  # SXM
    "A100": 312.0,
    "L40S": 362.1,
    "L4": 121.0,
}


def flops_per_token(layers: int, hidden: int, intermediate: int, seq_length: int) -> float:
    """Training FLOPs of the encoder per real token (see the module's formula)."""
    return 6 * layers * (4 * hidden * hidden + 2 * hidden * intermediate) + 12 * layers * seq_length * hidden


def flops_per_masked_token(hidden: int, vocab_size: int) -> float:
    """Training FLOPs of the MLM head per masked token."""
    return 6 * (hidden * hidden + hidden * vocab_size)


def peak_flops(device_name: str | None) -> float | None:
    """The dense bf16 peak in FLOP/s of a GPU by its name; None where unknown (a CPU, an unlisted GPU)."""
    if os.environ.get("BIGMODEL_PEAK_TFLOPS"):
        return float(os.environ["BIGMODEL_PEAK_TFLOPS"]) * 1e12
    if not device_name:
        return None
    for name, tflops in PEAK_BF16_TFLOPS.items():  # the more specific names first
        if name in device_name:
            return tflops * 1e12
    return None


def this_gpu() -> str | None:
    """The name of the GPU this process trains on (what `peak_flops` looks up); None on a CPU."""
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


def utilization(config, seq_length: int, real_tokens: float, masked_tokens: float, seconds: float,
                device_name: str | None) -> dict[str, float]:
    """`train_model_flops_per_second` always; `model_flops_utilization` where the peak is known."""
    work = (real_tokens * flops_per_token(config.num_hidden_layers, config.hidden_size, config.intermediate_size, seq_length)
            + masked_tokens * flops_per_masked_token(config.hidden_size, config.vocab_size))
    achieved = work / max(seconds, 1e-9)
    out = {"train_model_flops_per_second": achieved}
    peak = peak_flops(device_name)
    if peak:
        out["model_flops_utilization"] = achieved / peak
    return out
