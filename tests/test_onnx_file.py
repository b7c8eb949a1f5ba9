"""Large ONNX bundles keep their weights in one external data file (export/onnx_file.py): saving, the bundle's
manifest and sha256 checks, onnxruntime loading it with the same answers, and the TensorRT builder copying it.
The shipped default model is below the size limit, so these tests lower the limit to make it external."""

from __future__ import annotations

import json
import shutil
import stat

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("torch", reason="the torch extra is needed: pip install 'ram-edge[torch]'")
onnx = pytest.importorskip("onnx", reason="the dev extra is needed: pip install 'ram-edge[dev]'")
pytest.importorskip("onnxruntime", reason="the ort extra is needed: pip install 'ram-edge[ort]'")

import trt_double  # noqa: E402
from ram_edge import Tagger  # noqa: E402
from ram_edge.bundle import read_bundle  # noqa: E402
from ram_edge.cli.main import cli  # noqa: E402
from ram_edge.default_model import default_model_path  # noqa: E402
from ram_edge.errors import BundleError  # noqa: E402
from ram_edge.export import onnx_file  # noqa: E402

EXAMPLES = default_model_path("bundle").parent / "examples"


def _matmul_model(rows: int = 64, cols: int = 48):
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(0).standard_normal((rows, cols)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, rows])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cols])],
        [numpy_helper.from_array(weight, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), weight


def _run_model(path, rows: int = 64) -> np.ndarray:
    import onnxruntime as ort

    x = np.arange(rows, dtype=np.float32)[None] / rows
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_save_onnx_writes_one_file_below_the_limit_and_a_data_file_above(tmp_path):
    model, weight = _matmul_model()
    small = tmp_path / "small" / "model.onnx"
    small.parent.mkdir()
    assert onnx_file.initializer_bytes(model) == weight.nbytes
    assert onnx_file.save_onnx(model, small, min_bytes=weight.nbytes + 1) == ["model.onnx"]
    assert sorted(p.name for p in small.parent.iterdir()) == ["model.onnx"]

    big = tmp_path / "big" / "model.onnx"
    big.parent.mkdir()
    assert onnx_file.save_onnx(_matmul_model()[0], big, min_bytes=0) == ["model.onnx", "model.onnx.data"]
    data = onnx_file.data_file(big)
    assert data.stat().st_size == weight.nbytes and big.stat().st_size < weight.nbytes
    assert stat.S_IMODE(data.stat().st_mode) == stat.S_IMODE(big.stat().st_mode)  # not onnx's private 0600
    assert onnx_file.onnx_files(big) == {"model": "model.onnx", "weights": "model.onnx.data"}
    assert onnx_file.onnx_files(small) == {"model": "model.onnx"}
    np.testing.assert_array_equal(_run_model(big), _run_model(small))
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(onnx.load(str(big)).graph.initializer[0]), weight)

    # Saving again over it replaces the data file (onnx itself would append to it and shift every offset).
    assert onnx_file.save_onnx(_matmul_model()[0], big, min_bytes=0) == ["model.onnx", "model.onnx.data"]
    assert data.stat().st_size == weight.nbytes
    np.testing.assert_array_equal(_run_model(big), _run_model(small))
    # Below the limit again: the stale data file goes with it.
    assert onnx_file.save_onnx(_matmul_model()[0], big, min_bytes=10**9) == ["model.onnx"] and not data.exists()


@pytest.fixture(scope="module")
def external_bundle(tmp_path_factory):
    """The default model's checkpoint exported to fp32 ONNX twice: weights inside the graph, and in a data file."""
    root = tmp_path_factory.mktemp("external")
    checkpoint = default_model_path("checkpoint")
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        for name, limit in (("inline", 10**12), ("external", 0)):
            mp.setattr(onnx_file, "EXTERNAL_DATA_MIN_BYTES", limit)
            result = CliRunner().invoke(cli, ["export", str(checkpoint), "-o", str(root / name), "--json"])
            assert result.exit_code == 0, result.output
            out[name] = root / name
    return out


def test_bundle_lists_and_checks_its_weights_file(external_bundle, tmp_path):
    inline, external = read_bundle(external_bundle["inline"]), read_bundle(external_bundle["external"])
    assert inline.files == {"model": "model.onnx"}
    assert external.files == {"model": "model.onnx", "weights": "model.onnx.data"}
    manifest = json.loads((external.path / "manifest.json").read_text())
    assert set(manifest["sha256"]) == {"model.onnx", "model.onnx.data"}
    assert (external.path / "model.onnx").stat().st_size < 0.1 * (inline.path / "model.onnx").stat().st_size

    images = sorted(EXAMPLES.glob("*.png"))
    with Tagger.load(inline.path, runtime="ort") as a, Tagger.load(external.path, runtime="ort") as b:
        np.testing.assert_array_equal(a.scores(images), b.scores(images))

    copy = tmp_path / "copy"
    shutil.copytree(external.path, copy)
    data = bytearray((copy / "model.onnx.data").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "model.onnx.data").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="model.onnx.data: sha256 does not match"):
        Tagger.load(copy, runtime="ort")
    (copy / "model.onnx.data").unlink()
    with pytest.raises(BundleError, match="model.onnx.data.*missing"):
        Tagger.load(copy, runtime="ort")


def test_tensorrt_bundle_carries_the_weights_file(external_bundle, tmp_path, tmp_path_factory):
    from ram_edge.export.tensorrt_format import TrtBuildOptions, build_trt_bundle

    out = tmp_path / "trt"
    with pytest.MonkeyPatch.context() as mp:  # TensorRT and CUDA: the test double of tests/trt_double.py
        trt_double.install(mp, tmp_path_factory.mktemp("cache"))
        manifest = build_trt_bundle(external_bundle["external"], out, TrtBuildOptions(precision="fp16", max_batch=2, opt_batch=1),
                                    progress=False)
    assert manifest["files"] == {"model": "model.engine", "onnx": "model.onnx", "layers": "engine_layers.json",
                                 "onnx_weights": "model.onnx.data"}
    assert (out / "model.onnx.data").read_bytes() == (external_bundle["external"] / "model.onnx.data").read_bytes()
    assert manifest["validation"]["max_abs_diff"] <= manifest["validation"]["tolerance"]
    read_bundle(out)  # every listed file present and matching its sha256
