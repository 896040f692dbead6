"""Exact shortcuts for BERT's training and inference: the same results, less work.

Dropout on CPUs: the same layer, cheaper random numbers. PyTorch's CPU dropout draws one random
number per element (`bernoulli_`, about 50 M elements/s here): fine-tuning MiniLM on MRPC spent
15 % of every step in it. Here each 64-bit draw gives four elements 15 random bits each, and an
element is dropped when its bits fall below `round(p * 2**15)`: the drop probability is that over
2**15 (within 2e-5 of p) and kept elements are scaled by its exact inverse, so the expectation is
unchanged. Masks still come from torch's seeded generator: seeds, resume and Trainer's saved RNG
states work as before. BERT's attention dropout happens inside `scaled_dot_product_attention`, out
of reach, so models get an attention function ("bigmodel_sdpa") that is SDPA whenever dropout is
off (evaluation, inference) and, in training, the textbook attention with this dropout. On a GPU
none of this applies: SDPA fuses its dropout into the kernel there.

The last layer of a classifier, for the first token only: `BertForSequenceClassification` reads
only the first token's final hidden state (the pooler takes `[CLS]`), so in the last encoder layer
the other tokens' queries, attention output, output projection and feed-forward block were computed
and thrown away. Their keys and values are not needed either: with one query q per head,
q . (W_k x + b_k) = (W_k^T q) . x + q . b_k and sum_t w_t (W_v x_t + b_v) = W_v (sum_t w_t x_t) +
(sum_t w_t) b_v, so the last layer costs one token's work plus two products of the inputs with a
vector per head. With a 6-layer model that is 16 % of the model's multiply-adds, in training and
inference alike, for the same logits, loss and gradients.
"""

from __future__ import annotations

from functools import cache

import torch
from torch import nn

ATTENTION = "bigmodel_sdpa"  # on CPUs: SDPA, or in training the textbook attention with fast dropout
DEVICE_ATTENTION = "bigmodel_sdpa_device"  # on GPUs: SDPA itself; both build masks without a host sync
_BITS = 15


def drop_threshold(p: float) -> int:
    """Elements whose 15 random bits are below this are dropped."""
    return round(p * (1 << _BITS))


class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        threshold = drop_threshold(p)
        n = x.numel()
        words = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_()  # 63 random bits each
        bits = words.view(torch.int16)[:n].view(x.shape) & ((1 << _BITS) - 1)  # 4 x 15 bits per word
        keep = bits >= threshold
        scale = (1 << _BITS) / ((1 << _BITS) - threshold)
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.where(keep, x, 0.0).mul_(scale)  # x * keep * scale: 6x slower (bool to float)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad, 0.0).mul_(ctx.scale), None


def fast_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    if not training or p == 0.0:
        return x
    if p >= 1.0:
        return torch.zeros_like(x)
    return _Dropout.apply(x, p)


class FastDropout(nn.Dropout):
    """`nn.Dropout` with `fast_dropout` inside; same `p`, same state dict (none)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(x, self.p, self.training)


def attention(module, query, key, value, attention_mask, scaling=None, dropout: float = 0.0, **kwargs):
    """SDPA when no dropout applies; in training, softmax(QK^T * scale + mask) with fast dropout, @ V.
    The mask is SDPA's: boolean (True = attend) or additive."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if dropout == 0.0 or not module.training:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=0.0, **kwargs)
    scaling = query.size(-1) ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    weights = fast_dropout(torch.softmax(scores, dim=-1), dropout)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), None


def mask_without_sync(*args, **kwargs):
    """transformers' SDPA mask, always built: the stock one first asks `padding_mask.all()` to skip a
    mask without padding, which makes the host wait for the GPU on every forward pass."""
    from transformers.masking_utils import sdpa_mask

    kwargs["allow_is_bidirectional_skip"] = False
    return sdpa_mask(*args, **kwargs)


def register() -> None:
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTENTION, attention)
    AttentionMaskInterface.register(ATTENTION, mask_without_sync)  # the masks SDPA takes, built as for "sdpa"
    AttentionInterface.register(DEVICE_ATTENTION, sdpa_attention_forward)  # SDPA itself, dropout fused
    AttentionMaskInterface.register(DEVICE_ATTENTION, mask_without_sync)


def use_mask_without_sync(model) -> bool:
    """On a GPU, a tested model's SDPA with its masks built without a host sync (`mask_without_sync`)."""
    if not torch.cuda.is_available() or not tested_model(model) or getattr(model.config, "_attn_implementation", None) != "sdpa":
        return False
    register()
    model.set_attn_implementation(DEVICE_ATTENTION)
    return True


