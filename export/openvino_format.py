"""OpenVINO IR export (via ONNX), fp32 or fp16 weights, validated with the OpenVINO CPU plugin."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from ram_edge.errors import ExportError

from .onnx_format import INPUT, OUTPUT, PRECISIONS, write_model_onnx
from .validate import validate_outputs
from .writer import FormatResult


def compress_float_constants(model, min_elements: int = 1024) -> int:
    """Store the large fp32 constants of an INT8 model as fp16 + a decompression Convert; how many were.

    What is left in float beside the 8-bit weights is mostly RAM++'s description embeddings (479 MB at full size in
    fp32) or RAM's folded label queries. `save_model(compress_to_fp16=True)` leaves exactly those in fp32: they feed a
    softmax, which OpenVINO keeps in fp32 along with its inputs. Storage only: the CPU plugin computes in f32. The
    FakeQuantize ranges stay fp32 (compressing them would move the quantization grid).
    """
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    count = 0
    for op in model.get_ops():
        if op.get_type_name() != "Constant" or op.get_element_type() != ov.Type.f32:
            continue
        if int(np.prod(list(op.get_output_shape(0)))) < min_elements:
            continue
        targets = op.output(0).get_target_inputs()
        if any(t.get_node().get_type_name() == "FakeQuantize" for t in targets):
            continue
        data = op.get_data()
        if not np.all(np.isfinite(data)) or np.abs(data).max(initial=0.0) > 65504.0:
            continue
        decompress = ops.convert(ops.constant(data.astype(np.float16)), ov.Type.f32)
        decompress.get_rt_info()["decompression"] = ""
        for target in targets:
            target.replace_source_output(decompress.output(0))
        count += 1
    return count


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
        write_model_onnx(graph, onnx_path, "fp32" if precision == "fp16" else precision, image_size, for_openvino=True)
        model = ov.convert_model(str(onnx_path))
    if precision in ("int8", "int8-weights"):
        compress_float_constants(model)
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
