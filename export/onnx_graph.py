"""Small helpers shared by the ONNX graph rewrites (INT8 folding, activation rewrites, query chunks): no torch."""

from __future__ import annotations


def consumers(graph) -> dict[str, list]:
    """Each tensor name of an ONNX graph -> the nodes that read it, in graph order."""
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    return readers


def constant_tensors(graph, identities: bool = True) -> dict:
    """Tensor name -> TensorProto for the initializers and Constant nodes (and, with `identities`, the Identity
    chains of them: the exporter writes a shared constant, a zero point or a LayerNorm weight, through Identity)."""
    tensors = {init.name: init for init in graph.initializer}
    for node in graph.node:  # topological order: an Identity of a constant is a constant too
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            tensors[node.output[0]] = node.attribute[0].t
        elif identities and node.op_type == "Identity" and node.input[0] in tensors:
            tensors[node.output[0]] = tensors[node.input[0]]
    return tensors


def initializer_aliases(graph) -> dict[str, str]:
    """Each output of an Identity (chain) of an initializer -> that initializer's name (the exporter writes a second use
    of a constant, or of an equal one it deduplicated, as an Identity of it)."""
    initializers = {init.name for init in graph.initializer}
    outputs = {o.name for o in graph.output}
    alias: dict[str, str] = {}
    for node in graph.node:  # topological order: an Identity of an Identity resolves too
        if node.op_type == "Identity" and node.output[0] not in outputs:
            source = alias.get(node.input[0], node.input[0])
            if source in initializers:
                alias[node.output[0]] = source
    return alias


def remove_nodes(graph, dropped: set[int]) -> None:
    """Remove the nodes whose id() is in `dropped`, then the Constant / Identity nodes and initializers nothing reads."""
    outputs = {o.name for o in graph.output}
    keep = [n for n in graph.node if id(n) not in dropped]
    used = {name for n in keep for name in n.input} | outputs
    keep = [n for n in keep if n.op_type not in ("Constant", "Identity") or n.output[0] in used]
    del graph.node[:]
    graph.node.extend(keep)
    used = {name for n in keep for name in n.input} | outputs
    for init in [init for init in graph.initializer if init.name not in used]:
        graph.initializer.remove(init)
