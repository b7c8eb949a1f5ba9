"""An image's probabilities do not depend on how many images share the call (project issue 32, item 5).

OpenVINO's CPU plugin (2026.4 here) averages the pooled token of an INT8 graph on its 8-bit values when the
DequantizeLinear sits above the Transpose before the GlobalAveragePool, and that kernel returns 0 for every image
after the first of a batch: the shipped bundle moved by 0.01-0.03 at batch 8 until its graph was rewritten
(benchmarks/results/openvino_int8_batch/openvino_int8_batch.md). Exports now move that DequantizeLinear down to the average, and the runtime
catches the kernel in older bundles.
"""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest

from ram_edge import Tagger
from ram_edge.default_model import PACKAGE_DIR, default_model_path, example_images
from ram_edge.errors import RamEdgeWarning

pytestmark = pytest.mark.skipif(
    not (PACKAGE_DIR / "bundle" / "manifest.json").is_file(),
    reason="the default model is not installed; build it with recipes/default_model/build.py")

TOLERANCE = 1e-4
RUNTIMES = ("openvino", "ort")
_PACKAGES = {"openvino": "openvino", "ort": "onnxruntime"}


def _load(kind: str, runtime: str) -> Tagger:
    pytest.importorskip(_PACKAGES[runtime])
    return Tagger.load(default_model_path(kind), runtime=runtime)


def _images(tagger: Tagger) -> np.ndarray:
    """The six shipped example scenes and ten image-like random tensors: 16 preprocessed images."""
    scenes = tagger.load_images(sorted(example_images()))
    noise = np.random.default_rng(32).standard_normal((10, *scenes.shape[1:]), dtype=np.float32)
    return np.concatenate([scenes, noise])


def _alone(tagger: Tagger, batch: np.ndarray) -> np.ndarray:
    return np.concatenate([tagger.predict(batch[i:i + 1]) for i in range(len(batch))])


def _worst(a: np.ndarray, b: np.ndarray) -> str:
    per_image = np.abs(a - b).max(axis=1)
    return f"{int((per_image > TOLERANCE).sum())} of {len(per_image)} images moved, up to {per_image.max():.3g}"


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("kind", ["bundle", "bundle_fp32"])
def test_an_image_in_a_batch_of_8_gets_its_answers_alone(kind, runtime):
    tagger = _load(kind, runtime)
    batch = _images(tagger)
    eights = np.concatenate([tagger.predict(batch[i:i + 8]) for i in range(0, len(batch), 8)])
    alone = _alone(tagger, batch)
    assert np.abs(eights - alone).max() <= TOLERANCE, f"{kind}/{runtime}, batch 8 against 1: {_worst(eights, alone)}"
    together = tagger.predict(batch)
    assert np.abs(together - alone).max() <= TOLERANCE, f"{kind}/{runtime}, 16 in one call: {_worst(together, alone)}"


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_one_scores_call_on_the_examples_tags_as_one_call_each(runtime):
    tagger = _load("bundle", runtime)
    paths = sorted(example_images())
    together = tagger.scores(paths)
    alone = np.concatenate([tagger.scores([path]) for path in paths])
    assert np.abs(together - alone).max() <= TOLERANCE, f"{runtime}: {_worst(together, alone)}"
    assert [r.tags for r in tagger.decode(together)] == [r.tags for r in tagger.decode(alone)]


def test_the_shipped_int8_bundle_runs_whole_batches_on_openvino():
    """The rewritten graph needs no one-image-at-a-time fallback: batch 8 keeps its speed."""
    tagger = _load("bundle", "openvino")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RamEdgeWarning)
        tagger.predict(_images(tagger)[:2])
    assert tagger.runtime.one_image_per_inference is False


def test_int8_bundles_report_int8_compute_on_openvino_as_on_onnxruntime(monkeypatch):
    from ram_edge.runtimes import openvino_runtime

    assert _load("bundle", "ort").runtime.compute_precision == "int8"
    runtime = _load("bundle", "openvino").runtime
    if runtime.int8_kernels:
        assert runtime.compute_precision == "int8"
    assert runtime.inference_precision == "fp32"  # ram-edge's choice on a CPU, not the plugin's bf16
    monkeypatch.setenv(openvino_runtime.INT8_KERNELS_ENV, "off")
    off = _load("bundle", "openvino").runtime
    assert off.int8_kernels is False and off.compute_precision == "fp32" and off.inference_precision == "fp32"
    assert _load("bundle_fp32", "openvino").runtime.compute_precision == "fp32"


