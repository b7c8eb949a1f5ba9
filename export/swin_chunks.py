"""Swin's first stages in chunks, in an ONNX graph: the feed-forward by tokens, the window attention by windows.

At 384 px Swin's first stage works on 96 x 96 tokens: per image its feed-forward holds two 28 MB
float tensors (fc1's output and GELU's) and its window attention two 32 MB score tensors (64 windows
x heads x 144^2), so at batch 8 onnxruntime peaks at 617 MB of activations in fp32 and INT8 alike,
and its arena, growing in powers of two, holds 1024 MB for them. Both parts compute row by row: a
token's feed-forward reads only that token, a window's attention only that window (plus the shift
mask of its own position). Written as one copy of the part per chunk of tokens / windows, sharing
every weight, with the results concatenated, a runtime that runs a chunk to its end before the next
holds one chunk's tensors at a time. The arithmetic is the same per row: the outputs match the
graph without chunks exactly on onnxruntime.

Blocks are found by the exporter's names for ram_edge's Swin (`/visual_encoder/layers.I/blocks.J/`,
`norm2`, `mlp/fc2`, `attn/qkv`, `attn/proj`); a block whose part does not have the expected shape
is left whole.
"""

from __future__ import annotations

import math
import re

import numpy as np

from . import onnx_graph

# A part is cut into chunks when its largest float tensor per image is larger than this, into as many as keep each
# chunk's under it (Swin-L/384: stage 1 into 4, stage 2 into 2; Swin-B/384: 3 and 2; the 160 px default model: none).
CHUNK_BYTES = 8 << 20

_BLOCK = re.compile(r"^(/visual_encoder/layers\.\d+/blocks\.\d+/)")
# Ops a token's feed-forward may use: each output row depends on its own input row only.
_TOKENWISE = frozenset({"MatMul", "Add", "Sub", "Mul", "Div", "Erf", "Gelu", "Tanh", "Sigmoid", "Relu",
                        "QuantizeLinear", "DequantizeLinear", "Cast", "Identity"})


def chunk_swin_stages(model, chunk_bytes: int | None = None) -> int:
    """Cut the feed-forward and window attention of every Swin block whose tensors per image exceed `chunk_bytes`
    (default CHUNK_BYTES) into chunks, in place (`model`: an onnx ModelProto); returns the number of parts cut."""
    chunk_bytes = chunk_bytes or CHUNK_BYTES
    shapes = _static_shapes(model)
    graph = model.graph
    blocks = sorted({m.group(1) for node in graph.node if (m := _BLOCK.match(node.name))},
                    key=lambda p: [int(n) for n in re.findall(r"\d+", p)])
    cut = 0
    for block in blocks:
        cut += _chunk_feed_forward(graph, block, shapes, chunk_bytes)
        cut += _chunk_window_attention(graph, block, shapes, chunk_bytes)
    if cut:
        onnx_graph.remove_nodes(graph, set())  # the whole shift masks, now read in slices only
    return cut


def _static_shapes(model) -> dict[str, list]:
    """Tensor name -> dims (None where not static), by ONNX shape inference on the graph without the weights' bytes
    (a full-size graph may be over protobuf's 2 GB when serialized whole, and is slow to copy)."""
    from onnx import shape_inference

    inferred = shape_inference.infer_shapes(_weightless_copy(model), data_prop=True)
    return {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
            for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}


def _weightless_copy(model):
    """`model` with its initializers over 1 KB (or stored outside) turned into graph inputs of the same type and shape."""
    from onnx import ModelProto, TensorProto, helper

    light = ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    light.graph.name = model.graph.name
    light.graph.node.extend(model.graph.node)
    light.graph.input.extend(model.graph.input)
    light.graph.output.extend(model.graph.output)
    for init in model.graph.initializer:
        if len(init.raw_data) > 1024 or init.data_location == TensorProto.EXTERNAL:
            light.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
        else:
            light.graph.initializer.append(init)
    return light


def _region(nodes: list, start: str, end: str, outputs: set[str]) -> list[int] | None:
    """Indices of the nodes on a path from tensor `start` to tensor `end`, or None where a tensor made inside is read
    from outside or is a graph output (`outputs`): then the part cannot be copied alone."""
    producers = {out: i for i, node in enumerate(nodes) for out in node.output}
    readers: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        for name in node.input:
            readers.setdefault(name, []).append(i)
    below, todo = set(), [start]
    while todo:
        for i in readers.get(todo.pop(), []):
            if i not in below:
                below.add(i)
                todo.extend(nodes[i].output)
    above, todo = set(), [end]
    while todo:
        i = producers.get(todo.pop())
        if i is not None and i not in above:
            above.add(i)
            todo.extend(name for name in nodes[i].input if name)
    inside = below & above
    made = {out for i in inside for out in nodes[i].output}
    if (made - {end}) & outputs:
        return None
    for i, node in enumerate(nodes):
        if i not in inside and any(name in made and name != end for name in node.input):
            return None
    return sorted(inside) if inside else None


