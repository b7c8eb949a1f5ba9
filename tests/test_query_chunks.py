"""The decoder in chunks of label queries (export/query_chunks.py): hand-built graphs and micro RAM / RAM++ exports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch", reason="the micro exports need torch: pip install 'ram-edge[export]'")

from click.testing import CliRunner  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from ram_edge.cli.main import cli  # noqa: E402
from ram_edge.export import query_chunks  # noqa: E402
from ram_edge.export.query_chunks import chunk_label_queries  # noqa: E402

TAGS, KEYS, DIM = 10, 5, 4


def _decoder_graph(extra_slice: bool = False) -> onnx.ModelProto:
    """A decoder of the shape RAM exports: constant label queries (1, N, D) cross-attend to image tokens, a
    Reshape whose constant shape names N, a per-query head, probabilities (batch, N)."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["queries", "xt"], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["weights"], axis=-1),
        helper.make_node("MatMul", ["weights", "x"], ["mixed"]),
        helper.make_node("Add", ["mixed", "queries"], ["h"]),
        helper.make_node("Reshape", ["h", "split_shape"], ["h4"]),
        helper.make_node("Transpose", ["h4"], ["h4t"], perm=[0, 1, 3, 2]),
        helper.make_node("Shape", ["h"], ["h_shape"]),
        helper.make_node("Reshape", ["h4t", "h_shape"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w"], ["logit"]),
        helper.make_node("Squeeze", ["logit", "last"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["probs"]),
    ]
    inits = [numpy_helper.from_array(rng.normal(size=(1, TAGS, DIM)).astype(np.float32), "queries"),
             numpy_helper.from_array(np.array([-1, TAGS, 2, 2], np.int64), "split_shape"),
             numpy_helper.from_array(rng.normal(size=(DIM, 1)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([2], np.int64), "last")]
    if extra_slice:  # a bound that names N: not provably a split along the query axis
        nodes[-1:] = [helper.make_node("Slice", ["logits", "zero", "n", "one"], ["cut"]), helper.make_node("Sigmoid", ["cut"], ["probs"])]
        inits += [numpy_helper.from_array(np.array([0], np.int64), "zero"), numpy_helper.from_array(np.array([TAGS], np.int64), "n"),
                  numpy_helper.from_array(np.array([1], np.int64), "one")]
    graph = helper.make_graph(nodes, "decoder", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", KEYS, DIM])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", TAGS])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_the_decoder_runs_in_chunks_of_queries_with_the_same_answers():
    model = _decoder_graph()
    x = np.random.default_rng(1).normal(size=(3, KEYS, DIM)).astype(np.float32)
    expected = _run(model, x)
    assert chunk_label_queries(model.graph, max_queries=3) == 4  # 10 queries: 2-3 per chunk
    onnx.checker.check_model(model)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    slices = [a for name, a in inits.items() if name.startswith("queries__")]
    assert sum(a.shape[1] for a in slices) == TAGS and "queries" not in inits  # split, not copied
    assert sorted(int(a[1]) for n, a in inits.items() if n.startswith("split_shape__")) == [2, 2, 3, 3]
    assert [n.op_type for n in model.graph.node].count("Softmax") == 4
    concat = [n for n in model.graph.node if n.op_type == "Concat"]
    assert len(concat) == 1 and concat[0].output[0] == "probs"
    np.testing.assert_array_equal(_run(model, x), expected)
    # Few enough queries: nothing to do.
    small = _decoder_graph()
    assert chunk_label_queries(small.graph, max_queries=TAGS) == 0


def test_a_graph_that_names_the_tag_count_elsewhere_is_left_as_it_was():
    model = _decoder_graph(extra_slice=True)
    before = model.SerializeToString()
    assert chunk_label_queries(model.graph, max_queries=3) == 0
    assert model.SerializeToString() == before


def _micro_checkpoint(make, family: str) -> Path:
    """A micro RAM of 40 tags with unit-norm label queries, as the text encoder writes them."""
    return make(family, tags=40, des_per_class=8, unit_queries=True)


@pytest.mark.parametrize("family", ["ram", "ram_plus"])
def test_exported_bundles_of_many_tags_are_chunked_and_answer_as_before(micro_checkpoint_factory, tmp_path, monkeypatch, family):
    from ram_edge import Tagger

    checkpoint = _micro_checkpoint(micro_checkpoint_factory, family)
    runner = CliRunner()
    whole = tmp_path / "whole"
    assert runner.invoke(cli, ["export", str(checkpoint), "-o", str(whole), "--format", "onnx"]).exit_code == 0
    monkeypatch.setattr(query_chunks, "QUERY_CHUNK", 16)  # 40 tags -> 3 chunks, as 4585 -> 5 at full size
    chunked = tmp_path / "chunked"
    result = runner.invoke(cli, ["export", str(checkpoint), "-o", str(chunked), "--format", "onnx", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["validation"]["max_abs_diff"] <= 1e-4  # validated against torch at export
    graph = onnx.load(str(chunked / "model.onnx")).graph
    assert [n.name for n in graph.node if n.op_type == "Concat" and n.output[0] == "probs"]
    names = [n.name for n in graph.node]
    assert any(n.endswith("__queries2") for n in names) and not any(n.endswith("__queries3") for n in names)
    batch = np.random.default_rng(2).random((2, 3, 32, 32), dtype=np.float32)
    np.testing.assert_allclose(Tagger.load(chunked, runtime="ort").predict(batch), Tagger.load(whole, runtime="ort").predict(batch),
                               atol=1e-6)


@pytest.mark.slow
def test_int8_ram_plus_bundle_of_many_tags_is_chunked_with_8_bit_descriptions(micro_checkpoint_factory, tmp_path, monkeypatch):
    from PIL import Image

    from ram_edge import Tagger

    checkpoint = _micro_checkpoint(micro_checkpoint_factory, "ram_plus")
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(3)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(photos / f"{i}.png")
    # 2 chunks of 20 tags: each chunk's 20 x 8 x 32 embeddings are large enough to store in 8 bit (FP16_CONSTANT_ELEMENTS).
    monkeypatch.setattr(query_chunks, "QUERY_CHUNK", 20)
    bundle = tmp_path / "int8"
    result = CliRunner().invoke(cli, ["export", str(checkpoint), "-o", str(bundle), "--precision", "int8", "--calib", str(photos),
                                      "--calib-size", "8", "--json"])
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)
    assert manifest["validation"]["max_abs_diff"] <= manifest["validation"]["tolerance"]  # against the quantized torch graph
    graph = onnx.load(str(bundle / "model.onnx")).graph
    assert [n for n in graph.node if n.op_type == "Concat" and n.output[0] == "probs"]
    # The description embeddings (40 x 8 x 32) split over the chunks, each 8-bit, none kept in float.
    parts = [numpy_helper.to_array(i) for i in graph.initializer if i.dims[1:] == [8, 32]]
    assert len(parts) == 2 and sum(p.shape[0] for p in parts) == 40 and {p.dtype for p in parts} == {np.dtype(np.int8)}
    assert Tagger.load(bundle, runtime="ort").predict(np.zeros((2, 3, 32, 32), np.float32)).shape == (2, 40)


def test_a_per_tag_constant_the_rewrite_cannot_slice_leaves_the_graph_whole():
    model = _decoder_graph()
    graph = model.graph
    # A per-tag bias (batch-broadcast, rank 2) on the logits: read inside the subgraph, not a query tensor.
    bias = numpy_helper.from_array(np.zeros((1, TAGS), np.float32), "tag_bias")
    graph.initializer.append(bias)
    sigmoid = next(n for n in graph.node if n.op_type == "Sigmoid")
    add = helper.make_node("Add", ["logits", "tag_bias"], ["biased"])
    sigmoid.input[0] = "biased"
    nodes = list(graph.node)
    nodes.insert(nodes.index(sigmoid), add)
    del graph.node[:]
    graph.node.extend(nodes)
    before = model.SerializeToString()
    assert chunk_label_queries(graph, max_queries=3) == 0
    assert model.SerializeToString() == before
