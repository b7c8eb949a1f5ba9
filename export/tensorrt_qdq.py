"""TensorRT's rule for Q/DQ ONNX, and the conversion of an asymmetric INT8 ONNX to one TensorRT parses.

TensorRT quantizes symmetrically only: the ONNX parser (onnx-tensorrt) accepts QuantizeLinear and
DequantizeLinear whose zero point is int8 and all zero. NNCF's transformer preset (what `ram-edge
quantize` runs) quantizes activations asymmetrically into uint8 with non-zero zero points, which
onnxruntime and OpenVINO run as they are. `to_symmetric_int8` rewrites every such quantizer to the
symmetric int8 one that covers the same range (scale = max(|low|, |high|) / 127, zero point 0):
the clamp range is kept, one-sided ranges lose up to one bit of resolution. Weights quantized with
a zero point are requantized per channel the same way. Needs the `onnx` package (no torch).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ram_edge.errors import ExportError

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# onnx TensorProto element types
_UINT8, _INT8 = 2, 3
_RANGES = {_UINT8: (0, 255), _INT8: (-128, 127)}
_NAMES = {_UINT8: "uint8", _INT8: "int8"}


@dataclass
class QdqReport:
    """What `to_symmetric_int8` changed."""

    activation_quantizers: int = 0  # QuantizeLinear nodes rewritten
    weight_tensors: int = 0  # constant weights requantized
    already_symmetric: int = 0
    scale_growth: list[float] = field(default_factory=list)  # new scale / old scale per rewritten quantizer

    def as_dict(self) -> dict[str, Any]:
        """The manifest's record of the conversion."""
        growth = np.asarray(self.scale_growth or [1.0])
        return {"rule": "TensorRT: int8 zero points, all zero", "activation_quantizers_converted": self.activation_quantizers,
                "weight_tensors_requantized": self.weight_tensors, "already_symmetric": self.already_symmetric,
                "scale_growth_mean": round(float(growth.mean()), 4), "scale_growth_max": round(float(growth.max()), 4)}


