"""OpenVINO IR export (via ONNX), fp32 or fp16 weights, validated with the OpenVINO CPU plugin."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from ram_edge.errors import ExportError

from .onnx_format import INPUT, OUTPUT, write_onnx
from .validate import validate_outputs
from .writer import FormatResult


def export(graph: torch.nn.Module, directory: Path, precision: str, image_size: int, device: str | None = None) -> FormatResult:
    """Write model.xml + model.bin into `directory` and validate them on the CPU."""
    import openvino as ov

    if precision not in ("fp32", "fp16", "int8"):
        raise ExportError(f"precision {precision!r} is not supported by the openvino exporter; use fp32, fp16 or int8")
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        if precision == "int8":
            from .int8 import write_int8_onnx

            # OpenVINO reads the Q/DQ pairs as FakeQuantize and runs int8 kernels where the CPU has them.
            write_int8_onnx(graph, onnx_path, image_size)
        else:
            write_onnx(graph, onnx_path, image_size)
        model = ov.convert_model(str(onnx_path))
    # save_model compresses to fp16 by default: only do so when asked.
    ov.save_model(model, str(directory / "model.xml"), compress_to_fp16=precision == "fp16")
    # Validated in fp32 compute, which the openvino runtime pins on every CPU (the stored precision may be fp16).
    compiled = ov.Core().compile_model(str(directory / "model.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()

    def run(batch):
        return request.infer({INPUT: batch})[compiled.output(OUTPUT)]

    report = validate_outputs(graph, run, image_size, precision, OUTPUT, runtime="OpenVINO CPU", compute_precision="fp32")
    return FormatResult(files={"model": "model.xml", "weights": "model.bin"}, input_name=INPUT, output_name=OUTPUT,
                        validation=report, queries="folded into the graph as constants")
