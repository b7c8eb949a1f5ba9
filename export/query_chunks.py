"""The decoder's per-label work in chunks of label queries, in an ONNX graph.

RAM's decoder answers every tag independently: each label query cross-attends to the image and goes
through its own feed-forward; nothing mixes queries (RAM++'s description mixing is per tag too). At
batch 8 and 4585 tags one feed-forward tensor is 8 x 4585 x 3072 floats, 451 MB, and a runtime holds
two or three of them at once: about 1 GB of the peak, the same in fp32 and INT8 (Swin-L/384 batch
8 on onnxruntime: 3186 MB fp32 / 2198 MB INT8 with all tags, 2247 / 1284 MB with 100). Written as
one copy of that subgraph per chunk of queries, sharing every weight, with the answers concatenated,
a runtime that runs a chunk to its end before the next holds one chunk's tensors at a time.
"""

from __future__ import annotations

import numpy as np

from . import onnx_graph

# Label queries per decoder pass in ONNX bundles: at batch 8 one feed-forward tensor of a chunk is 8 x 1024 x
# 3072 floats (100 MB), below the encoder's own peak at Swin-L/384.
QUERY_CHUNK = 1024


def chunk_label_queries(graph, max_queries: int | None = None) -> int:
    """Rewrite the subgraph that depends on the label queries as one copy per chunk of at most `max_queries`
    (default QUERY_CHUNK) queries, in place; returns the number of chunks (0 where the graph has no more queries
    than that, or where the rewrite could not be proven to be a split along the query axis: the graph is then left
    as it was).

    The queries are found as the constants of rank 3 or more with exactly one leading axis of the output's tag
    count N; the subgraph is everything downstream of them. Each copy reads its slice of those constants; a
    Reshape whose constant shape names N reads the chunk's size instead; the outputs are concatenated along their
    N axis. Any other constant naming N in the subgraph (a per-tag bias, a Slice bound, an Expand shape) stops
    the rewrite.
    """
    from onnx import TensorProto, helper, numpy_helper

    max_queries = max_queries or QUERY_CHUNK
    outputs = {o.name: o for o in graph.output}
    tags = _tag_count(graph)
    if tags is None or tags <= max_queries:
        return 0
    # Not through Identity: an alias of a query constant would be a second seed for the same tensor.
    constants = onnx_graph.constant_tensors(graph, identities=False)
    # The queries (1, N, D) and RAM++'s description embeddings (N, descriptions, D): N on a leading axis of a
    # tensor of rank 3 or more. A weight that happens to have N rows or columns (rank 2) is not one.
    seeds: dict[str, int] = {}
    for name, tensor in constants.items():
        dims = list(tensor.dims)
        if len(dims) >= 3 and tensor.data_type != TensorProto.INT64 and tags in dims[:-1]:
            if dims.count(tags) != 1:
                return 0
            seeds[name] = dims.index(tags)
    if not seeds:
        return 0
    # Everything downstream of the queries, in graph order.
    dependent, inside = set(seeds), []
    for node in graph.node:
        if any(name in dependent for name in node.input):
            inside.append(node)
            dependent.update(node.output)
    # Any other constant with N in its shape that the subgraph reads would need slicing too: leave the graph whole.
    if any(name in constants and name not in seeds and tags in constants[name].dims and constants[name].data_type != TensorProto.INT64
           for node in inside for name in node.input):
        return 0
    axes: dict[str, int] = {}
    for name in dependent & set(outputs):
        dims = [d.dim_value for d in outputs[name].type.tensor_type.shape.dim]
        if dims.count(tags) != 1:
            return 0
        axes[name] = dims.index(tags)
    if not axes:
        return 0
    reshapes: dict[int, str] = {}
    for node in inside:
        for slot, name in enumerate(node.input):
            if name in dependent or name not in constants or constants[name].data_type != TensorProto.INT64:
                continue
            values = numpy_helper.to_array(constants[name]).reshape(-1)
            if tags in values:
                if node.op_type != "Reshape" or slot != 1 or list(values).count(tags) != 1:
                    return 0
                reshapes[id(node)] = name

    bounds = np.linspace(0, tags, -(-tags // max_queries) + 1).round().astype(int)
    copies, parts = [], {name: [] for name in axes}
    for chunk, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
        suffix = f"__queries{chunk}"
        renamed = {}
        for name, axis in seeds.items():
            values = np.take(numpy_helper.to_array(constants[name]), np.arange(start, stop), axis=axis)
            graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(values), name + suffix))
            renamed[name] = name + suffix
        for index, node in enumerate(inside):
            copy = type(node)()
            copy.CopyFrom(node)
            copy.name = (node.name or f"{node.op_type}_{index}") + suffix
            for slot, name in enumerate(node.input):
                if name in renamed:
                    copy.input[slot] = renamed[name]
            if id(node) in reshapes:
                shape = numpy_helper.to_array(constants[reshapes[id(node)]]).copy()
                shape[shape == tags] = stop - start
                graph.initializer.append(numpy_helper.from_array(shape, reshapes[id(node)] + suffix))
                copy.input[1] = reshapes[id(node)] + suffix
            for slot, name in enumerate(node.output):
                renamed[name] = name + suffix
                copy.output[slot] = name + suffix
            copies.append(copy)
        for name in axes:
            parts[name].append(renamed[name])
    joins = [helper.make_node("Concat", parts[name], [name], name=f"{name}__concat_queries", axis=axis) for name, axis in axes.items()]
    # Nothing outside the subgraph reads it, so the rest keeps its order and the copies run after it, one chunk
    # after the other.
    graph.node.extend(copies + joins)
    onnx_graph.remove_nodes(graph, {id(n) for n in inside})
    for info in [v for v in graph.value_info if v.name in dependent]:
        graph.value_info.remove(info)
    return len(bounds) - 1


def _tag_count(graph) -> int | None:
    """N of the graph's (batch, N) probabilities output, where the graph states it."""
    if len(graph.output) != 1:
        return None
    dims = graph.output[0].type.tensor_type.shape.dim
    return dims[-1].dim_value if len(dims) == 2 and dims[-1].dim_value > 0 else None
