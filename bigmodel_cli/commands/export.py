"""`bigmodel export`: a fine-tuned classifier or tagger as ONNX for onnxruntime, checked against
torch; with `--int8` a quantized graph too, kept only when it holds its dev metric. The job is
`export.exporting.run`."""

from __future__ import annotations

from pathlib import Path

from bigmodel_cli.console import say, setup


def command(model: Path, output_dir: Path | None, int8: bool, max_drop: float, data_dir: str | None,
            data_file: str | None, opset: int, quiet: bool) -> None:
    setup(quiet)
    from bigmodel_cli.export.exporting import run

    output_dir = output_dir or model.with_name(f"{model.name}-onnx")
    report = run(model, output_dir, int8, max_drop, data_dir, data_file, opset, quiet)
    if quiet:
        return
    fp32, quantized = report["fp32"], report.get("int8")
    say(f"{output_dir}: fp32 {fp32['bytes'] / 1e6:.1f} MB, {report['metric']} {fp32['metric']:.4f}, "
        f"{fp32['examples_per_second_batch_32']:.0f} examples/s at batch 32")
    if quantized:
        say(f"int8 ({quantized['setting']}): {quantized['bytes'] / 1e6:.1f} MB, {report['metric']} {quantized['metric']:.4f} "
            f"({-quantized['drop_points']:+.2f} points), {quantized['examples_per_second_batch_32']:.0f} examples/s at batch 32")