def _old_pooling_bundle(tmp_path):
    """The shipped INT8 bundle with the pooled token's DequantizeLinear above its Transpose, as it was exported
    before the rewrite (DQ -> Transpose -> GlobalAveragePool)."""
    onnx = pytest.importorskip("onnx")
    from ram_edge.bundle import write_manifest

    source = default_model_path("bundle")
    bundle = tmp_path / "old-int8"
    shutil.copytree(source, bundle)
    model = onnx.load(str(bundle / "model.onnx"))
    producers = {out: node for node in model.graph.node for out in node.output}
    pool = next(n for n in model.graph.node if n.op_type == "GlobalAveragePool")
    dequantize = producers[pool.input[0]]
    transpose = producers[dequantize.input[0]]
    assert (dequantize.op_type, transpose.op_type) == ("DequantizeLinear", "Transpose")
    # Transpose(DQ(x)) again: DQ reads the Transpose's input, the Transpose DQ's output, GAP the Transpose's.
    quantized, pooled_input = transpose.input[0], pool.input[0]
    dequantize.input[0], dequantize.output[0] = quantized, f"{quantized}__dequantized"
    transpose.input[0], transpose.output[0] = dequantize.output[0], pooled_input
    nodes = list(model.graph.node)
    nodes.remove(dequantize)
    nodes.insert(nodes.index(transpose), dequantize)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(bundle / "model.onnx"))
    write_manifest(bundle, json.loads((bundle / "manifest.json").read_text(encoding="utf-8")))
    return bundle


def test_a_bundle_with_the_old_pooling_graph_is_batch_invariant_too(tmp_path):
    """Where OpenVINO's int8 average is wrong past the first image, the runtime sees it at load and runs one image
    per inference, with a warning that says to re-export; elsewhere it runs whole batches."""
    pytest.importorskip("openvino")
    bundle = _old_pooling_bundle(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tagger = Tagger.load(bundle, runtime="openvino")
        batch = _images(tagger)
        eights = np.concatenate([tagger.predict(batch[i:i + 8]) for i in range(0, len(batch), 8)])
    alone = _alone(tagger, batch)
    assert np.abs(eights - alone).max() <= TOLERANCE, _worst(eights, alone)
    messages = [str(w.message) for w in caught if issubclass(w.category, RamEdgeWarning)]
    if tagger.runtime.one_image_per_inference:
        assert len(messages) == 1 and "one at a time" in messages[0] and "ram-edge export" in messages[0], messages
    else:
        assert not messages
    # The same graph on onnxruntime, and its rewrite back: identical answers (the move changes no value).
    ort_old = Tagger.load(bundle, runtime="ort").predict(batch)
    assert np.array_equal(ort_old, _load("bundle", "ort").predict(batch))


def test_the_rewrite_of_the_pooled_dequantize_gives_the_shipped_graph(tmp_path):
    onnx = pytest.importorskip("onnx")
    from ram_edge.export.int8_activations import dequantize_at_reductions

    old = onnx.load(str(_old_pooling_bundle(tmp_path) / "model.onnx"))
    assert dequantize_at_reductions(old.graph) == 1
    assert dequantize_at_reductions(old.graph) == 0
    shipped = onnx.load(str(default_model_path("bundle") / "model.onnx"))
    assert old.SerializeToString() == shipped.SerializeToString()


def _shared_pooling_graph():
    """The encoder's end without SmoothQuant: one quantized LayerNorm output read by the pooling (through a Transpose)
    and by the token concatenation."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"]),
             helper.make_node("Transpose", ["d"], ["t"], perm=[0, 2, 1]),
             helper.make_node("GlobalAveragePool", ["t"], ["p"]),
             helper.make_node("Transpose", ["p"], ["pooled"], perm=[0, 2, 1]),
             helper.make_node("Concat", ["pooled", "d"], ["y"], axis=1)]
    graph = helper.make_graph(nodes, "pooling",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 100, 128])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 101, 128])],
                              [numpy_helper.from_array(np.array(0.02, np.float32), "s"),
                               numpy_helper.from_array(np.array(128, np.uint8), "z")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_shared_dequantize_gets_its_own_copy_for_the_average():
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from ram_edge.export.int8_activations import dequantize_at_reductions

    model = _shared_pooling_graph()
    x = np.random.default_rng(0).standard_normal((8, 100, 128), dtype=np.float32) + 0.5
    before = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert dequantize_at_reductions(model.graph) == 1
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("DequantizeLinear") == 2 and ops.index("Transpose") < ops.index("GlobalAveragePool") - 1
    after = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.array_equal(before, after)
    ov = pytest.importorskip("openvino")
    core = ov.Core()
    compiled = core.compile_model(core.read_model(model.SerializeToString(), b""), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "f32"})
    pooled = compiled.create_infer_request().infer({0: x})[0][:, 0]
    expected = ((np.clip(np.rint(x / 0.02) + 128, 0, 255) - 128) * 0.02).mean(axis=1)
    assert np.abs(pooled - expected).max() <= 1e-5  # every image of the batch, not only the first
