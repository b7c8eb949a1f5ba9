"""INT8 ONNX from an NNCF-quantized graph: explicit Q/DQ quantization with int8 weight initializers.

`nncf.strip(..., NATIVE)` + the legacy exporter gives QuantizeLinear -> DequantizeLinear pairs in
which the weights stay float32 behind a QuantizeLinear (four times the size, and a quantization
at every run). Folding computes that QuantizeLinear once: the weight becomes an int8 (or uint8)
initializer feeding the DequantizeLinear directly, numerically identical (ONNX rounds half to
even and saturates, as numpy's rint + clip here). TensorRT builds explicit-quantization engines
from this form; onnxruntime fuses it into int8 kernels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def write_int8_onnx(quantized: torch.nn.Module, path: Path, image_size: int) -> int:
    """Export an NNCF-quantized graph to a Q/DQ ONNX file with folded int8 weights; returns the weights folded."""
    from ram_edge.quantize.quantizer import nncf_output_to_stderr  # first: it sets NNCF's kernel-build timeout

    import nncf

    from .onnx_format import write_onnx

    example = torch.zeros(1, 3, image_size, image_size)
    with nncf_output_to_stderr():
        native = nncf.strip(quantized, do_copy=True, strip_format=nncf.StripFormat.NATIVE, example_input=example)
    write_onnx(native.eval(), path, image_size)
    return fold_quantized_weights(path)


def fold_quantized_weights(path: Path) -> int:
    """Replace every QuantizeLinear of a constant (weight) by its int8 result, in place; returns how many."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    # Constants are initializers or Constant nodes (the exporter writes small ones, zero points among them, as nodes).
    constants = {init.name: init for init in graph.initializer}
    for node in graph.node:  # topological order: an Identity of a constant is a constant too (shared zero points)
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = node.attribute[0].t
        elif node.op_type == "Identity" and node.input[0] in constants:
            constants[node.output[0]] = constants[node.input[0]]
    folded, keep = 0, []
    renamed: dict[str, str] = {}
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or len(node.input) < 3 or not all(name in constants for name in node.input[:3]):
            keep.append(node)
            continue
        weight = numpy_helper.to_array(constants[node.input[0]]).astype(np.float32)
        scale = numpy_helper.to_array(constants[node.input[1]]).astype(np.float32)
        zero = numpy_helper.to_array(constants[node.input[2]])
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if scale.ndim == 1 and scale.size > 1:
            shape = [1] * weight.ndim
            shape[axis] = scale.size
            scale, zero_b = scale.reshape(shape), zero.reshape(shape).astype(np.int32)
        else:
            zero_b = zero.astype(np.int32)
        info = np.iinfo(zero.dtype)
        values = np.clip(np.rint(weight / scale) + zero_b, info.min, info.max).astype(zero.dtype)
        name = f"{node.input[0]}__int8"
        graph.initializer.append(numpy_helper.from_array(values, name))
        renamed[node.output[0]] = name
        folded += 1
    for node in keep:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
    # Drop the float weights (and Constant nodes) nothing reads any more.
    used = {name for node in keep for name in node.input} | {o.name for o in graph.output}
    keep = [n for n in keep if n.op_type not in ("Constant", "Identity") or n.output[0] in used]
    del graph.node[:]
    graph.node.extend(keep)
    for init in [init for init in graph.initializer if init.name not in used]:
        graph.initializer.remove(init)
    onnx.save(model, str(path))
    return folded
