"""OpenVINO IR export (via ONNX), fp32 or fp16 weights, validated with the OpenVINO CPU plugin."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from ram_edge.errors import ExportError

from .onnx_format import INPUT, OUTPUT, PRECISIONS, write_model_onnx
from .validate import validate_outputs
from .writer import FormatResult


def export(graph: torch.nn.Module, directory: Path, precision: str, image_size: int, device: str | None = None,
           reference: torch.nn.Module | None = None) -> FormatResult:
    """Write model.xml + model.bin into `directory` and validate them on the CPU against `reference` (default: graph)."""
    import openvino as ov

    if precision not in PRECISIONS:
        raise ExportError(f"precision {precision!r} is not supported by the openvino exporter; use fp32, fp16 or int8")
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        # int8: OpenVINO reads the Q/DQ pairs as FakeQuantize and runs int8 kernels where the CPU has them;
        # int8-weights: the DequantizeLinear of a constant becomes a decompression the CPU plugin keeps 8-bit.
        write_model_onnx(graph, onnx_path, "fp32" if precision == "fp16" else precision, image_size)
        model = ov.convert_model(str(onnx_path))
    # save_model compresses to fp16 by default: only do so when asked.
    ov.save_model(model, str(directory / "model.xml"), compress_to_fp16=precision == "fp16")
    # Validated in fp32 compute, which the openvino runtime pins on every CPU (the stored precision may be fp16).
    compiled = ov.Core().compile_model(str(directory / "model.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()

    def run(batch):
        return request.infer({INPUT: batch})[compiled.output(OUTPUT)]

    report = validate_outputs(reference if reference is not None else graph, run, image_size, precision, OUTPUT,
                              runtime="OpenVINO CPU", compute_precision="fp32")
    return FormatResult(files={"model": "model.xml", "weights": "model.bin"}, input_name=INPUT, output_name=OUTPUT,
                        validation=report, queries="folded into the graph as constants")