class _Graph:
    """Constant lookup through Identity chains and Constant nodes (how torch's exporter shares scales)."""

    def __init__(self, model) -> None:
        self.model = model
        self.graph = model.graph
        self.inits = {t.name: t for t in self.graph.initializer}
        self.producer = {out: node for node in self.graph.node for out in node.output}
        self.consumers: dict[str, list[Any]] = {}
        for node in self.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)

    def tensor(self, name: str):
        """The TensorProto behind `name` (initializer, Constant, or Identity of one), or None."""
        seen = 0
        while seen < 64:
            if name in self.inits:
                return self.inits[name]
            node = self.producer.get(name)
            if node is None:
                return None
            if node.op_type == "Identity":
                name, seen = node.input[0], seen + 1
                continue
            if node.op_type == "Constant":
                return next((a.t for a in node.attribute if a.name == "value"), None)
            return None
        return None

    def array(self, name: str) -> np.ndarray | None:
        from onnx import numpy_helper

        tensor = self.tensor(name)
        return None if tensor is None else numpy_helper.to_array(tensor)

    def add(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        base, n = name, 0
        while name in self.inits or name in self.producer:
            n += 1
            name = f"{base}_{n}"
        tensor = numpy_helper.from_array(value, name)
        self.graph.initializer.append(tensor)
        self.inits[name] = tensor
        return name


# Operations that move or select quantized values without changing them: a DequantizeLinear behind them still reads
# the codes of the QuantizeLinear before them (and must use its scale and zero point).
_VALUE_PRESERVING = {"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Slice", "Gather", "Split",
                     "Expand", "Tile", "MaxPool", "Pad"}


def _source_quantize(graph: _Graph, name: str):
    """The QuantizeLinear whose codes reach tensor `name` through value-preserving operations, or None."""
    for _ in range(64):
        node = graph.producer.get(name)
        if node is None:
            return None
        if node.op_type == "QuantizeLinear":
            return node
        if node.op_type not in _VALUE_PRESERVING:
            return None
        name = node.input[0]
    return None


def _zero_point(graph: _Graph, node) -> tuple[int, np.ndarray | None]:
    """(element type, value) of a Q/DQ node's zero point; an absent one is uint8 0 (the ONNX default)."""
    if len(node.input) < 3 or not node.input[2]:
        return _UINT8, np.zeros((), np.uint8)
    tensor = graph.tensor(node.input[2])
    if tensor is None:
        return -1, None
    return int(tensor.data_type), graph.array(node.input[2])


def violations(model) -> list[str]:
    """The Q/DQ nodes TensorRT's ONNX parser refuses, each named with why (empty: it parses)."""
    graph = _Graph(model)
    problems = []
    for node in graph.graph.node:
        if node.op_type not in QDQ_OPS:
            continue
        kind, zp = _zero_point(graph, node)
        if kind == -1:
            problems.append(f"{node.op_type} {node.name!r}: zero point {node.input[2]!r} is not a constant")
        elif kind != _INT8:
            problems.append(f"{node.op_type} {node.name!r}: zero point of type {_NAMES.get(kind, kind)} (TensorRT needs int8)")
        elif zp is not None and np.any(zp != 0):
            problems.append(f"{node.op_type} {node.name!r}: non-zero zero point {int(zp.ravel()[np.flatnonzero(zp)[0]])}")
    return problems


def _axis(node, ndim: int) -> int:
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    return axis + ndim if axis < 0 else axis


def _symmetric(scale: np.ndarray, zp: np.ndarray, kind: int) -> np.ndarray:
    """The int8 symmetric scale covering the range [(qmin - zp) * scale, (qmax - zp) * scale]."""
    qmin, qmax = _RANGES[kind]
    zp = zp.astype(np.float64)
    low, high = (qmin - zp) * scale, (qmax - zp) * scale
    amax = np.maximum(np.abs(low), np.abs(high))
    new = np.where(amax > 0, amax / 127.0, scale)
    return new.astype(np.float32)


def _requantize_weight(graph: _Graph, node, report: QdqReport) -> None:
    """DQ of a constant weight with a zero point: dequantize, then quantize symmetric int8 on the same axis."""
    weights = graph.array(node.input[0])
    scale = graph.array(node.input[1]).astype(np.float64)
    kind, zp = _zero_point(graph, node)
    if weights is None or zp is None:
        raise ExportError(f"DequantizeLinear {node.name!r}: its weight or zero point is not a constant; it cannot be converted")
    shape = [1] * weights.ndim
    if scale.ndim == 1 and scale.size > 1:
        shape[_axis(node, weights.ndim)] = scale.size
    real = (weights.astype(np.float64) - zp.astype(np.float64).reshape(shape)) * scale.reshape(shape)
    reduce = tuple(i for i in range(weights.ndim) if shape[i] == 1)
    amax = np.abs(real).max(axis=reduce) if reduce else np.abs(real)
    new_scale = np.where(amax > 0, amax / 127.0, scale.reshape(amax.shape) if scale.size == amax.size else 1.0).astype(np.float32)
    quantized = np.clip(np.rint(real / new_scale.reshape(shape)), -127, 127).astype(np.int8)
    node.input[0] = graph.add(f"{node.input[0]}_trt_int8", quantized)
    node.input[1] = graph.add(f"{node.name}_trt_scale", new_scale.reshape(scale.shape))
    zero = np.zeros(scale.shape, np.int8)
    if len(node.input) < 3:
        node.input.append("")
    node.input[2] = graph.add(f"{node.name}_trt_zero_point", zero)
    report.weight_tensors += 1


def _set_qparams(node, names: tuple[str, str]) -> None:
    """Point a Q/DQ node's scale and zero point inputs at `names` (adding the optional zero point input)."""
    while len(node.input) < 3:
        node.input.append("")
    node.input[1], node.input[2] = names


def to_symmetric_int8(model) -> tuple[Any, QdqReport]:
    """Rewrite `model` (an onnx ModelProto, changed in place) so every Q/DQ is symmetric int8; returns it and a report."""
    graph = _Graph(model)
    report = QdqReport()
    rewritten: dict[str, tuple[str, str]] = {}  # QuantizeLinear output -> its new (scale, zero point) names
    for node in list(graph.graph.node):
        if node.op_type != "QuantizeLinear":
            continue
        kind, zp = _zero_point(graph, node)
        scale = graph.array(node.input[1])
        if kind == -1 or zp is None or scale is None:
            raise ExportError(f"QuantizeLinear {node.name!r}: its scale or zero point is not a constant; it cannot be converted")
        if kind not in _RANGES:
            raise ExportError(f"QuantizeLinear {node.name!r}: {_NAMES.get(kind, kind)} quantization cannot be converted to int8")
        if kind == _INT8 and not np.any(zp != 0):
            report.already_symmetric += 1
            continue
        new_scale = _symmetric(scale.astype(np.float64), zp, kind)
        names = (graph.add(f"{node.name}_trt_scale", new_scale), graph.add(f"{node.name}_trt_zero_point", np.zeros(zp.shape, np.int8)))
        _set_qparams(node, names)
        rewritten[node.output[0]] = names
        report.activation_quantizers += 1
        report.scale_growth.extend((new_scale / np.maximum(scale, 1e-30)).astype(float).ravel().tolist())
    for node in list(graph.graph.node):
        if node.op_type != "DequantizeLinear":
            continue
        source = _source_quantize(graph, node.input[0])  # Q -> DQ, or Q -> Transpose/Reshape/... -> DQ
        if source is not None and source.output[0] in rewritten:
            _set_qparams(node, rewritten[source.output[0]])
            continue
        kind, zp = _zero_point(graph, node)
        if kind == _INT8 and zp is not None and not np.any(zp != 0):
            continue
        if graph.tensor(node.input[0]) is None:
            raise ExportError(f"DequantizeLinear {node.name!r} dequantizes a computed {_NAMES.get(kind, kind)} tensor with a zero "
                              f"point; it cannot be converted to TensorRT's symmetric int8")
        _requantize_weight(graph, node, report)
    _drop_unused_initializers(graph)
    return model, report


def _drop_unused_initializers(graph: _Graph) -> None:
    used = {name for node in graph.graph.node for name in node.input} | {o.name for o in graph.graph.output}
    keep = [t for t in graph.graph.initializer if t.name in used]
    if len(keep) != len(graph.graph.initializer):
        del graph.graph.initializer[:]
        graph.graph.initializer.extend(keep)


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ExportError("converting an INT8 ONNX for TensorRT reads the graph with the `onnx` package, which is not installed: "
                          "pip install 'ram-edge[trt]' (or pip install onnx)") from None
    return onnx


def check_file(path: Path) -> list[str]:
    """`violations` of the ONNX file at `path` (its external weights are not read)."""
    onnx = _onnx()
    return violations(onnx.load(str(path), load_external_data=False))


def convert_file(source: Path, target: Path) -> QdqReport:
    """Write the symmetric int8 version of the ONNX at `source` to `target` (weights external when they were)."""
    onnx = _onnx()
    from .onnx_file import data_file, save_onnx

    model = onnx.load(str(source))
    model, report = to_symmetric_int8(model)
    left = violations(model)
    if left:
        raise ExportError(f"{source}: {len(left)} quantizer(s) stay outside TensorRT's rule after conversion, e.g. {left[0]}")
    save_onnx(model, target, min_bytes=0 if data_file(source).exists() else None)
    return report
