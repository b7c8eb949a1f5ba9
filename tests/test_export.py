"""Export to ONNX / OpenVINO bundles: parity with torch, subsets, dynamic batch, tampering."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import GOLDEN, require_shared

pytest.importorskip("torch", reason="the torch extra is needed: pip install 'ram-edge[torch]'")
pytest.importorskip("onnx", reason="the dev extra is needed: pip install 'ram-edge[dev]'")

from ram_edge import Tagger  # noqa: E402
from ram_edge.cli.main import cli  # noqa: E402
from ram_edge.errors import BundleError, RuntimeUnavailableError  # noqa: E402

FORMAT_RUNTIME = {"onnx": ("ort", "onnxruntime"), "openvino": ("openvino", "openvino")}
# Measured on the golden models (max |probability difference| vs torch, see README): onnx fp16
# 3.5e-3, openvino fp16 4.3e-3; the tolerance leaves a margin.
FP16_TOL = 2e-2


def _export(model_dir, out, *args):
    result = CliRunner().invoke(cli, ["export", str(model_dir), "-o", str(out), "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


class _LazyBundles(dict):
    """(golden name, format, precision) -> bundle directory, exported the first time a test asks for it."""

    def __init__(self, converted_golden, root):
        super().__init__()
        self._converted, self._root = converted_golden, root

    def __missing__(self, key):
        name, fmt, precision = key
        dest = self._root / f"{name}-{fmt}-{precision}"
        _export(self._converted[name], dest, "--format", fmt, "--precision", precision)
        self[key] = dest
        return dest


@pytest.fixture(scope="session")
def bundles(converted_golden, tmp_path_factory):
    """(golden name, format, precision) -> bundle directory, exported once per session, when first needed."""
    return _LazyBundles(converted_golden, tmp_path_factory.mktemp("bundles"))


def _golden_images(name):
    golden = require_shared("golden", name)
    files = json.loads((golden / "tags.json").read_text())["images"]
    return [golden / "images" / f for f in files]


@pytest.fixture(scope="session")
def torch_probs(converted_golden):
    tagger = {n: Tagger.load(converted_golden[n], runtime="torch") for n in GOLDEN}
    return {n: tagger[n].scores(_golden_images(n)) for n in GOLDEN}


@pytest.mark.slow
@pytest.mark.parametrize("name", GOLDEN)
@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_fp32_bundle_matches_torch(bundles, torch_probs, name, fmt):
    runtime, module = FORMAT_RUNTIME[fmt]
    pytest.importorskip(module)
    tagger = Tagger.load(bundles[name, fmt, "fp32"], runtime=runtime)
    probs = tagger.scores(_golden_images(name))  # one batch of 4: dynamic batch > 1
    assert np.abs(probs - torch_probs[name]).max() <= 1e-4
    thresholds = tagger.labels.thresholds
    np.testing.assert_array_equal(probs > thresholds, torch_probs[name] > thresholds)
    official = np.load(require_shared("golden", name) / "outputs.npz")
    np.testing.assert_array_equal((probs > thresholds).astype(np.uint8), official["tag_mask"])


@pytest.mark.slow
@pytest.mark.parametrize("name", GOLDEN)
@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_fp16_bundle_within_tolerance(bundles, torch_probs, name, fmt):
    runtime, module = FORMAT_RUNTIME[fmt]
    pytest.importorskip(module)
    tagger = Tagger.load(bundles[name, fmt, "fp16"], runtime=runtime)
    probs = tagger.scores(_golden_images(name))
    ref = torch_probs[name]
    assert np.abs(probs - ref).max() <= FP16_TOL
    thr = tagger.labels.thresholds
    differs = (probs > thr) != (ref > thr)
    # Tag sets may differ only where the torch score is within the tolerance of the threshold.
    assert np.all(np.abs(ref - thr)[differs] <= FP16_TOL)
    assert json.loads((bundles[name, fmt, "fp16"] / "manifest.json").read_text())["precision"] == "fp16"


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_openvino_cpu_computes_in_fp32_whatever_the_stored_precision(bundles, precision, monkeypatch):
    """The CPU plugin's own default is bf16 on CPUs with AVX512_BF16 or AMX; ram-edge pins fp32 for every bundle."""
    ov = pytest.importorskip("openvino")
    from ram_edge.runtimes.openvino_runtime import OpenVINORuntime

    configs = []

    class RecordingCore(ov.Core):
        def compile_model(self, model, device_name=None, config=None):
            configs.append((device_name, dict(config or {})))
            return super().compile_model(model, device_name, config)

    bundle = bundles["ram_tiny", "openvino", precision]  # exported (and validated) before the recording starts
    monkeypatch.setattr(ov, "Core", RecordingCore)
    runtime = OpenVINORuntime(bundle, device="CPU")
    runtime.run(np.zeros((1, 3, 224, 224), np.float32))
    # Asked for explicitly (on a Zen 3 or older Intel CPU the default would hide a missing pin)...
    assert configs == [("CPU", {"INFERENCE_PRECISION_HINT": "f32"})]
    # ...and what the compiled model reports.
    assert runtime._compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "f32"
    assert runtime.compute_precision == "fp32"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["precision"] == precision and manifest["compute_precision"] == "fp32"
    assert manifest["validation"]["compute_precision"] == "fp32" and manifest["validation"]["runtime"] == "OpenVINO CPU"


