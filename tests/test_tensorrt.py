"""TensorRT: engine builder, `trt` runtime, `export --format trt`, refusal of foreign engines, missing packages.

TensorRT and CUDA cannot run on the CPU machines: these tests drive ram-edge's real builder and
runtime code against tests/trt_double.py, a TEST DOUBLE of TensorRT's Python API and of CUDA memory
(whose engines run the ONNX with onnxruntime on the CPU). The real libraries are used by the tests
marked `gpu` (skipped without TensorRT and an NVIDIA GPU), and every TensorRT call is checked against
NVIDIA's API stubs by test_tensorrt_api_check.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import trt_double
from ram_edge.bundle import read_bundle, write_manifest
from ram_edge.cli.main import cli
from ram_edge.default_model import default_model_path
from ram_edge.errors import BundleError, ExportError, RuntimeUnavailableError
from ram_edge.runtimes import cuda_memory

pytest.importorskip("onnxruntime", reason="the double runs engines with onnxruntime: pip install 'ram-edge[ort]'")
pytest.importorskip("onnx", reason="the double parses ONNX with the onnx package: pip install 'ram-edge[export]'")

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "ram_edge" / "assets" / "default_model" / "examples"


@pytest.fixture(scope="module")
def double(tmp_path_factory):
    """TensorRT and CUDA replaced by the test double for this module (timing cache in a temporary home)."""
    with pytest.MonkeyPatch.context() as mp:
        trt_double.install(mp, tmp_path_factory.mktemp("cache"))
        yield trt_double


@pytest.fixture(autouse=True)
def _reset_double_knobs():
    trt_double.Builder.num_DLA_cores = 0
    trt_double.Builder.fail_build = False
    yield
    trt_double.Builder.num_DLA_cores = 0
    trt_double.Builder.fail_build = False


@pytest.fixture(scope="module")
def fp32_bundle() -> Path:
    return default_model_path("bundle_fp32")


@pytest.fixture(scope="module")
def int8_bundle() -> Path:
    path = default_model_path("bundle")
    if read_bundle(path, verify=False).precision != "int8":
        pytest.skip("the shipped default bundle is not INT8")
    return path


@pytest.fixture(scope="module")
def fp16_engine(double, fp32_bundle, tmp_path_factory) -> Path:
    from ram_edge.export.tensorrt_format import TrtBuildOptions, build_trt_bundle

    out = tmp_path_factory.mktemp("trt") / "fp16"
    build_trt_bundle(fp32_bundle, out, TrtBuildOptions(precision="fp16", max_batch=4, opt_batch=2), progress=False)
    return out


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _images(n: int) -> list[Path]:
    files = sorted(EXAMPLES.glob("*.png"))
    return [files[i % len(files)] for i in range(n)]


# ---- pure logic --------------------------------------------------------------------------------

def test_build_options_profiles_and_devices():
    from ram_edge.export.tensorrt_format import TrtBuildOptions, profile_shapes
    from ram_edge.runtimes.tensorrt_runtime import parse_device

    assert profile_shapes(160, 2, 8) == {"min": [1, 3, 160, 160], "opt": [2, 3, 160, 160], "max": [8, 3, 160, 160]}
    TrtBuildOptions(precision="int8", max_batch=4, opt_batch=4, dla_core=0).check()
    for bad, needle in ((TrtBuildOptions(precision="bf16"), "bf16"), (TrtBuildOptions(max_batch=2, opt_batch=3), "--opt-batch"),
                        (TrtBuildOptions(precision="fp32", dla_core=0), "DLA"), (TrtBuildOptions(workspace_mb=0), "--workspace")):
        with pytest.raises(ExportError, match=needle):
            bad.check()
    assert [parse_device(d) for d in (None, "cuda", "GPU", "cuda:1", "gpu:3")] == [0, 0, 0, 1, 3]
    with pytest.raises(RuntimeUnavailableError, match="cuda:N"):
        parse_device("cpu")


def test_engine_mismatch_names_version_and_gpu():
    from ram_edge.runtimes.cuda_memory import GpuInfo
    from ram_edge.runtimes.tensorrt_runtime import engine_mismatch, rebuild_command

    record = {"version": "10.3.0", "gpu": {"name": "Orin", "compute_capability": "8.7"}, "precision": "int8",
              "profile": {"opt": [1, 3, 384, 384], "max": [4, 3, 384, 384]}, "dla_core": 0, "workspace_mb": 512}
    assert engine_mismatch(record, "10.3.0", GpuInfo(0, "Orin", "8.7")) is None
    problem = engine_mismatch(record, "10.7.0", GpuInfo(0, "NVIDIA GeForce RTX 4090", "8.9"))
    assert "TensorRT 10.3.0" in problem and "10.7.0" in problem and "Orin" in problem and "RTX 4090" in problem
    command = rebuild_command("/models/my engine", record)
    assert shlex.split(command)[:7] == ["ram-edge", "export", "/models/my engine", "--format", "trt", "-o", "/models/my engine"]
    assert "--precision int8" in command and "--max-batch 4 --opt-batch 1" in command and "--dla-core 0" in command
    assert "--workspace 512" in command


def test_source_onnx_refuses_wrong_pairings(fp32_bundle, int8_bundle, tmp_path):
    from ram_edge.export.tensorrt_format import source_onnx

    fp32, int8 = read_bundle(fp32_bundle), read_bundle(int8_bundle)
    assert source_onnx(fp32, "fp16")[0].name == "model.onnx"
    assert source_onnx(int8, "int8")[1]["precision"] == "int8"
    with pytest.raises(ExportError, match="INT8 Q/DQ ONNX"):
        source_onnx(fp32, "int8")
    with pytest.raises(ExportError, match="fp32 ONNX bundle"):
        source_onnx(int8, "fp16")
    weights = tmp_path / "weights"
    shutil.copytree(int8_bundle, weights)
    manifest = json.loads((weights / "manifest.json").read_text())
    manifest["quantization"]["method"] = "weights"
    write_manifest(weights, manifest)
    with pytest.raises(ExportError, match="8-bit weights only"):
        source_onnx(read_bundle(weights), "int8")
    manifest["model_format"] = "openvino"
    write_manifest(weights, manifest)
    with pytest.raises(ExportError, match="openvino bundle"):
        source_onnx(read_bundle(weights), "int8")


def test_default_timing_cache_path(monkeypatch, tmp_path):
    from ram_edge.export.tensorrt_format import default_timing_cache

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("RAM_EDGE_TRT_TIMING_CACHE", raising=False)
    path = default_timing_cache("10.3.0", "NVIDIA Jetson AGX Orin", "8.7")
    assert path == tmp_path / "ram-edge" / "tensorrt" / "timing-10.3.0-nvidia-jetson-agx-orin-sm87.cache"
    monkeypatch.setenv("RAM_EDGE_TRT_TIMING_CACHE", str(tmp_path / "mine.cache"))
    assert default_timing_cache("10.3.0", "x", "8.7") == tmp_path / "mine.cache"


# ---- the builder -----------------------------------------------------------------------------

def test_fp16_engine_bundle_manifest(fp16_engine, fp32_bundle):
    import onnx

    bundle = read_bundle(fp16_engine)
    assert bundle.format == "trt" and bundle.precision == "fp16"
    assert bundle.files == {"model": "model.engine", "onnx": "model.onnx", "layers": "engine_layers.json"}
    assert (fp16_engine / "model.onnx").read_bytes() == (fp32_bundle / "model.onnx").read_bytes()
    record = bundle.manifest["tensorrt"]
    assert record["version"] == trt_double.VERSION
    assert record["gpu"] == {"name": trt_double.GPU.name, "compute_capability": trt_double.GPU.compute_capability}
    assert record["profile"] == {"input": "images", "min": [1, 3, 160, 160], "opt": [2, 3, 160, 160], "max": [4, 3, 160, 160]}
    assert record["flags"] == ["FP16", "OBEY_PRECISION_CONSTRAINTS"]
    ops = [n.op_type for n in onnx.load(str(fp32_bundle / "model.onnx")).graph.node]
    # LayerNorms, softmaxes and the sigmoid that writes the probabilities stay in fp32.
    assert record["fp32_layers"] == ops.count("LayerNormalization") + ops.count("Softmax") + ops.count("Sigmoid") > 0
    header = json.loads((fp16_engine / "model.engine").read_bytes()[len(trt_double.MAGIC):].split(b"\n", 1)[0])
    assert header["precision_constraints"] and len(header["fp32_layers"]) == record["fp32_layers"]
    assert "TF32" in header["flags"]  # only an fp32 engine turns TF32 off
    assert Path(record["timing_cache"]).is_file()
    assert bundle.labels.tags == read_bundle(fp32_bundle).labels.tags
    val = bundle.manifest["validation"]
    assert val["max_abs_diff"] == 0.0 and val["tag_set_f1"] == 1.0 and val["batch_sizes"] == [1, 3]
    assert bundle.manifest["source_bundle"]["precision"] == "fp32"
    assert json.loads((fp16_engine / "engine_layers.json").read_text())["double"] is True


def test_fp32_engine_turns_tf32_off_and_timing_cache_is_reused(double, fp32_bundle, tmp_path):
    from ram_edge.export.tensorrt_format import TrtBuildOptions, build_trt_bundle

    cache = tmp_path / "timing.cache"
    options = TrtBuildOptions(precision="fp32", max_batch=1, timing_cache=str(cache))
    build_trt_bundle(fp32_bundle, tmp_path / "a", options, progress=False)
    build_trt_bundle(fp32_bundle, tmp_path / "b", options, progress=False)
    headers = [json.loads((tmp_path / d / "model.engine").read_bytes()[len(trt_double.MAGIC):].split(b"\n", 1)[0]) for d in "ab"]
    assert "TF32" not in headers[0]["flags"]
    assert [h["timing_cache_hit"] for h in headers] == [False, True]
    assert read_bundle(tmp_path / "b").manifest["tensorrt"]["timing_cache"] == str(cache)


def test_int8_engine_from_qdq_bundle(double, int8_bundle, tmp_path):
    from ram_edge.export.tensorrt_format import TrtBuildOptions, build_trt_bundle

    manifest = build_trt_bundle(int8_bundle, tmp_path / "int8", TrtBuildOptions(precision="int8", max_batch=2), progress=False)
    assert manifest["precision"] == "int8" and manifest["tensorrt"]["flags"][:2] == ["FP16", "INT8"]
    assert manifest["quantization"]["method"] == read_bundle(int8_bundle).manifest["quantization"]["method"]
    assert manifest["validation"]["tolerance"] == 0.15


def test_dla_core_checks_and_report(double, fp32_bundle, tmp_path):
    from ram_edge.export.tensorrt_format import TrtBuildOptions, build_trt_bundle
    from ram_edge.runtimes.tensorrt_runtime import TensorRTRuntime

    with pytest.raises(ExportError, match="0 DLA core"):
        build_trt_bundle(fp32_bundle, tmp_path / "x", TrtBuildOptions(dla_core=0, max_batch=1), progress=False)
    trt_double.Builder.num_DLA_cores = 2
    with pytest.raises(ExportError, match="2 DLA core"):
        build_trt_bundle(fp32_bundle, tmp_path / "x", TrtBuildOptions(dla_core=2, max_batch=1), progress=False)
    assert not (tmp_path / "x").exists()
    manifest = build_trt_bundle(fp32_bundle, tmp_path / "dla", TrtBuildOptions(dla_core=1, max_batch=1), progress=False)
    dla = manifest["tensorrt"]["dla"]
    assert dla["core"] == 1 and 0 < dla["layers_on_dla"] < dla["layers"] and "GPU_FALLBACK" in manifest["tensorrt"]["flags"]
    with TensorRTRuntime(tmp_path / "dla") as runtime:  # the double refuses a DLA engine unless the runtime sets its core
        assert "DLA core 1" in runtime.device


def test_failed_build_leaves_nothing(double, fp32_bundle, tmp_path):
    from ram_edge.export.tensorrt_format import TrtBuildOptions, build_trt_bundle

    trt_double.Builder.fail_build = True
    with pytest.raises(ExportError, match="could not build"):
        build_trt_bundle(fp32_bundle, tmp_path / "engine", TrtBuildOptions(max_batch=1), progress=False)
    assert list(tmp_path.iterdir()) == []
    broken = tmp_path / "broken"
    shutil.copytree(fp32_bundle, broken)
    (broken / "model.onnx").write_bytes(b"not an onnx file")
    manifest = json.loads((broken / "manifest.json").read_text())
    write_manifest(broken, manifest)
    trt_double.Builder.fail_build = False
    with pytest.raises(ExportError, match="could not parse"):
        build_trt_bundle(broken, tmp_path / "engine", TrtBuildOptions(max_batch=1), progress=False)
    assert not (tmp_path / "engine").exists()


# ---- the runtime -----------------------------------------------------------------------------

def test_tagger_on_trt_matches_onnxruntime(fp16_engine, fp32_bundle):
    from ram_edge import Tagger

    images = _images(6)
    with Tagger.load(fp32_bundle, runtime="ort") as reference, Tagger.load(fp16_engine) as tagger:
        assert tagger.runtime.name == "trt"  # auto picks TensorRT for a TensorRT bundle
        assert tagger.runtime.compute_precision == "fp16" and trt_double.GPU.name in tagger.runtime.device
        expected, got = reference.tag(images), tagger.tag(images)
    assert [r.tags for r in got] == [r.tags for r in expected]
    assert any(r.tags for r in got)


def test_buffers_sized_for_largest_batch_reused_and_freed(fp16_engine, fp32_bundle):
    from ram_edge.runtimes.ort_runtime import OrtRuntime
    from ram_edge.runtimes.tensorrt_runtime import TensorRTRuntime

    rng = np.random.default_rng(3)
    batch = rng.uniform(-2, 2, size=(9, 3, 160, 160)).astype(np.float32)
    expected = OrtRuntime(fp32_bundle).run(batch)
    device, before = trt_double.DEVICE, dict(trt_double.DEVICE.blocks)
    runtime = TensorRTRuntime(fp16_engine, device="cuda:0")
    start = device.allocations
    np.testing.assert_allclose(runtime.run(batch[:2]), expected[:2], atol=1e-6)
    runtime.run(batch[:1])
    runtime.run(batch[:2])
    assert device.allocations - start == 2  # input + output, once
    runtime.run(batch[:3])
    assert device.allocations - start == 4  # grown once for the larger batch
    executions = trt_double.ExecutionContext.executions
    np.testing.assert_allclose(runtime.run(batch), expected, atol=1e-6)  # 9 > max batch 4: chunks of 4, 4, 1
    assert trt_double.ExecutionContext.executions - executions == 3
    assert runtime.run(batch[:0]).shape == (0, expected.shape[1])
    with pytest.raises(RuntimeUnavailableError, match=r"shape \(2, 3, 96, 96\)"):
        runtime.run(np.zeros((2, 3, 96, 96), np.float32))
    runtime.close()
    runtime.close()
    assert device.blocks == before and device.host_live == 0 and device.streams_live == 0
    with pytest.raises(RuntimeUnavailableError, match="closed"):
        runtime.run(batch[:1])


def test_runtime_refusals(fp16_engine, fp32_bundle):
    from ram_edge.runtimes.tensorrt_runtime import TensorRTRuntime

    with pytest.raises(RuntimeUnavailableError, match="--format trt"):
        TensorRTRuntime(fp32_bundle)
    with pytest.raises(RuntimeUnavailableError, match="built for fp16"):
        TensorRTRuntime(fp16_engine, compute_precision="fp32")
    with pytest.raises(RuntimeUnavailableError, match="device 1 does not exist"):
        TensorRTRuntime(fp16_engine, device="cuda:1")
    with pytest.raises(RuntimeUnavailableError, match="unknown CUDA library"):
        cuda_memory.open_cuda(backend="cupy")


@pytest.mark.parametrize("field, value, needle", [
    ("gpu", {"name": "NVIDIA Jetson AGX Orin", "compute_capability": "8.7"}, "built on NVIDIA Jetson AGX Orin"),
    ("version", "10.0.1", "built with TensorRT 10.0.1"),
])
def test_foreign_engine_refused_with_rebuild_command(double, fp16_engine, tmp_path, field, value, needle):
    from ram_edge.runtimes.tensorrt_runtime import TensorRTRuntime

    bundle = tmp_path / "engine"
    shutil.copytree(fp16_engine, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["tensorrt"][field] = value
    write_manifest(bundle, manifest)
    with pytest.raises(BundleError, match=needle) as caught:
        TensorRTRuntime(bundle)
    command = str(caught.value).rsplit("ONNX kept in the bundle: ", 1)[1]
    args = shlex.split(command)
    assert args[:2] == ["ram-edge", "export"]
    result = _run(*args[1:])  # the command it gives rebuilds the engine in place, from the bundle alone
    assert result.exit_code == 0, result.output
    with TensorRTRuntime(bundle) as runtime:
        assert runtime.max_batch == 4 and runtime.run(np.zeros((1, 3, 160, 160), np.float32)).shape == (1, 359)
    assert read_bundle(bundle).manifest["tensorrt"]["profile"] == manifest["tensorrt"]["profile"]


# ---- the CLI -----------------------------------------------------------------------------------

def test_cli_export_tag_and_bench_trt(double, fp32_bundle, tmp_path):
    out = tmp_path / "engine"
    result = _run("export", fp32_bundle, "--format", "trt", "-o", out, "--max-batch", "2")
    assert result.exit_code == 0, result.output
    assert "TensorRT" in result.output and "fp16 engine" in result.output and "batch 1..2" in result.output
    image = _images(1)[0]
    tags = _run("tag", "--model", out, "--runtime", "trt", "--json", image)
    reference = _run("tag", "--model", fp32_bundle, "--runtime", "ort", "--json", image)
    assert tags.exit_code == 0, tags.output
    assert json.loads(tags.output.splitlines()[0])["tags"] == json.loads(reference.output.splitlines()[0])["tags"]
    bench = _run("bench", out, "--runtime", "trt", "--batch-size", "3", "--iters", "2", "--warmup", "0", "--json")
    assert bench.exit_code == 0, bench.output
    row = json.loads(bench.output.splitlines()[-1])
    assert row["runtime"] == "trt" and row["format"] == "trt" and row["precision"] == "fp16" and row["num_tags"] == 359
    assert row["model_size_mb"] == pytest.approx((out / "model.engine").stat().st_size / 2**20)
    again = _run("export", fp32_bundle, "--format", "trt", "-o", out)
    assert again.exit_code != 0 and "exists" in again.output


@pytest.mark.parametrize("args, needle", [
    (["--max-batch", "2"], "--max-batch: only with --format trt"),
    (["--format", "trt", "--max-batch", "2", "--opt-batch", "4"], "larger than --max-batch"),
    (["--format", "trt", "--tags", "cat"], "label set and precision are fixed"),
    (["--format", "trt", "--precision", "int8"], "INT8 Q/DQ ONNX"),
])
def test_cli_export_trt_usage_errors(double, fp32_bundle, tmp_path, args, needle):
    result = _run("export", fp32_bundle, "-o", tmp_path / "out", *args)
    assert result.exit_code != 0 and needle in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_cli_export_trt_from_checkpoint(double, tmp_path):
    pytest.importorskip("torch", reason="exporting a checkpoint needs torch: pip install 'ram-edge[export]'")
    checkpoint = default_model_path("checkpoint")
    result = _run("export", checkpoint, "--format", "trt", "-o", tmp_path / "engine", "--max-batch", "1", "--tags", "cat,dog")
    assert result.exit_code == 0, result.output
    bundle = read_bundle(tmp_path / "engine")
    assert sorted(bundle.labels.tags) == ["cat", "dog"] and bundle.manifest["source_bundle"]["precision"] == "fp32"
    result = _run("export", checkpoint, "--format", "trt", "-o", tmp_path / "int8", "--precision", "int8")
    assert result.exit_code != 0 and "--calib" in result.output and not (tmp_path / "int8").exists()


# ---- the real environment: no TensorRT, no GPU -------------------------------------------------

def _cli_python(*args) -> subprocess.CompletedProcess:
    """A fresh Python process: the real environment, without this module's test double."""
    env = {k: v for k, v in os.environ.items() if k != cuda_memory.BACKEND_ENV}
    command = [sys.executable, "-c", *args] if len(args) == 1 else [sys.executable, *args]
    return subprocess.run(command, capture_output=True, text=True, env=env)