def _find(nodes: list, prefix: str, op: str) -> list:
    """The nodes of `op` whose name starts with `prefix`, in graph order."""
    return [n for n in nodes if n.op_type == op and n.name.startswith(prefix)]


def _chunk_feed_forward(graph, block: str, shapes: dict, chunk_bytes: int) -> int:
    """norm2's output -> fc2's output of one block, by chunks of tokens (axis 1 of (batch, tokens, channels))."""
    from onnx import helper

    nodes = list(graph.node)
    norms = _find(nodes, block + "norm2/", "LayerNormalization")
    ends = _find(nodes, block + "mlp/fc2/", "Add") or _find(nodes, block + "mlp/fc2/", "MatMul")
    firsts = _find(nodes, block + "mlp/fc1/", "MatMul")
    if len(norms) != 1 or not ends or len(firsts) != 1:
        return 0
    start, end = norms[0].output[0], ends[-1].output[0]
    dims, hidden = shapes.get(start) or [], (shapes.get(firsts[0].output[0]) or [None])[-1]
    if len(dims) != 3 or dims[1] is None or hidden is None:
        return 0
    tokens = dims[1]
    pieces = min(tokens, math.ceil(tokens * hidden * 4 / chunk_bytes))
    inside = _region(nodes, start, end, {o.name for o in graph.output})
    if pieces < 2 or inside is None or any(nodes[i].op_type not in _TOKENWISE for i in inside):
        return 0
    constants = onnx_graph.constant_tensors(graph)
    # A constant read inside must not vary along the tokens: a MatMul's weight, or one that is 1 but on its last axis.
    for i in inside:
        for slot, name in enumerate(nodes[i].input):
            if name in constants and not (nodes[i].op_type == "MatMul" and slot == 1) and any(d != 1 for d in list(constants[name].dims)[:-1]):
                return 0
    bounds = np.linspace(0, tokens, pieces + 1).round().astype(int)
    tag = f"{block}mlp/__tokens"

    def cut(chunk: int) -> tuple[list, str]:
        names = _constants(graph, f"{tag}{chunk}", starts=[bounds[chunk]], ends=[bounds[chunk + 1]], axes=[1])
        return [helper.make_node("Slice", [start, *names], [f"{tag}{chunk}_in"], name=f"{tag}{chunk}_Slice")], f"{tag}{chunk}_in"

    def join(parts: list[str]) -> list:
        return [helper.make_node("Concat", parts, [end], name=f"{tag}_Concat", axis=1)]

    _replace_by_copies(graph, nodes, inside, start, end, len(bounds) - 1, tag, cut, join)
    return 1


