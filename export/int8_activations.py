"""Rewrites of the activation side of an INT8 Q/DQ graph, so that onnxruntime's int8 kernels see it.

NNCF quantizes where the torch graph reads a tensor, and the exporter keeps torch's order of
operations, so a DequantizeLinear can sit a few data-movement ops away from the MatMul it feeds
(Swin's keys: DQ(qkv) -> Gather -> Transpose -> MatMul) and a float scaling can sit between a
tensor and its QuantizeLinear (the SmoothQuant scales after a LayerNorm, the attention scale).
onnxruntime only fuses a MatMul whose inputs come straight from DequantizeLinear nodes into an
int8 kernel, and runs every float scaling as its own pass over the tensor. Both rewrites keep the
arithmetic: per-tensor quantization commutes with ops that only move values, and a positive scalar
scaling before a quantization is a change of its scale. Float rounding differs in the last bit, which
can move a value across a rounding tie of the int8 grid: probabilities moved by up to 0.003 on the
default model and 0.005 on Swin-L/384 (random weights) against the graph without the rewrites.
"""

from __future__ import annotations

from typing import Collection

import numpy as np

from . import onnx_graph

# Ops that move or select values without changing them: per-tensor (de)quantization commutes with them.
_MOVE_OPS = frozenset({"Gather", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten"})
# Averages and sums. OpenVINO's CPU plugin (2026.4) computes one of these on the 8-bit tensor when a DequantizeLinear
# reaches it through a Transpose (Swin's pooled token: DQ -> Transpose -> GlobalAveragePool), and its int8 mean / sum
# over a middle axis is 0 past the first image of a batch (benchmarks/results/openvino_int8_batch/openvino_int8_batch.md): dequantize_at_reductions.
REDUCTIONS = frozenset({"GlobalAveragePool", "ReduceMean", "ReduceSum"})


def _per_tensor(node, constants: dict) -> bool:
    """Whether a QuantizeLinear / DequantizeLinear has one scale and one zero point (constants: name -> TensorProto)."""
    return all(name in constants and int(np.prod(constants[name].dims)) == 1 for name in node.input[1:3] if name)


def sink_dequantize(graph, into: Collection[str] | None = None) -> int:
    """Move per-tensor DequantizeLinear nodes of activations below the data-movement ops that are their only
    reader besides Shape nodes (and per-tensor QuantizeLinear nodes below a Gather that is theirs), in place;
    returns how many moved.

    The moved op then runs on the 8-bit tensor (a quarter of the bytes), the DequantizeLinear lands beside the
    MatMul it feeds, and onnxruntime fuses that MatMul into MatMulIntegerToFloat: Swin's attention scores
    (queries x keys) run in int8 instead of being dequantized and multiplied in float. A QuantizeLinear below
    a Gather quantizes only the slice taken (the keys, not all of queries, keys and values).

    `into` (op types, e.g. REDUCTIONS): move only the DequantizeLinear nodes whose chain of data-movement ops
    ends at one of them. Every value stays bit for bit what it was (a per-tensor dequantization commutes exactly
    with ops that only move values), so a shipped bundle can take it without new validation.
    """
    outputs = {o.name for o in graph.output}
    constants = onnx_graph.constant_tensors(graph)
    nodes = list(graph.node)
    moved = 0
    changed = True
    while changed:
        changed = False
        consumers: dict[str, list] = {}
        for node in nodes:  # the working list, not graph.node: nodes move within it
            for name in node.input:
                consumers.setdefault(name, []).append(node)

        def only_reader(name: str):
            # A Shape reader (the exporter's view/reshape arithmetic) reads the same shape before the (de)quantizer.
            data = [r for r in consumers.get(name, []) if r.op_type != "Shape"]
            if len(data) != 1 or data[0].input[0] != name or name in data[0].input[1:] or data[0].output[0] in outputs:
                return None
            return data[0]

        for node in list(nodes):
            if node.op_type not in ("DequantizeLinear", "QuantizeLinear") or node.output[0] in outputs:
                continue
            if node.input[0] in constants or not _per_tensor(node, constants):
                continue
            reader = only_reader(node.output[0])
            if into is not None and (node.op_type != "DequantizeLinear" or reader is None
                                     or not _chain_ends_in(reader, consumers, into)):
                continue
            readers = consumers.get(node.output[0], [])
            movable = _MOVE_OPS if node.op_type == "DequantizeLinear" else {"Gather"}
            if reader is None or reader.op_type not in movable:
                continue
            for shape in readers:
                if shape.op_type == "Shape":
                    shape.input[0] = node.input[0]
            # reader(Q/DQ(x)) -> Q/DQ(reader(x)): the reader takes the (de)quantizer's input, the (de)quantizer
            # its output, and writes the tensor the reader wrote.
            result = reader.output[0]
            reader.input[0], reader.output[0] = node.input[0], f"{result}__before_{node.op_type}"
            node.input[0], node.output[0] = reader.output[0], result
            nodes.remove(node)
            nodes.insert(nodes.index(reader) + 1, node)
            moved += 1
            changed = True
    if moved:
        del graph.node[:]
        graph.node.extend(nodes)
    return moved


def dequantize_at_reductions(graph) -> int:
    """Move each per-tensor DequantizeLinear of an activation that reaches a reduction (REDUCTIONS) through
    data-movement ops down to it, giving the chain its own copy of a DequantizeLinear that other ops read too, in
    place; returns how many moved. Every value stays bit for bit what it was.

    OpenVINO then averages the dequantized float values: with the DequantizeLinear above a Transpose it averages the
    8-bit ones, and that kernel is wrong past the first image of a batch (REDUCTIONS). `sink_dequantize` moves the
    unshared ones already; without SmoothQuant the encoder's last LayerNorm is quantized once for the pooled token
    and the other tokens, so its DequantizeLinear has two readers.
    """
    from onnx import NodeProto

    consumers = onnx_graph.consumers(graph)
    constants = onnx_graph.constant_tensors(graph)
    nodes = list(graph.node)
    for node in list(nodes):
        if node.op_type != "DequantizeLinear" or node.input[0] in constants or not _per_tensor(node, constants):
            continue
        data = [r for r in consumers.get(node.output[0], []) if r.op_type != "Shape"]
        if len(data) < 2:
            continue
        for reader in data:
            if reader.input[0] != node.output[0] or not _chain_ends_in(reader, consumers, REDUCTIONS):
                continue
            copy = NodeProto()
            copy.CopyFrom(node)
            copy.name = f"{node.name}__for_{reader.name}"
            copy.output[0] = f"{node.output[0]}__for_{reader.name}"
            reader.input[0] = copy.output[0]
            nodes.insert(nodes.index(reader), copy)
    if len(nodes) != len(graph.node):
        del graph.node[:]
        graph.node.extend(nodes)
    return sink_dequantize(graph, into=REDUCTIONS)


def _chain_ends_in(reader, consumers: dict, ops: Collection[str]) -> bool:
    """Whether `reader`, followed through data-movement ops that are each their input's only reader, is or reaches one
    of `ops`."""
    while reader.op_type in _MOVE_OPS:
        data = [r for r in consumers.get(reader.output[0], []) if r.op_type != "Shape"]
        if len(data) != 1 or data[0].input[0] != reader.output[0]:
            return False
        reader = data[0]
    return reader.op_type in ops


def fold_float_scales(graph) -> int:
    """Fold float scalings that precede a quantization into the ops around them, in place; returns how many.

    - LayerNorm -> Mul(per-channel constant), the Mul the LayerNorm's only reader (SmoothQuant's smoothing
      factors in front of a quantized Linear): the factors go into the LayerNorm's gamma and beta.
    - Mul(positive scalar constant) -> per-tensor QuantizeLinear, the Q the Mul's only reader (attention's
      1/sqrt(d) on the queries): Q(x * c, s) = Q(x, s / c).
    """
    from onnx import numpy_helper

    constants = onnx_graph.constant_tensors(graph)  # TensorProtos: only the few values used are converted

    def value(name: str) -> np.ndarray:
        return numpy_helper.to_array(constants[name])

    producers = {out: node for node in graph.node for out in node.output}
    consumers = onnx_graph.consumers(graph)
    outputs = {o.name for o in graph.output}
    dropped, folded = set(), 0
    for mul in graph.node:
        if mul.op_type != "Mul" or mul.output[0] in outputs:
            continue
        side = next((i for i in (0, 1) if mul.input[1 - i] in constants and mul.input[i] not in constants), None)
        if side is None:
            continue
        source, factor = mul.input[side], value(mul.input[1 - side]).astype(np.float32)
        producer = producers.get(source)
        readers = consumers.get(mul.output[0], [])
        if (producer is not None and producer.op_type == "LayerNormalization" and len(consumers.get(source, [])) == 1
                and source not in outputs and len(producer.input) == 3 and all(name in constants for name in producer.input[1:])
                and factor.ndim >= 1 and all(d == 1 for d in factor.shape[:-1])):
            vector = factor.reshape(-1)
            gamma, beta = (value(name) for name in producer.input[1:])
            if gamma.shape != vector.shape or beta.shape != vector.shape:
                continue
            for slot, weights in ((1, gamma), (2, beta)):
                name = f"{producer.name}__smoothed{slot}"
                graph.initializer.append(numpy_helper.from_array((weights * vector).astype(weights.dtype), name))
                producer.input[slot] = name
            producer.output[0] = mul.output[0]
        elif (factor.size == 1 and float(factor.reshape(-1)[0]) > 0 and len(readers) == 1
              and readers[0].op_type == "QuantizeLinear" and _per_tensor(readers[0], constants)
              and (producer is None or producer.op_type != "Mul")):  # the erf GELU ends in Mul(Mul(..), 0.5): keep it fusable
            quantize = readers[0]
            scale = value(quantize.input[1])
            name = f"{quantize.name}__scale_over_factor"
            graph.initializer.append(numpy_helper.from_array((scale / factor.reshape(scale.shape)).astype(scale.dtype), name))
            quantize.input[0], quantize.input[1] = source, name
        else:
            continue
        dropped.add(id(mul))
        folded += 1
    if folded:
        onnx_graph.remove_nodes(graph, dropped)
    return folded
