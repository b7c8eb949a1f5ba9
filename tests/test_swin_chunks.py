"""Swin's first stages in chunks (export/swin_chunks.py): micro RAM exports, fp32 and INT8, against the same graphs whole."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch", reason="the micro exports need torch: pip install 'ram-edge[export]'")

from click.testing import CliRunner  # noqa: E402

from ram_edge.cli.main import cli  # noqa: E402
from ram_edge.export import swin_chunks  # noqa: E402
from ram_edge.export.swin_chunks import chunk_swin_stages  # noqa: E402

# Micro Swin at 32 px: stage 1 has 8 x 8 tokens in 4 windows of 4 x 4 (its second block shifted, with a mask),
# stage 2 4 x 4 tokens in one window. At this many bytes per chunk the stage-1 feed-forward (64 tokens x 64 x 4 B)
# is cut into 6, its attention (4 windows x 16^2 x 4 B) into 2, the stage-2 feed-forward into 3.
CHUNK_BYTES = 3000


def _micro_checkpoint(make, image_size: int = 32) -> Path:
    """A micro RAM of 12 tags, two blocks a stage (the second shifted), a one-layer decoder, unit-norm label queries."""
    return make(image_size=image_size, tags=12, depths=(2, 2), decoder_layers=1, unit_queries=True)


def _export(checkpoint: Path, out: Path, *args: str) -> dict:
    result = CliRunner().invoke(cli, ["export", str(checkpoint), "-o", str(out), "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _probs(bundle: Path, batch: np.ndarray) -> np.ndarray:
    from ram_edge import Tagger

    return Tagger.load(bundle, runtime="ort").predict(batch)


def _names(bundle: Path) -> list[str]:
    return [n.name for n in onnx.load(str(bundle / "model.onnx")).graph.node]


def test_fp32_bundle_runs_its_first_stages_in_chunks_with_the_same_answers(micro_checkpoint_factory, tmp_path, monkeypatch):
    checkpoint = _micro_checkpoint(micro_checkpoint_factory)
    whole = tmp_path / "whole"
    _export(checkpoint, whole)
    assert not any("__tokens" in n or "__windows" in n for n in _names(whole))  # a micro model is under the default size
    monkeypatch.setattr(swin_chunks, "CHUNK_BYTES", CHUNK_BYTES)
    chunked = tmp_path / "chunked"
    manifest = _export(checkpoint, chunked)
    assert manifest["validation"]["max_abs_diff"] <= 1e-4  # validated against torch at export, batch 1 and 3
    names = _names(chunked)
    assert any(n.startswith("/visual_encoder/layers.0/blocks.1/attn/__windows1") for n in names)  # the shifted block
    assert not any("__windows2" in n for n in names)  # 4 windows into 2 chunks
    assert any("__tokens5" in n for n in names) and not any("__tokens6" in n for n in names)
    assert not any(n.startswith("/visual_encoder/layers.1/") and "__windows" in n for n in names)  # one window: whole
    graph = onnx.load(str(chunked / "model.onnx")).graph
    masks = [i for i in graph.initializer if i.name.endswith("__mask")]
    assert masks and all(list(m.dims)[:2] == [1, 2] for m in masks)  # each chunk reads its 2 windows' rows of the mask
    # and the whole mask (1, 4 windows, 1, 16, 16) is gone: the file holds its rows once
    def five_d(g) -> list:
        tensors = [n.attribute[0].t for n in g.node if n.op_type == "Constant"] + list(g.initializer)
        return [list(t.dims) for t in tensors if len(t.dims) == 5]

    assert five_d(onnx.load(str(whole / "model.onnx")).graph) == [[1, 4, 1, 16, 16]]
    assert sorted(five_d(graph)) == [[1, 2, 1, 16, 16]] * 2
    batch = np.random.default_rng(1).random((3, 3, 32, 32), dtype=np.float32)
    np.testing.assert_allclose(_probs(chunked, batch), _probs(whole, batch), atol=1e-6)


def test_a_part_read_from_outside_or_varying_along_its_tokens_is_left_whole(micro_checkpoint_factory, tmp_path):
    from onnx import helper, numpy_helper

    checkpoint = _micro_checkpoint(micro_checkpoint_factory)
    whole = tmp_path / "whole"
    _export(checkpoint, whole)
    model = onnx.load(str(whole / "model.onnx"))
    graph = model.graph
    # Block 0: fc1's output is also a graph output, so the feed-forward cannot be copied alone.
    fc1 = next(n for n in graph.node if n.name == "/visual_encoder/layers.0/blocks.0/mlp/fc1/Add")
    graph.output.append(helper.make_tensor_value_info(fc1.output[0], onnx.TensorProto.FLOAT, None))
    # Block 1: a per-token constant (1, 64 tokens, 64) added after fc1: not the same for every chunk of tokens.
    fc1 = next(n for n in graph.node if n.name == "/visual_encoder/layers.0/blocks.1/mlp/fc1/Add")
    graph.initializer.append(numpy_helper.from_array(np.zeros((1, 64, 64), np.float32), "per_token"))
    for node in graph.node:
        for slot, name in enumerate(node.input):
            if name == fc1.output[0]:
                node.input[slot] = "per_token_out"
    nodes = list(graph.node)
    nodes.insert(nodes.index(fc1) + 1, helper.make_node("Add", [fc1.output[0], "per_token"], ["per_token_out"],
                                                        name="/visual_encoder/layers.0/blocks.1/mlp/per_token"))
    del graph.node[:]
    graph.node.extend(nodes)
    assert chunk_swin_stages(model, CHUNK_BYTES) == 4  # stage 1: both attentions, stage 2: both feed-forwards; not these two
    names = [n.name for n in graph.node]
    assert not any(n.startswith("/visual_encoder/layers.0/blocks.0/mlp/__tokens") for n in names)
    assert not any(n.startswith("/visual_encoder/layers.0/blocks.1/mlp/__tokens") for n in names)
    assert any(n.startswith("/visual_encoder/layers.0/blocks.0/attn/__windows") for n in names)


@pytest.mark.slow
def test_int8_bundle_in_chunks_keeps_every_product_in_onnxruntime_int8_kernels(micro_checkpoint_factory, tmp_path, monkeypatch):
    from PIL import Image

    checkpoint = _micro_checkpoint(micro_checkpoint_factory)
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(3)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(photos / f"{i}.png")
    whole = tmp_path / "int8"
    _export(checkpoint, whole, "--precision", "int8", "--calib", str(photos), "--calib-size", "8")
    model = onnx.load(str(whole / "model.onnx"))
    monkeypatch.setattr(swin_chunks, "CHUNK_BYTES", CHUNK_BYTES)
    assert chunk_swin_stages(model) == 6  # stage 1: 2 feed-forwards + 2 attentions; stage 2 (one window): 2 feed-forwards
    chunked = tmp_path / "int8_chunked.onnx"
    onnx.save(model, str(chunked))

    def optimized(path: Path) -> tuple[list, np.ndarray]:
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(path.with_suffix(".opt.onnx"))
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        batch = np.random.default_rng(4).random((3, 3, 32, 32), dtype=np.float32)
        probs = session.run(None, {session.get_inputs()[0].name: batch})[0]
        return list(onnx.load(options.optimized_model_filepath).graph.node), probs

    nodes_whole, probs_whole = optimized(whole / "model.onnx")
    nodes_chunked, probs_chunked = optimized(chunked)
    np.testing.assert_allclose(probs_chunked, probs_whole, atol=1e-6)
    # Every copy of a quantized product is fused like the original (onnxruntime's MatMulIntegerToFloat): no extra
    # DequantizeLinear, and the float MatMuls are copies of float MatMuls of the whole graph (attention x values).
    count = lambda nodes, op: sum(n.op_type == op for n in nodes)  # noqa: E731
    assert count(nodes_chunked, "DequantizeLinear") == count(nodes_whole, "DequantizeLinear")
    assert count(nodes_chunked, "MatMulIntegerToFloat") > count(nodes_whole, "MatMulIntegerToFloat")
    float_whole = {n.name for n in nodes_whole if n.op_type == "MatMul"}
    assert {re.sub(r"__+(windows|tokens)\d+$", "", n.name) for n in nodes_chunked if n.op_type == "MatMul"} <= float_whole