def _chunk_window_attention(graph, block: str, shapes: dict, chunk_bytes: int) -> int:
    """The windows (batch x windows, tokens, channels) -> the attention's projected output of one block, by chunks of
    windows (each image's windows split alike, so every chunk keeps its shift mask's rows)."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = list(graph.node)
    qkv = _find(nodes, block + "attn/qkv/", "MatMul")
    ends = _find(nodes, block + "attn/proj/", "Add") or _find(nodes, block + "attn/proj/", "MatMul")
    softmax = _find(nodes, block + "attn/", "Softmax")
    # The block's token count: norm2 reads the same tokens and its shape is static where norm1's may not be.
    norms = _find(nodes, block + "norm2/", "LayerNormalization")
    if len(qkv) != 1 or not ends or len(softmax) != 1 or len(norms) != 1:
        return 0
    producers = {out: node for node in nodes for out in node.output}
    start = qkv[0].input[0]
    # Back from the qkv MatMul over its input's quantization and SmoothQuant scaling to the windows tensor.
    node = producers.get(start)
    while node is not None and node.op_type in ("QuantizeLinear", "DequantizeLinear", "Mul"):
        start = node.input[0]
        node = producers.get(start)
    end = ends[-1].output[0]
    windows_dims, image_dims, scores = shapes.get(start), shapes.get(norms[0].output[0]), shapes.get(softmax[0].output[0])
    if not windows_dims or len(windows_dims) != 3 or not image_dims or len(image_dims) != 3 or not scores or len(scores) != 4:
        return 0
    _, tokens, channels = windows_dims
    heads, pixels = scores[1], image_dims[1]
    if None in (tokens, channels, heads, pixels) or pixels % tokens:
        return 0  # padded windows: the window count is not the token count over the window size
    count = pixels // tokens
    pieces = min(count, math.ceil(count * heads * tokens * tokens * 4 / chunk_bytes))
    inside = _region(nodes, start, end, {o.name for o in graph.output})
    if pieces < 2 or inside is None:
        return 0
    constants = onnx_graph.constant_tensors(graph)
    # The shift mask (1, windows, 1, tokens, tokens) is sliced per chunk, and a Reshape to (batch, windows, ...)
    # gets the chunk's window count; any other constant or shape naming the window count leaves the block whole.
    masks, reshapes = {}, {}
    for i in inside:
        node = nodes[i]
        for slot, name in enumerate(node.input):
            if name in constants and constants[name].data_type != TensorProto.INT64:  # not shapes, axes, indices
                dims = list(constants[name].dims)
                if len(dims) == 5 and dims[1] == count and node.op_type == "Add":
                    masks[(i, slot)] = numpy_helper.to_array(constants[name])
                elif count in dims[:-2]:
                    return 0
        if node.op_type == "Reshape":
            dims = shapes.get(node.output[0]) or []
            if len(dims) >= 2 and dims[1] == count and None not in dims[2:]:
                reshapes[i] = dims[2:]
    bounds = np.linspace(0, count, pieces + 1).round().astype(int)
    tag = f"{block}attn/__windows"

    def cut(chunk: int) -> tuple[list, str]:
        names = _constants(graph, f"{tag}{chunk}", grid=[-1, count, tokens, channels], starts=[bounds[chunk]],
                           ends=[bounds[chunk + 1]], axes=[1], flat=[-1, tokens, channels])
        grid, starts, ends_, axes, flat = names
        return [helper.make_node("Reshape", [start, grid], [f"{tag}{chunk}_grid"], name=f"{tag}{chunk}_Grid"),
                helper.make_node("Slice", [f"{tag}{chunk}_grid", starts, ends_, axes], [f"{tag}{chunk}_part"], name=f"{tag}{chunk}_Slice"),
                helper.make_node("Reshape", [f"{tag}{chunk}_part", flat], [f"{tag}{chunk}_in"], name=f"{tag}{chunk}_Flat")], f"{tag}{chunk}_in"

    def patch(index: int, copy, chunk: int) -> None:
        lo, hi = int(bounds[chunk]), int(bounds[chunk + 1])
        for (i, slot), mask in masks.items():
            if i == index:
                copy.input[slot] = _constants(graph, f"{copy.name}_mask", mask=mask[:, lo:hi])[0]
        if index in reshapes:
            copy.input[1] = _constants(graph, f"{copy.name}_shape", shape=[-1, hi - lo, *reshapes[index]])[0]

    def join(parts: list[str]) -> list:
        out, grids = [], []
        for chunk, part in enumerate(parts):
            shape = _constants(graph, f"{tag}{chunk}_out", shape=[-1, int(bounds[chunk + 1] - bounds[chunk]), tokens, channels])[0]
            out.append(helper.make_node("Reshape", [part, shape], [f"{part}_grid"], name=f"{tag}{chunk}_OutGrid"))
            grids.append(f"{part}_grid")
        flat = _constants(graph, f"{tag}_flat", shape=[-1, tokens, channels])[0]
        out += [helper.make_node("Concat", grids, [f"{tag}_joined"], name=f"{tag}_Concat", axis=1),
                helper.make_node("Reshape", [f"{tag}_joined", flat], [end], name=f"{tag}_Flat")]
        return out

    _replace_by_copies(graph, nodes, inside, start, end, len(bounds) - 1, tag, cut, join, patch)
    return 1


def _constants(graph, prefix: str, **values) -> list[str]:
    """Add one initializer per keyword (int64 unless it is a float array), named prefix__key; returns the names."""
    from onnx import numpy_helper

    names = []
    for key, value in values.items():
        array = value if isinstance(value, np.ndarray) and value.dtype.kind == "f" else np.asarray(value, dtype=np.int64)
        name = f"{prefix}__{key}"
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        names.append(name)
    return names


def _replace_by_copies(graph, nodes: list, inside: list[int], start: str, end: str, pieces: int, tag: str,
                       cut, join, patch=None) -> None:
    """Put one copy of the nodes `inside` per chunk where they were (each reading `cut(chunk)`'s tensor for `start`),
    then `join`'s nodes writing `end`; copies left without readers (shape arithmetic a patch replaced) are dropped."""
    copies, parts = [], []
    suffix = tag.rsplit("/", 1)[-1]
    for chunk in range(pieces):
        head, source = cut(chunk)
        copies += head
        renamed = {start: source}
        for index in inside:
            copy = type(nodes[index])()
            copy.CopyFrom(nodes[index])
            copy.name = f"{copy.name or copy.op_type}__{suffix}{chunk}"
            for slot, name in enumerate(copy.input):
                copy.input[slot] = renamed.get(name, name)
            for slot, name in enumerate(copy.output):
                renamed[name] = copy.output[slot] = f"{name}__{suffix}{chunk}"
            if patch is not None:
                patch(index, copy, chunk)
            copies.append(copy)
        parts.append(renamed[end])
    copies += join(parts)
    first, skip = inside[0], set(inside)
    read_outside = {o.name for o in graph.output} | {name for i, n in enumerate(nodes) if i not in skip for name in n.input}
    while True:  # drop copies nothing reads
        read = read_outside | {name for node in copies for name in node.input}
        alive = [n for n in copies if any(out in read for out in n.output)]
        if len(alive) == len(copies):
            break
        copies = alive
    rebuilt = []
    for i, node in enumerate(nodes):
        if i == first:
            rebuilt.extend(copies)
        if i not in skip:
            rebuilt.append(node)
    del graph.node[:]
    graph.node.extend(rebuilt)
    made = {out for i in inside for out in nodes[i].output} - {end}
    for info in [v for v in graph.value_info if v.name in made]:
        graph.value_info.remove(info)