def test_bf16_compute_only_where_the_cpu_has_it(bundles, converted_golden):
    ov = pytest.importorskip("openvino")
    bundle = bundles["ram_tiny", "openvino", "fp16"]
    capabilities = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if "BF16" in capabilities:  # Zen 4, Sapphire Rapids: asked for, so granted
        tagger = Tagger.load(bundle, runtime="openvino", compute_precision="bf16")
        assert tagger.runtime.compute_precision == "bf16"
    else:  # Zen 3: a clear refusal, never a silent fp32
        with pytest.raises(RuntimeUnavailableError, match="cannot compute in bf16.*fp32"):
            Tagger.load(bundle, runtime="openvino", compute_precision="bf16")
    with pytest.raises(RuntimeUnavailableError, match="torch runtime computes in fp32 only"):
        Tagger.load(converted_golden["ram_tiny"], runtime="torch", compute_precision="bf16")
    with pytest.raises(RuntimeUnavailableError, match="unknown compute precision 'int4'"):
        Tagger.load(bundle, runtime="openvino", compute_precision="int4")


def test_bench_json_reports_stored_and_compute_precision(bundles):
    pytest.importorskip("openvino")
    bundle = bundles["ram_tiny", "openvino", "fp16"]
    result = CliRunner().invoke(cli, ["bench", str(bundle), "--runtime", "openvino", "--iters", "1", "--warmup", "0", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["precision"] == "fp16" and data["compute_precision"] == "fp32"
    result = CliRunner().invoke(cli, ["bench", str(bundles["ram_tiny", "onnx", "fp16"]), "--runtime", "ort", "--iters", "1",
                                      "--warmup", "0", "--compute-precision", "bf16"])
    assert result.exit_code == 2 and "onnxruntime computes a fp16 bundle in fp16, not bf16" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("name", GOLDEN)
def test_subset_bundle_keeps_the_same_probabilities(converted_golden, bundles, torch_probs, name, tmp_path):
    full = Tagger.load(bundles[name, "onnx", "fp32"], runtime="ort")
    keep = [full.tags[i] for i in (7, 3, 150, 42)]
    manifest = _export(converted_golden[name], tmp_path / "subset", "--tags", ",".join(keep))
    assert manifest["subset"]["of"] == len(full.tags)
    sub = Tagger.load(tmp_path / "subset", runtime="ort")
    assert sub.tags == [full.tags[i] for i in (3, 7, 42, 150)]  # label-file order
    images = _golden_images(name)
    np.testing.assert_allclose(sub.scores(images), full.scores(images)[:, [3, 7, 42, 150]], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(sub.labels.thresholds, full.labels.thresholds[[3, 7, 42, 150]])


def test_subset_with_unknown_tag_fails_cleanly(converted_golden, tmp_path):
    out = tmp_path / "bad"
    result = CliRunner().invoke(cli, ["export", str(converted_golden["ram_tiny"]), "-o", str(out), "--tags", "dog,catt"])
    assert result.exit_code == 2 and "catt" in result.stderr and "close matches" in result.stderr
    assert not out.exists() and not list(tmp_path.glob(".bad.*"))
    # An empty subset is refused, not taken as "every tag".
    (tmp_path / "none.txt").write_text("\n  \n")
    for args in (["--tags", " , "], ["--tags-file", str(tmp_path / "none.txt")]):
        result = CliRunner().invoke(cli, ["export", str(converted_golden["ram_tiny"]), "-o", str(out), *args])
        assert result.exit_code == 2 and "names no tag" in result.output and not out.exists()


def test_manifest_records_what_a_runtime_needs(bundles):
    manifest = json.loads((bundles["ram_plus_tiny", "onnx", "fp32"] / "manifest.json").read_text())
    assert manifest["format_version"] == 1 and manifest["family"] == "ram_plus"
    assert manifest["preprocess"]["image_size"] == 224
    assert manifest["io"]["inputs"][0]["shape"] == ["batch", 3, 224, 224]
    assert manifest["io"]["outputs"][0]["shape"] == ["batch", 200]
    assert set(manifest["sha256"]) == {"model.onnx"} and len(manifest["source"]["weights_sha256"]) == 64
    assert {"torch", "onnx", "onnxruntime", "ram_edge"} <= set(manifest["tools"])
    assert manifest["validation"]["max_abs_diff"] <= 1e-4


def _copy(bundle, tmp_path):
    dest = tmp_path / "copy"
    shutil.copytree(bundle, dest)
    return dest


def test_tampered_bundle_is_refused(bundles, tmp_path):
    bundle = _copy(bundles["ram_tiny", "onnx", "fp32"], tmp_path)
    data = bytearray((bundle / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bundle / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256 does not match"):
        Tagger.load(bundle, runtime="ort")


def test_missing_bundle_file_is_refused(bundles, tmp_path):
    bundle = _copy(bundles["ram_tiny", "openvino", "fp32"], tmp_path)
    (bundle / "model.bin").unlink()
    with pytest.raises(BundleError, match="model.bin.*missing"):
        Tagger.load(bundle, runtime="openvino")


def test_unknown_format_version_is_refused(bundles, tmp_path):
    bundle = _copy(bundles["ram_tiny", "onnx", "fp32"], tmp_path)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["format_version"] = 99
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(cli, ["tag", str(_golden_images("ram_tiny")[0]), "--model", str(bundle)])
    assert result.exit_code == 2 and "format version 99 is not supported" in result.stderr


def test_trt_bundle_without_tensorrt(bundles, tmp_path):
    """A TensorRT bundle where TensorRT is not installed: a clear refusal naming what to install."""
    pytest.importorskip("onnxruntime")
    from ram_edge.runtimes.tensorrt_runtime import TensorRTRuntime

    if TensorRTRuntime.is_installed():
        pytest.skip("TensorRT is installed here")
    bundle = _copy(bundles["ram_tiny", "onnx", "fp32"], tmp_path)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["model_format"] = "trt"
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    for runtime in ("auto", "trt"):
        with pytest.raises(RuntimeUnavailableError, match=r"runtime 'trt' is not installed.*ram-edge\[trt\].*JetPack"):
            Tagger.load(bundle, runtime=runtime)
    with pytest.raises(RuntimeUnavailableError, match=r"runtime 'ort' cannot run a 'trt' model"):
        Tagger.load(bundle, runtime="ort")


def test_ort_cannot_run_an_openvino_bundle(bundles):
    with pytest.raises(RuntimeUnavailableError, match="cannot run a 'openvino' model"):
        Tagger.load(bundles["ram_tiny", "openvino", "fp32"], runtime="ort")


def test_unavailable_devices_list_what_is_available(bundles):
    pytest.importorskip("openvino")
    with pytest.raises(RuntimeUnavailableError, match="available: .*CPU"):
        Tagger.load(bundles["ram_tiny", "onnx", "fp32"], runtime="openvino", device="NPU.7")
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(RuntimeUnavailableError, match="available devices: cpu"):
            Tagger.load(bundles["ram_tiny", "onnx", "fp32"], runtime="ort", device="cuda")


def test_export_mismatch_is_an_error_and_leaves_nothing(converted_golden, tmp_path, monkeypatch):
    from ram_edge.errors import ExportError
    from ram_edge.export import validate

    monkeypatch.setitem(validate.TOLERANCES, "fp32", 1e-12)
    from ram_edge.export.writer import export_bundle

    with pytest.raises(ExportError, match="exported output 'probs' differs from the torch model by up to"):
        export_bundle(converted_golden["ram_plus_tiny"], tmp_path / "b", fmt="onnx")
    assert list(tmp_path.iterdir()) == []


def test_ram_plus_bundles_hold_the_description_embeddings_once(bundles, converted_golden):
    import onnx
    from onnx import numpy_helper

    from ram_edge.checkpoint_dir import read_checkpoint_dir

    config = read_checkpoint_dir(converted_golden["ram_plus_tiny"]).config
    size = config.num_classes * config.des_per_class * config.label_embed_dim
    model = onnx.load(str(bundles["ram_plus_tiny", "onnx", "fp32"] / "model.onnx"))
    copies = [i.name for i in model.graph.initializer if numpy_helper.to_array(i).size == size]
    # Once: a transposed copy for the similarities used to be stored beside them (1766 MB against 1307 MB at full size).
    assert len(copies) == 1, copies
    assert (bundles["ram_plus_tiny", "onnx", "fp32"] / "model.onnx").stat().st_size < 1.5 * 4 * size + 4 * sum(
        numpy_helper.to_array(i).size for i in model.graph.initializer if i.name not in copies)


def test_the_export_pipeline_is_a_library_call(tmp_path):
    """What `ram-edge export` decides, a Python caller gets from ram_edge.export.export (and its refusals)."""
    from ram_edge.default_model import default_model_path
    from ram_edge.errors import ExportError
    from ram_edge.export import export

    manifest = export(default_model_path("checkpoint"), tmp_path / "subset", tags=["cat", "dog"])
    assert manifest["model_format"] == "onnx" and sorted(manifest["labels"]["tags"]) == ["cat", "dog"]
    for kwargs, needle in (({"format": "tflite"}, "unknown export format"), ({"vocab": "v.txt"}, "go together"),
                           ({"calib": "photos/"}, "--calib is for --precision int8"),
                           ({"precision": "int8", "calib": "photos/", "tags": ["cat"]}, "quantizes the whole model")):
        with pytest.raises(ExportError, match=needle):
            export(default_model_path("checkpoint"), tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()