def _cli(*args) -> subprocess.CompletedProcess:
    return _cli_python("-m", "ram_edge.cli.main", *map(str, args))


def test_missing_tensorrt_says_what_to_install(fp16_engine, fp32_bundle, tmp_path):
    probe = _cli_python("from ram_edge.runtimes.tensorrt_runtime import tensorrt_import_error as e; print(e() is None)")
    if probe.stdout.strip() == "True":
        pytest.skip("TensorRT is installed here")
    for args in (["tag", "--model", fp16_engine, "--runtime", "trt", _images(1)[0]], ["tag", "--model", fp16_engine, _images(1)[0]],
                 ["export", fp32_bundle, "--format", "trt", "-o", tmp_path / "engine"]):
        proc = _cli(*args)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
        message = proc.stderr.strip()
        assert len(message.splitlines()) == 1
        assert "tensorrt" in message and "pip install 'ram-edge[trt]'" in message and "JetPack" in message
    assert not (tmp_path / "engine").exists()


def test_cuda_python_without_a_driver_is_one_clear_error():
    if not cuda_memory._has_cuda_python():
        pytest.skip("cuda-python is not installed")
    try:
        memory = cuda_memory.CudaPythonMemory(0)
    except RuntimeUnavailableError as exc:
        assert "cudaGetDeviceCount" in str(exc) or "does not exist" in str(exc)
        return
    pytest.skip(f"a CUDA device is present here ({memory.gpu().name})")