def tested_model(model) -> bool:
    """The model classes the fast paths are tested on (tests/test_kernels.py): BERT's masked LM (and
    pretraining's sparse-head subclass of it), BERT's sequence and token classifiers, as encoders. Others
    (causal attention, grouped-query attention, sliding windows, other families) run the stock code."""
    from transformers import BertForMaskedLM, BertForSequenceClassification, BertForTokenClassification

    own = type(model).__module__.startswith(("transformers.models.bert.", "bigmodel_cli."))
    tested = (BertForMaskedLM, BertForSequenceClassification, BertForTokenClassification)
    return own and isinstance(model, tested) and not model.config.is_decoder


def use_fast_dropout(model) -> bool:
    """On CPU, give a tested model (`tested_model`) the fast dropout layers and attention (a no-op on
    GPU, for any other model, or for one that does not use SDPA). The saved config still names plain
    "sdpa": the run directory loads anywhere."""
    if torch.cuda.is_available() or not tested_model(model) or getattr(model.config, "_attn_implementation", None) != "sdpa":
        return False
    register()
    for module in model.modules():
        if type(module) is nn.Dropout:
            module.__class__ = FastDropout
    model.set_attn_implementation(ATTENTION)
    return True


def speedups(model, first_token: bool = False) -> str:
    """Apply the exact fast paths tested on this model's class (the first-token last layer too for
    a classifier when `first_token`); returns what was done, one phrase for the run header."""
    if not tested_model(model):
        return f"stock code path ({type(model).__name__}: the fast kernels are tested on BERT only)"
    done = ["fast dropout and attention"] if use_fast_dropout(model) else []
    if use_mask_without_sync(model):
        done.append("attention masks without a host sync")
    if first_token and classify_from_first_token(model):
        done.append("first-token last layer")
    return "fast paths: " + (", ".join(done) if done else "none apply on this device")


@cache  # one class, built on first use: importing this module stays free of transformers
def _first_token_layer():
    from transformers.models.bert.modeling_bert import BertLayer

    class FirstTokenBertLayer(BertLayer):
        """`BertLayer` whose output is the first token's row only. Same parameters and submodules as
        the `BertLayer` it replaces; any attention implementation's mask (boolean or additive)."""

        def forward(self, hidden_states, attention_mask=None, *args, **kwargs):
            own = self.attention.self
            heads, size = own.num_attention_heads, own.attention_head_size
            first = hidden_states[:, :1]
            query = own.query(first).view(-1, heads, size) * own.scaling  # (batch, head, size)
            key_weight = own.key.weight.view(heads, size, -1)  # per head: (size, hidden)
            # q . (W_k x + b_k) = (W_k^T q) . x + q . b_k: one hidden-sized vector per head, no keys
            scores = torch.einsum("bhi,bti->bht", torch.einsum("bhd,hdi->bhi", query, key_weight), hidden_states)
            # q . b_k is the same for every key, so softmax ignores it; kept, the bias gets its (zero)
            # gradient as in the stock layer, and DDP sees every parameter used
            scores = scores + (query * own.key.bias.view(heads, size)).sum(-1, keepdim=True)
            if attention_mask is not None:
                mask = attention_mask[:, :, 0] if attention_mask.dim() == 4 else attention_mask  # the first query's
                if mask.dtype == torch.bool:  # SDPA's: True = attend
                    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
                else:  # eager's: added to the scores
                    scores = scores + mask
            weights = fast_dropout(torch.softmax(scores, dim=-1), own.dropout.p, own.training)
            # sum_t w_t (W_v x_t + b_v) = W_v (sum_t w_t x_t) + (sum_t w_t) b_v: one mixed input per head
            mixed = torch.einsum("bht,bti->bhi", weights, hidden_states)
            attended = torch.einsum("bhi,hdi->bhd", mixed, own.value.weight.view(heads, size, -1))
            attended = attended + weights.sum(-1, keepdim=True) * own.value.bias.view(heads, size)
            attended = self.attention.output(attended.reshape(first.shape), first)
            return self.feed_forward_chunk(attended)

    return FirstTokenBertLayer


def classify_from_first_token(model) -> bool:
    """Make a plain `BertForSequenceClassification` compute its last layer for `[CLS]` only (in
    place; idempotent). Its logits, loss and gradients are those of the stock model; only its
    `last_hidden_state` is cut to the first token. Other models are left as they are."""
    from transformers import BertForSequenceClassification
    from transformers.models.bert.modeling_bert import BertLayer

    if type(model) is not BertForSequenceClassification or model.config.is_decoder:
        return False
    last = model.bert.encoder.layer[-1]
    if type(last) is BertLayer:
        last.__class__ = _first_token_layer()
    return True
