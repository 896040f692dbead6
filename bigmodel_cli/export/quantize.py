"""int8 with a quality gate: onnxruntime's dynamic quantization, tried from the smallest and fastest
setting to safer ones, each scored on the dev set against fp32; the first within `--max-drop`
points of the main metric is kept, and none at all is kept when none is."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Attempt:
    name: str
    per_channel: bool = False
    op_types: tuple[str, ...] | None = None  # None: onnxruntime's default (MatMul, Attention, Gather, ...)
    keep_fp32: tuple[str, ...] = ()  # node name fragments left in fp32
    result: dict = field(default_factory=dict)


def attempts(layers: int) -> list[Attempt]:
    """The settings tried, in order: all weights per tensor; per channel; the embeddings (Gather) in
    fp32 too; and the last layer with every attention output in fp32 too."""
    matmuls = ("MatMul", "Attention")
    return [
        Attempt("per-tensor"),
        Attempt("per-channel", per_channel=True),
        Attempt("per-channel, embeddings fp32", per_channel=True, op_types=matmuls),
        Attempt("per-channel, embeddings, attention outputs and last layer fp32", per_channel=True, op_types=matmuls,
                keep_fp32=(f"layer.{layers - 1}/", "attention/output")),
    ]


def quantize(source: Path, target: Path, attempt: Attempt) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    excluded = [node.name for node in onnx.load(str(source), load_external_data=False).graph.node
                if any(fragment in node.name for fragment in attempt.keep_fp32)]
    kwargs = {"op_types_to_quantize": list(attempt.op_types)} if attempt.op_types else {}
    import logging

    logging.getLogger().setLevel(logging.ERROR)  # its advice to pre-process applies to static quantization
    # The fused graph's contrib operators (Attention, SkipLayerNormalization) have no shape inference in
    # onnx: their outputs' type is said here, float as everything before quantization is.
    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=attempt.per_channel,
                     nodes_to_exclude=excluded, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT}, **kwargs)
