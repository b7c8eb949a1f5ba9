"""The activation-side INT8 rewrites (export/int8_activations.py) on hand-built graphs of the shapes NNCF exports."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from ram_edge.export.int8_activations import fold_float_scales, sink_dequantize  # noqa: E402

F = TensorProto.FLOAT
HEADS, TOKENS, DIM = 2, 16, 8


def _init(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def _attention_scores_graph() -> onnx.ModelProto:
    """Swin's attention scores as NNCF's INT8 export writes them: the whole qkv tensor quantized for the keys
    (DQ -> Gather -> Transpose -> MatMul), the queries scaled by 1/sqrt(d) in float before their quantization."""
    nodes = [
        helper.make_node("Reshape", ["qkv", "shape"], ["r"]),
        helper.make_node("Transpose", ["r"], ["t"], perm=[2, 0, 3, 1, 4]),  # (3, B, heads, tokens, dim)
        helper.make_node("Gather", ["t", "i0"], ["q"], axis=0),
        helper.make_node("Mul", ["q", "scale"], ["qs"]),
        helper.make_node("QuantizeLinear", ["qs", "sq", "zp"], ["qq"]),
        helper.make_node("DequantizeLinear", ["qq", "sq", "zp"], ["qd"]),
        helper.make_node("QuantizeLinear", ["t", "sk", "zp"], ["tq"]),
        helper.make_node("DequantizeLinear", ["tq", "sk", "zp"], ["td"]),
        helper.make_node("Gather", ["td", "i1"], ["k"], axis=0),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["qd", "kt"], ["scores"]),
    ]
    inits = [_init("shape", np.array([-1, TOKENS, 3, HEADS, DIM], np.int64)), _init("i0", np.array(0, np.int64)),
             _init("i1", np.array(1, np.int64)), _init("scale", np.array(DIM ** -0.5, np.float32)),
             _init("sq", np.array(0.01, np.float32)), _init("sk", np.array(0.02, np.float32)), _init("zp", np.array(128, np.uint8))]
    graph = helper.make_graph(nodes, "scores", [helper.make_tensor_value_info("qkv", F, ["B", TOKENS, 3 * HEADS * DIM])],
                              [helper.make_tensor_value_info("scores", F, ["B", HEADS, TOKENS, TOKENS])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, feeds: dict, optimized: str | None = None) -> np.ndarray:
    options = ort.SessionOptions()
    if optimized:
        options.optimized_model_filepath = optimized
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def _ops(path: str) -> list[str]:
    return [n.op_type for n in onnx.load(path).graph.node]


def test_keys_dequantized_next_to_the_scores_matmul_run_in_int8_with_the_same_result(tmp_path):
    model = _attention_scores_graph()
    qkv = np.random.default_rng(0).normal(size=(2, TOKENS, 3 * HEADS * DIM)).astype(np.float32)
    before = _run(model, {"qkv": qkv}, str(tmp_path / "before.onnx"))
    assert "MatMulIntegerToFloat" not in _ops(str(tmp_path / "before.onnx"))  # dequantized, multiplied in float

    assert sink_dequantize(model.graph) == 3  # DQ below Gather and Transpose; the keys' Q below its Gather
    assert fold_float_scales(model.graph) == 1  # the 1/sqrt(d) into the queries' quantization scale
    onnx.checker.check_model(model)
    ops = [n.op_type for n in model.graph.node]
    assert "Mul" not in ops
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    matmul = next(n for n in model.graph.node if n.op_type == "MatMul")
    assert [producers[name] for name in matmul.input] == ["DequantizeLinear", "DequantizeLinear"]
    # Only the keys are quantized now (a third of qkv), not the whole tensor.
    quantize_k = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and "sk" in n.input)
    assert producers[quantize_k.input[0]] == "Gather"

    after = _run(model, {"qkv": qkv}, str(tmp_path / "after.onnx"))
    optimized = _ops(str(tmp_path / "after.onnx"))
    assert "MatMulIntegerToFloat" in optimized and "MatMul" not in optimized
    # Exact arithmetic: the same quantization grid; only the float rounding of the scaled queries may differ.
    assert np.abs(after - before).max() <= 0.01 * 0.02 * DIM * 2 + 1e-5


def _smoothed_linear_graph(gelu_tail: bool = False) -> onnx.ModelProto:
    """LayerNorm -> SmoothQuant's per-channel Mul -> Q/DQ -> MatMul with an int8 weight (or the erf GELU's last
    Mul(.., 0.5) straight before a quantization, which must stay as onnxruntime fuses it)."""
    rng = np.random.default_rng(1)
    weight = rng.integers(-127, 128, size=(DIM, 4)).astype(np.int8)
    nodes = [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["n"], axis=-1)]
    if gelu_tail:
        nodes += [helper.make_node("Mul", ["n", "n"], ["sq"]), helper.make_node("Mul", ["sq", "half"], ["m"])]
    else:
        nodes += [helper.make_node("Mul", ["n", "smooth"], ["m"])]
    nodes += [
        helper.make_node("QuantizeLinear", ["m", "sa", "zp"], ["mq"]),
        helper.make_node("DequantizeLinear", ["mq", "sa", "zp"], ["md"]),
        helper.make_node("DequantizeLinear", ["w", "sw"], ["wd"], axis=1),
        helper.make_node("MatMul", ["md", "wd"], ["y"]),
    ]
    inits = [_init("gamma", rng.uniform(0.5, 1.5, DIM).astype(np.float32)), _init("beta", rng.normal(size=DIM).astype(np.float32)),
             _init("smooth", rng.uniform(0.2, 3.0, (1, 1, DIM)).astype(np.float32)), _init("half", np.array(0.5, np.float32)),
             _init("sa", np.array(0.03, np.float32)), _init("zp", np.array(128, np.uint8)), _init("w", weight),
             _init("sw", rng.uniform(0.001, 0.01, 4).astype(np.float32))]
    graph = helper.make_graph(nodes, "smoothed", [helper.make_tensor_value_info("x", F, ["B", TOKENS, DIM])],
                              [helper.make_tensor_value_info("y", F, ["B", TOKENS, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_smoothing_factors_after_a_layernorm_fold_into_its_gamma_and_beta():
    model = _smoothed_linear_graph()
    x = np.random.default_rng(2).normal(size=(3, TOKENS, DIM)).astype(np.float32)
    before = _run(model, {"x": x})
    assert fold_float_scales(model.graph) == 1
    onnx.checker.check_model(model)
    assert "Mul" not in [n.op_type for n in model.graph.node]
    names = {i.name for i in model.graph.initializer}
    assert "smooth" not in names and "gamma" not in names  # the folded constants are not carried along
    after = _run(model, {"x": x})
    # Same values up to float rounding; a rounding tie may move one activation by one step (0.03 x |w| x scale).
    assert np.abs(after - before).max() <= 0.03 * 127 * 0.01 + 1e-5
    assert np.mean(np.isclose(after, before, atol=1e-5)) > 0.9


def test_the_gelu_tail_before_a_quantization_is_left_for_onnxruntime_to_fuse():
    model = _smoothed_linear_graph(gelu_tail=True)
    assert fold_float_scales(model.graph) == 0
    assert [n.op_type for n in model.graph.node].count("Mul") == 2
    assert sink_dequantize(model.graph) == 0  # nothing moves: the DequantizeLinear already feeds the MatMul