def test_missing_cuda_library_hint(monkeypatch):
    monkeypatch.delenv(cuda_memory.BACKEND_ENV, raising=False)
    monkeypatch.setattr(cuda_memory, "BACKENDS", {"pycuda": (lambda: False, cuda_memory.PyCudaMemory),
                                                  "cuda-python": (lambda: False, cuda_memory.CudaPythonMemory)})
    with pytest.raises(RuntimeUnavailableError, match="neither is installed.*cuda-python.*pycuda"):
        cuda_memory.open_cuda()
    with pytest.raises(RuntimeUnavailableError, match="'pycuda' is not installed"):
        cuda_memory.open_cuda(backend="pycuda")


# ---- the GPU check script, its CPU-side parts through the double -----------------------------------

@pytest.mark.slow
def test_gpu_check_default_model_part(double, tmp_path, monkeypatch):
    from ram_edge.benchmarks import gpu_check

    def in_process(*args: str) -> str:
        result = CliRunner().invoke(cli, list(args))
        assert result.exit_code == 0, result.output
        return result.output

    monkeypatch.setattr(gpu_check, "sh", in_process)
    rows = gpu_check.check_default_model(tmp_path, test_count=6)
    assert [r["variant"] for r in rows] == ["fp32 ONNX (onnxruntime CPU)", "INT8 ONNX (onnxruntime CPU)", "fp16 engine", "INT8 engine"]
    # The double runs each engine's own ONNX: the fp16 engine equals fp32, the INT8 engine equals the INT8 ONNX.
    assert rows[2]["max_abs_diff_vs_fp32"] == 0.0 and rows[3]["agreement_vs_fp32"] == rows[1]["agreement_vs_fp32"]
    assert read_bundle(tmp_path / "engines" / "default-int8").manifest["tensorrt"]["profile"]["opt"][0] == 8
    speed = [{"model": "full-size Swin-L/384 RAM", "runtime": "TensorRT int8", "batch": 8, "ms_per_batch": 4.0, "ms_per_image": 0.5,
              "speedup_vs_torch_fp16": 3.5}]
    verdicts = gpu_check.verdicts(rows, speed)
    assert any("3.50x torch fp16 eager" in v and "pass" in v for v in verdicts)
    assert ("mAP" in rows[0]) == any("default model INT8 engine mAP" in v for v in verdicts)
    env = {"gpu": "double", "compute_capability": "8.7", "tensorrt": trt_double.VERSION, "cuda_memory": "double", "platform": "test",
           "onnxruntime": "x"}
    report = tmp_path / "report.md"
    gpu_check.write_report(report, {"environment": env, "date": "2026-11-30", "command": "test", "seconds": 1.0, "accuracy": rows,
                                    "speed": speed, "verdicts": verdicts})
    text = report.read_text()
    assert "INT8 engine" in text and "TensorRT int8" in text and json.loads(report.with_suffix(".json").read_text())["speed"] == speed


