"""A saved classifier to an ONNX graph: `torch.onnx` (the TorchScript exporter: one graph, dynamic
batch and sequence axes), then onnxruntime's fusions for BERT-like encoders (attention, skip
layer-norm, GELU) where the model is one."""

from __future__ import annotations

from pathlib import Path

from bigmodel_cli.errors import BigmodelError

OPSET = 17  # LayerNormalization is an operator of its own from 17 on
FUSED_FAMILIES = {"bert": "bert", "roberta": "bert", "distilbert": "bert", "electra": "bert", "xlm-roberta": "bert"}


def input_names(model) -> list[str]:
    """The inputs the model's forward takes, in the order they are passed."""
    names = ["input_ids", "attention_mask"]
    if getattr(model.config, "type_vocab_size", 0) and model.config.model_type in ("bert", "electra"):
        names.append("token_type_ids")
    return names


def check_opset(opset: int) -> None:
    import torch.onnx
    from torch.onnx._constants import ONNX_MAX_OPSET, ONNX_MIN_OPSET  # the exporter's own range

    if not ONNX_MIN_OPSET <= opset <= ONNX_MAX_OPSET:
        raise BigmodelError(f"--opset {opset}: the installed exporter (torch {torch.__version__}) writes opsets "
                            f"{ONNX_MIN_OPSET} to {ONNX_MAX_OPSET}; choose one of those")


def export_graph(model, path: Path, opset: int) -> None:
    """`model` (eval mode, CPU, stock attention) -> `path`, logits for (batch, sequence) inputs."""
    import torch

    names = input_names(model)
    example = {name: torch.ones(2, 8, dtype=torch.long) for name in names}
    example["token_type_ids"] = torch.zeros(2, 8, dtype=torch.long) if "token_type_ids" in names else None
    example = {k: v for k, v in example.items() if v is not None}
    axes = {name: {0: "batch", 1: "sequence"} for name in names}
    axes["logits"] = {0: "batch"} if model.config.architectures and "TokenClassification" not in str(
        model.config.architectures) else {0: "batch", 1: "sequence"}
    import warnings

    try:
        with torch.no_grad(), warnings.catch_warnings():  # the tracer's notes on shapes it fixes: the axes are checked
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (), str(path), kwargs=example, input_names=names, output_names=["logits"],
                              dynamic_axes=axes, opset_version=opset, do_constant_folding=True, dynamo=False)
    except Exception as e:  # the exporter's many failure types: unsupported operators, tracing errors
        raise BigmodelError(f"torch.onnx cannot export {type(model).__name__} ({model.config.model_type}): "
                            f"{type(e).__name__}: {str(e).splitlines()[0][:200]}") from None


def optimize_graph(path: Path, config) -> str:
    """onnxruntime's transformer fusions in place, where the family is BERT-like; returns what was done."""
    family = FUSED_FAMILIES.get(config.model_type)
    if family is None:
        return f"no fusions ({config.model_type} is not a BERT-like encoder onnxruntime fuses)"
    from onnxruntime.transformers.optimizer import optimize_model

    optimized = optimize_model(str(path), model_type=family, num_heads=config.num_attention_heads,
                               hidden_size=config.hidden_size, opt_level=1)
    fused = {op: n for op, n in optimized.get_fused_operator_statistics().items() if n}
    optimized.save_model_to_file(str(path))
    return "fused: " + (", ".join(f"{op} x{n}" for op, n in sorted(fused.items())) or "nothing matched")