def test_tensorrt_8_is_refused(monkeypatch):
    from ram_edge.runtimes.tensorrt_runtime import tensorrt_import_error

    old = trt_double.module()
    old.__version__ = "8.5.2.2"
    monkeypatch.setitem(sys.modules, "tensorrt", old)
    assert "TensorRT 10 or later" in tensorrt_import_error() and "JetPack 6" in tensorrt_import_error()


def test_building_and_running_an_engine_never_imports_torch(fp32_bundle, tmp_path):
    """A Jetson with TensorRT and onnxruntime but no torch builds from a bundle and runs it."""
    code = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
import trt_double
from ram_edge.runtimes import cuda_memory
sys.modules["tensorrt"] = trt_double.module()
cuda_memory.BACKENDS["double"] = (lambda: True, trt_double.DoubleCudaMemory)
from ram_edge.export.tensorrt_format import TrtBuildOptions, build_trt_bundle
from ram_edge import Tagger
build_trt_bundle({str(fp32_bundle)!r}, {str(tmp_path / "engine")!r}, TrtBuildOptions(max_batch=1), progress=False)
with Tagger.load({str(tmp_path / "engine")!r}) as tagger:
    tagger.tag([{str(_images(1)[0])!r}])
print(sorted(m for m in ("torch", "nncf", "openvino") if m in sys.modules))
"""
    env = {**os.environ, cuda_memory.BACKEND_ENV: "double", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"
