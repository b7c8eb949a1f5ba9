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

import cuda_double
import trt_double
from conftest import run_cli
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
    assert record["version"] == trt_double.VERSION and record["api"].startswith("TensorRT 10.x API")
    assert record["gpu"] == {"name": trt_double.GPU_NAME, "compute_capability": trt_double.CAPABILITY}
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
    assert "Layers" in json.loads((fp16_engine / "engine_layers.json").read_text())


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
    with pytest.raises(ExportError, match="static shapes only"):
        TrtBuildOptions(dla_core=1, max_batch=2, opt_batch=1).check()
    # A DLA engine has a static profile: with TensorRT's 1..max profile and GPU fallback every layer would run on the GPU.
    manifest = build_trt_bundle(fp32_bundle, tmp_path / "dla", TrtBuildOptions(dla_core=1, max_batch=2, opt_batch=2),
                                progress=False)
    record = manifest["tensorrt"]
    assert record["profile"]["min"] == record["profile"]["opt"] == record["profile"]["max"] == [2, 3, 160, 160]
    dla = record["dla"]
    assert dla["core"] == 1 and dla["source"] == "engine inspector" and "GPU_FALLBACK" in record["flags"]
    assert dla["dla_subgraphs"] > 0 and dla["engine_layers_on_gpu"] > 0  # read from what the inspector says ran where
    assert 0 < dla["network_layers_dla_capable"] < dla["network_layers"]
    with TensorRTRuntime(tmp_path / "dla") as runtime:  # the double refuses a DLA engine unless the runtime sets its core
        assert "DLA core 1" in runtime.device and runtime.min_batch == runtime.max_batch == 2
        assert runtime.run(np.zeros((1, 3, 160, 160), np.float32)).shape == (1, 359)  # padded to the static batch
    assert manifest["validation"]["batch_sizes"] == [2]


def test_dla_placement_from_the_inspector():
    from ram_edge.export.tensorrt_format import dla_placement

    # trtexec --dumpLayerInfo of a DLA engine: the DLA subgraph is a ForeignNode between "to nvm" / "from nvm" reformats.
    dla = {"Layers": [{"Name": "images to nvm"}, {"Name": "{ForeignNode[Conv_0...Concat_198]}"}, {"Name": "head from nvm"},
                      {"Name": "Softmax_3"}]}
    assert dla_placement(json.dumps(dla)) == {"dla_subgraphs": 1, "engine_layers_on_gpu": 1}
    gpu_only = {"Layers": [{"Name": "{ForeignNode[/MatMul...Softmax]}", "LayerType": "Myelin"}, {"Name": "Sigmoid"}]}
    assert dla_placement(json.dumps(gpu_only)) == {"dla_subgraphs": 0, "engine_layers_on_gpu": 2}  # a Myelin graph is GPU
    assert dla_placement("not json") == {"dla_subgraphs": 0, "engine_layers_on_gpu": 0}


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
        assert tagger.runtime.compute_precision == "fp16" and trt_double.GPU_NAME in tagger.runtime.device
        expected, got = reference.tag(images), tagger.tag(images)
    assert [r.tags for r in got] == [r.tags for r in expected]
    assert any(r.tags for r in got)


def test_buffers_sized_for_largest_batch_reused_and_freed(fp16_engine, fp32_bundle):
    from ram_edge.runtimes.ort_runtime import OrtRuntime
    from ram_edge.runtimes.tensorrt_runtime import TensorRTRuntime

    rng = np.random.default_rng(3)
    batch = rng.uniform(-2, 2, size=(9, 3, 160, 160)).astype(np.float32)
    expected = OrtRuntime(fp32_bundle).run(batch)
    device, before = cuda_double.GPU, dict(cuda_double.GPU.blocks)
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
    result = run_cli(*args[1:])  # the command it gives rebuilds the engine in place, from the bundle alone
    assert result.exit_code == 0, result.output
    with TensorRTRuntime(bundle) as runtime:
        assert runtime.max_batch == 4 and runtime.run(np.zeros((1, 3, 160, 160), np.float32)).shape == (1, 359)
    assert read_bundle(bundle).manifest["tensorrt"]["profile"] == manifest["tensorrt"]["profile"]


# ---- the CLI -----------------------------------------------------------------------------------

def test_cli_export_tag_and_bench_trt(double, fp32_bundle, tmp_path):
    out = tmp_path / "engine"
    result = run_cli("export", fp32_bundle, "--format", "trt", "-o", out, "--max-batch", "2")
    assert result.exit_code == 0, result.output
    assert "TensorRT" in result.output and "fp16 engine" in result.output and "batch 1..2" in result.output
    image = _images(1)[0]
    tags = run_cli("tag", "--model", out, "--runtime", "trt", "--json", image)
    reference = run_cli("tag", "--model", fp32_bundle, "--runtime", "ort", "--json", image)
    assert tags.exit_code == 0, tags.output
    assert json.loads(tags.output.splitlines()[0])["tags"] == json.loads(reference.output.splitlines()[0])["tags"]
    bench = run_cli("bench", out, "--runtime", "trt", "--batch-size", "3", "--iters", "2", "--warmup", "0", "--json")
    assert bench.exit_code == 0, bench.output
    row = json.loads(bench.output.splitlines()[-1])
    assert row["runtime"] == "trt" and row["format"] == "trt" and row["precision"] == "fp16" and row["num_tags"] == 359
    assert row["model_size_mb"] == pytest.approx((out / "model.engine").stat().st_size / 2**20)
    again = run_cli("export", fp32_bundle, "--format", "trt", "-o", out)
    assert again.exit_code != 0 and "exists" in again.output


@pytest.mark.parametrize("args, needle", [
    (["--max-batch", "2"], "--max-batch: only with --format trt"),
    (["--format", "trt", "--max-batch", "2", "--opt-batch", "4"], "larger than --max-batch"),
    (["--format", "trt", "--tags", "cat"], "label set and precision are fixed"),
    (["--format", "trt", "--precision", "int8"], "INT8 Q/DQ ONNX"),
])
def test_cli_export_trt_usage_errors(double, fp32_bundle, tmp_path, args, needle):
    result = run_cli("export", fp32_bundle, "-o", tmp_path / "out", *args)
    assert result.exit_code != 0 and needle in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_cli_export_trt_from_checkpoint(double, tmp_path):
    pytest.importorskip("torch", reason="exporting a checkpoint needs torch: pip install 'ram-edge[export]'")
    checkpoint = default_model_path("checkpoint")
    result = run_cli("export", checkpoint, "--format", "trt", "-o", tmp_path / "engine", "--max-batch", "1", "--tags", "cat,dog")
    assert result.exit_code == 0, result.output
    bundle = read_bundle(tmp_path / "engine")
    assert sorted(bundle.labels.tags) == ["cat", "dog"] and bundle.manifest["source_bundle"]["precision"] == "fp32"
    result = run_cli("export", checkpoint, "--format", "trt", "-o", tmp_path / "int8", "--precision", "int8")
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
    """The real cuda-python (a fresh process: this module's double is not there)."""
    code = ("from ram_edge.runtimes import cuda_memory\n"
            "if not cuda_memory._has_cuda_python(): print('absent')\n"
            "else:\n"
            "    try: print('device', cuda_memory.CudaPythonMemory(0).gpu().name)\n"
            "    except Exception as exc: print(type(exc).__name__, exc)\n")
    out = _cli_python(code).stdout.strip()
    if out == "absent":
        pytest.skip("cuda-python is not installed")
    if out.startswith("device "):
        pytest.skip(f"a CUDA device is present here ({out})")
    assert out.startswith("RuntimeUnavailableError") and ("no usable NVIDIA GPU" in out or "does not exist" in out), out


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
        from ram_edge.benchmarks.harness import CliFailed

        result = CliRunner().invoke(cli, list(args))
        if result.exit_code:  # as run_cli: the script's fallbacks (no emoji font: example images only) catch this
            raise CliFailed(f"`ram-edge {' '.join(args[:2])}` failed: {result.output.strip().splitlines()[-1:]}")
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


# ---- TensorRT versions: JetPack 5.1 (8.5), JetPack 6.0 (8.6), JetPack 6.1/6.2 (10.3), desktop wheels (10.x) ----

@pytest.mark.parametrize("pose", ["8.5", "8.6", "10.3", "10.x"])
def test_engines_build_and_run_on_every_supported_tensorrt(pose, fp32_bundle, tmp_path, monkeypatch):
    from ram_edge.export.tensorrt_format import TrtBuildOptions, build_trt_bundle
    from ram_edge.runtimes.ort_runtime import OrtRuntime
    from ram_edge.runtimes.tensorrt_runtime import TensorRTRuntime, tensorrt_import_error

    version = trt_double.POSES[pose]
    trt_double.install(monkeypatch, tmp_path / "cache", version=version)
    assert tensorrt_import_error() is None
    manifest = build_trt_bundle(fp32_bundle, tmp_path / "engine", TrtBuildOptions(max_batch=2), progress=False)
    record = manifest["tensorrt"]
    assert record["version"] == version and record["api"].startswith(f"TensorRT {version.split('.')[0]}.x API")
    # 8.x networks need the explicit-batch flag to parse ONNX; 8.x bindings have no progress monitor.
    assert ("explicit-batch flag" in record["api"]) == pose.startswith("8") and ("progress monitor" in record["api"]) == (not pose.startswith("8"))
    batch = np.random.default_rng(1).uniform(-2, 2, size=(2, 3, 160, 160)).astype(np.float32)
    with TensorRTRuntime(tmp_path / "engine") as runtime:
        np.testing.assert_allclose(runtime.run(batch), OrtRuntime(fp32_bundle).run(batch), atol=1e-6)


@pytest.mark.parametrize("version, needles", [
    ("8.4.3.1", ["TensorRT 8.4.3.1", "8.5 or later", "JetPack 5.1"]),
    ("11.0.0.double", ["TensorRT 11.0.0.double", "8.5 to 10.x", "tensorrt>=10,<11"]),
])
def test_tensorrt_outside_8_5_to_10_is_refused(version, needles, fp32_bundle, tmp_path, monkeypatch):
    from ram_edge.export.tensorrt_format import TrtBuildOptions, build_trt_bundle
    from ram_edge.runtimes.tensorrt_runtime import tensorrt_import_error

    trt_double.install(monkeypatch, tmp_path / "cache", version=version)
    message = tensorrt_import_error()
    assert all(n in message for n in needles), message
    with pytest.raises(ExportError, match="8.5"):  # a Python caller of the builder is told the same, not an AttributeError
        build_trt_bundle(fp32_bundle, tmp_path / "engine", TrtBuildOptions(max_batch=1), progress=False)
    assert not (tmp_path / "engine").exists()


# ---- INT8: TensorRT's symmetric Q/DQ rule -------------------------------------------------------

def _parses(trt, path: Path) -> tuple[bool, list[str]]:
    from ram_edge.runtimes.tensorrt_version import tensorrt_api

    logger = trt.Logger()
    network = trt.Builder(logger).create_network(tensorrt_api(trt).network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse_from_file(str(path))
    return ok, [parser.get_error(i) for i in range(parser.num_errors)]


def test_strict_parser_refuses_asymmetric_int8_and_accepts_its_conversion(double, int8_bundle, tmp_path):
    import tensorrt as trt

    from ram_edge.export.tensorrt_qdq import check_file, convert_file

    ok, errors = _parses(trt, int8_bundle / "model.onnx")  # the shipped INT8 bundle: NNCF's uint8 activations
    assert not ok and any("symmetric" in e or "INT8" in e for e in errors), errors
    assert check_file(int8_bundle / "model.onnx")
    report = convert_file(int8_bundle / "model.onnx", tmp_path / "model.onnx")
    assert _parses(trt, tmp_path / "model.onnx") == (True, []) and check_file(tmp_path / "model.onnx") == []
    assert report.activation_quantizers > 0 and 1.0 <= min(report.scale_growth) and max(report.scale_growth) <= 2.01


def _qdq_model(zero_point: int, zp_type: int, weight_zp: int):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.array([[0, 10, 200], [5, 128, 255]], np.uint8), "w_q")
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"], name="q"),
        helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"], name="dq"),
        helper.make_node("DequantizeLinear", ["w_q", "ws", "wzp"], ["w"], name="wdq", axis=0),
        helper.make_node("MatMul", ["xd", "w"], ["y"], name="mm"),
    ]
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "s"),
             helper.make_tensor("zp", zp_type, [], [zero_point]), weight,
             numpy_helper.from_array(np.array([0.01, 0.02], np.float32), "ws"),
             numpy_helper.from_array(np.array([weight_zp, weight_zp], np.uint8), "wzp")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_symmetric_conversion_keeps_the_range_and_the_weights():
    import onnxruntime as ort
    from onnx import TensorProto

    from ram_edge.export.tensorrt_qdq import to_symmetric_int8, violations

    plain = ort.SessionOptions()
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # run the Q/DQ nodes as written

    model = _qdq_model(200, TensorProto.UINT8, 100)  # activations in [-10, 2.75], weights with a zero point
    assert len(violations(model)) == 3
    x = np.linspace(-10, 2.75, 8, dtype=np.float32).reshape(4, 2)
    before = ort.InferenceSession(model.SerializeToString(), plain).run(None, {"x": x})[0]
    converted, report = to_symmetric_int8(model)
    assert violations(converted) == [] and report.activation_quantizers == 1 and report.weight_tensors == 1
    after = ort.InferenceSession(converted.SerializeToString(), plain).run(None, {"x": x})[0]
    # New scale 10/127 covers [-10, 10]: each activation moves by at most half a step of either scale.
    step = 10 / 127 / 2 + 0.05 / 2
    weights_max = (255 - 100) * 0.02
    assert np.abs(after - before).max() <= step * weights_max * 2 + 0.02 * 10
    assert report.as_dict()["scale_growth_max"] == pytest.approx((10 / 127) / 0.05, rel=1e-4)
    symmetric = _qdq_model(0, TensorProto.INT8, 0)
    assert [v for v in violations(symmetric) if "wdq" not in v] == []  # int8 zero 0 passes; the uint8 weight zp does not


def test_int8_engine_from_the_shipped_bundle_is_made_symmetric(double, int8_bundle, tmp_path):
    from ram_edge.export.tensorrt_format import TrtBuildOptions, build_trt_bundle
    from ram_edge.export.tensorrt_qdq import check_file

    out = tmp_path / "int8"
    manifest = build_trt_bundle(int8_bundle, out, TrtBuildOptions(precision="int8", max_batch=2), progress=False)
    qdq = manifest["tensorrt"]["qdq"]
    assert qdq["converted"] and qdq["activation_quantizers_converted"] > 0 and check_file(out / "model.onnx") == []
    # Validated against onnxruntime on the *source* (asymmetric) ONNX: the conversion is inside what is compared.
    assert "source bundle" in manifest["validation"]["runtime"] and manifest["validation"]["max_abs_diff"] > 0
    assert manifest["validation"]["max_abs_diff"] <= 0.15
    rebuilt = build_trt_bundle(out, out, TrtBuildOptions(precision="int8", max_batch=2), progress=False, overwrite=True)
    assert rebuilt["tensorrt"]["qdq"] == qdq  # a rebuild from the bundle keeps the record of its conversion


# ---- the CUDA layer against the strict CUDA double -----------------------------------------------

def test_cuda_python_stream_handle_is_the_stream_itself(double):
    memory = cuda_memory.open_cuda(0)
    assert memory.name == "cuda-python"
    stream = memory.create_stream()
    # TensorRT's execute_async_v3 takes the cudaStream_t value; getPtr() is the address where cuda-python keeps it.
    assert memory.stream_handle(stream) == int(stream) != stream.getPtr()
    memory.destroy_stream(stream)


@pytest.mark.parametrize("library", ["cuda-python", "pycuda"])
def test_async_copies_arrive_only_after_synchronize(library, monkeypatch, tmp_path):
    trt_double.install(monkeypatch, tmp_path, cuda=library)
    memory = cuda_memory.open_cuda(0)
    with memory.active():
        stream = memory.create_stream()
        host = memory.alloc_host(4, np.float32)
        host[:] = [1, 2, 3, 4]
        out = memory.alloc_host(4, np.float32)
        out[:] = 0
        device = memory.alloc_device(host.nbytes)
        memory.copy_to_device(device, host, stream)
        memory.copy_to_host(out, device, stream)
        assert out.tolist() == [0, 0, 0, 0]  # enqueued, not done
        memory.synchronize(stream)
        assert out.tolist() == [1, 2, 3, 4]
        memory.free_device(device)
        memory.free_host(host)
        memory.free_host(out)
        memory.destroy_stream(stream)
        del stream  # pycuda destroys a stream with its object
    memory.close()
    gpu = cuda_double.GPU
    assert gpu.blocks == {} and gpu.host_live == 0 and cuda_double._HostAllocation.live == 0 and gpu.streams_live == 0
    assert gpu.retained_contexts == 0


@pytest.mark.parametrize("library", ["cuda-python", "pycuda"])
def test_runtime_on_each_cuda_library_releases_everything(library, fp16_engine, fp32_bundle, monkeypatch, tmp_path):
    from ram_edge.runtimes.ort_runtime import OrtRuntime
    from ram_edge.runtimes.tensorrt_runtime import TensorRTRuntime

    trt_double.install(monkeypatch, tmp_path, cuda=library)
    batch = np.random.default_rng(2).uniform(-2, 2, size=(3, 3, 160, 160)).astype(np.float32)
    with TensorRTRuntime(fp16_engine) as runtime:
        assert cuda_double.GPU.retained_contexts == (1 if library == "pycuda" else 0)
        np.testing.assert_allclose(runtime.run(batch), OrtRuntime(fp32_bundle).run(batch), atol=1e-6)
    gpu = cuda_double.GPU
    assert gpu.blocks == {} and gpu.host_live == 0 and cuda_double._HostAllocation.live == 0 and gpu.streams_live == 0
    assert gpu.retained_contexts == 0  # pycuda's retained primary context is released on close


def test_the_callers_cuda_device_is_restored(double, fp16_engine):
    from ram_edge.runtimes.tensorrt_runtime import TensorRTRuntime

    cudart = sys.modules["cuda.bindings.runtime"]
    cuda_double.GPU.device_count = 2
    try:
        cudart.cudaSetDevice(1)  # the host application works on GPU 1
        with TensorRTRuntime(fp16_engine, device="cuda:0") as runtime:
            runtime.run(np.zeros((1, 3, 160, 160), np.float32))
            assert cudart.cudaGetDevice()[1] == 1
        assert cudart.cudaGetDevice()[1] == 1
    finally:
        cudart.cudaSetDevice(0)
        cuda_double.GPU.device_count = 1


def test_out_of_device_memory_leaves_nothing_pinned(double, fp16_engine):
    from ram_edge.runtimes.tensorrt_runtime import TensorRTRuntime

    gpu = cuda_double.GPU
    runtime = TensorRTRuntime(fp16_engine)
    blocks, pinned = dict(gpu.blocks), dict(gpu.pinned)
    gpu.fail_malloc_after = len(gpu.blocks) + 1  # the input's device buffer fits, the output's does not
    try:
        with pytest.raises(RuntimeUnavailableError, match="cudaMalloc"):
            runtime.run(np.zeros((1, 3, 160, 160), np.float32))
        assert gpu.blocks == blocks and gpu.pinned == pinned
    finally:
        gpu.fail_malloc_after = None
    assert runtime.run(np.zeros((1, 3, 160, 160), np.float32)).shape == (1, 359)  # recovers once memory is there
    runtime.close()


def test_every_io_tensor_gets_an_address(double, fp32_bundle, tmp_path):
    """An ONNX with a second output (here the logits): TensorRT needs an address for it too."""
    import onnx

    from ram_edge.export.tensorrt_format import TrtBuildOptions, build_trt_bundle
    from ram_edge.runtimes.ort_runtime import OrtRuntime
    from ram_edge.runtimes.tensorrt_runtime import TensorRTRuntime

    two = tmp_path / "two-outputs"
    shutil.copytree(fp32_bundle, two)
    model = onnx.load(str(two / "model.onnx"))
    sigmoid = next(n for n in model.graph.node if n.op_type == "Sigmoid")
    model.graph.output.append(onnx.helper.make_tensor_value_info(sigmoid.input[0], onnx.TensorProto.FLOAT, ["batch", 359]))
    onnx.save(model, str(two / "model.onnx"))
    write_manifest(two, json.loads((two / "manifest.json").read_text()))
    build_trt_bundle(two, tmp_path / "engine", TrtBuildOptions(max_batch=2), progress=False)
    batch = np.random.default_rng(4).uniform(-2, 2, size=(2, 3, 160, 160)).astype(np.float32)
    with TensorRTRuntime(tmp_path / "engine") as runtime:
        np.testing.assert_allclose(runtime.run(batch), OrtRuntime(fp32_bundle).run(batch), atol=1e-6)


def test_a_foreign_timing_cache_is_replaced(double, fp32_bundle, tmp_path):
    from ram_edge.errors import RamEdgeWarning
    from ram_edge.export.tensorrt_format import TrtBuildOptions, build_trt_bundle

    cache = tmp_path / "timing.cache"
    cache.write_text(json.dumps({"origin": "9.0.0/Other GPU/7.5", "entries": {"old": "tactics"}}))
    with pytest.warns(RamEdgeWarning, match="another TensorRT version or GPU"):
        manifest = build_trt_bundle(fp32_bundle, tmp_path / "engine", TrtBuildOptions(max_batch=1, timing_cache=str(cache)),
                                    progress=False)
    assert manifest["tensorrt"]["timing_cache"] == str(cache)
    assert json.loads(cache.read_text())["origin"].startswith(trt_double.VERSION) and "old" not in cache.read_text()


# ---- TensorRT without torch, the way a user meets it: a real `ram-edge` process ---------------------

HIDDEN = ["torch", "nncf", "onnx", "openvino", "transformers", "safetensors", "onnxconverter_common"]


def _cli_without(args: list, hidden: list[str], tmp_path: Path, *, tensorrt_double: bool) -> tuple[subprocess.CompletedProcess, list]:
    """`ram-edge ARGS` in a fresh process where `hidden` do not import (and, optionally, the TensorRT and CUDA double
    stands in for TensorRT); returns the process and the heavy packages the process had imported at its end."""
    code = f"""
import json, sys
for name in {hidden!r}: sys.modules[name] = None
sys.path.insert(0, {str(Path(__file__).parent)!r})
if {tensorrt_double!r}:
    import trt_double
    trt_double.install_in_process({str(tmp_path / "cache")!r})
from ram_edge.cli.main import main
try:
    main({[str(a) for a in args]!r})
finally:
    loaded = sorted(m for m in ("torch", "nncf", "onnx", "openvino", "transformers") if sys.modules.get(m) is not None)
    print("LOADED " + json.dumps(loaded), file=sys.stderr)
"""
    env = {k: v for k, v in os.environ.items() if k != cuda_memory.BACKEND_ENV}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    loaded = json.loads(next(line for line in proc.stderr.splitlines() if line.startswith("LOADED "))[7:])
    return proc, loaded


def _errors(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("LOADED ")]


def test_export_trt_without_tensorrt_or_torch_names_tensorrt(fp32_bundle, tmp_path):
    proc, loaded = _cli_without(["export", fp32_bundle, "--format", "trt", "-o", tmp_path / "engine"], HIDDEN + ["tensorrt"],
                                tmp_path, tensorrt_double=False)
    lines = _errors(proc)
    assert proc.returncode != 0 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "tensorrt" in lines[0] and "pip install 'ram-edge[trt]'" in lines[0] and "JetPack" in lines[0], lines[0]
    assert "torch" not in lines[0] and loaded == [] and not (tmp_path / "engine").exists()


def test_tensorrt_path_end_to_end_never_imports_torch_nncf_or_onnx(fp32_bundle, tmp_path):
    engine = tmp_path / "engine"
    proc, loaded = _cli_without(["export", fp32_bundle, "--format", "trt", "-o", engine, "--max-batch", "2"], HIDDEN, tmp_path,
                                tensorrt_double=True)
    assert proc.returncode == 0, proc.stderr
    assert "fp16 engine" in proc.stdout and loaded == []
    image = _images(1)[0]
    proc, loaded = _cli_without(["tag", "--model", engine, "--json", image], HIDDEN, tmp_path, tensorrt_double=True)
    assert proc.returncode == 0, proc.stderr
    reference = run_cli("tag", "--model", fp32_bundle, "--runtime", "ort", "--json", image)
    assert json.loads(proc.stdout.splitlines()[0])["tags"] == json.loads(reference.output.splitlines()[0])["tags"]
    assert loaded == []
    proc, loaded = _cli_without(["bench", engine, "--runtime", "trt", "--iters", "2", "--warmup", "0", "--json"], HIDDEN, tmp_path,
                                tensorrt_double=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1])["runtime"] == "trt" and loaded == []


def test_int8_engine_from_the_shipped_bundle_without_torch(int8_bundle, tmp_path):
    """The default model's INT8 bundle to an engine: onnx converts the quantizers, torch and NNCF stay out."""
    engine = tmp_path / "int8"
    hidden = [h for h in HIDDEN if h != "onnx"]
    proc, loaded = _cli_without(["export", int8_bundle, "--format", "trt", "--precision", "int8", "-o", engine, "--max-batch", "1"],
                                hidden, tmp_path, tensorrt_double=True)
    assert proc.returncode == 0, proc.stderr
    assert "asymmetric quantizers made symmetric for TensorRT" in proc.stdout and loaded == ["onnx"]
    proc, loaded = _cli_without(["tag", "--model", engine, _images(1)[0]], HIDDEN, tmp_path, tensorrt_double=True)
    assert proc.returncode == 0 and proc.stdout.strip() and loaded == [], proc.stderr


def test_checkpoint_to_engine_without_torch_says_export_onnx_first(tmp_path):
    checkpoint = default_model_path("checkpoint")
    proc, _ = _cli_without(["export", checkpoint, "--format", "trt", "-o", tmp_path / "engine"], HIDDEN, tmp_path,
                           tensorrt_double=True)
    lines = _errors(proc)
    assert proc.returncode != 0 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"ram-edge export {checkpoint} -o BUNDLE" in lines[0] and "ram-edge export BUNDLE --format trt" in lines[0], lines[0]
    assert not (tmp_path / "engine").exists()


def test_tensorrt_without_a_gpu_says_the_gpu_is_missing(fp32_bundle, tmp_path):
    """TensorRT's Python package present (the double) but the real CUDA library and no GPU: the GPU is what is named."""
    code = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
import trt_double
sys.modules["tensorrt"] = trt_double.module()
from ram_edge.runtimes.cuda_memory import installed_backends
if not installed_backends():
    print("no CUDA library")
    raise SystemExit(0)
from ram_edge.cli.main import main
main(["export", {str(fp32_bundle)!r}, "--format", "trt", "-o", {str(tmp_path / "engine")!r}])
"""
    env = {k: v for k, v in os.environ.items() if k != cuda_memory.BACKEND_ENV}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    if proc.stdout.strip() == "no CUDA library":
        pytest.skip("neither cuda-python nor pycuda is installed here")
    if proc.returncode == 0:
        pytest.skip("a CUDA GPU is present here")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "no usable NVIDIA GPU here" in lines[0] and "nvidia-smi" in lines[0], lines[0]
    assert not (tmp_path / "engine").exists()


@pytest.mark.slow
def test_readme_gpu_steps_in_a_fresh_venv_stop_only_at_tensorrt(tmp_path):
    """`pip install -e '.[ort]'` (no torch), then the README's first TensorRT command: the message names TensorRT."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "-e", f"{REPO}[ort]"], capture_output=True, text=True,
                         timeout=900)
    if pip.returncode:
        pytest.skip(f"cannot install ram-edge[ort] into a fresh venv here: {pip.stderr.strip().splitlines()[-1:]}")
    for args in (["export", default_model_path("bundle_fp32"), "--format", "trt", "-o", tmp_path / "engine"],
                 ["export", default_model_path("bundle"), "--format", "trt", "--precision", "int8", "-o", tmp_path / "engine"]):
        proc = subprocess.run([str(venv / "bin" / "ram-edge"), *map(str, args)], capture_output=True, text=True, timeout=300)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode != 0 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert "tensorrt" in lines[0] and "pip install 'ram-edge[trt]'" in lines[0] and "JetPack" in lines[0], lines[0]
        assert "torch" not in lines[0]
    probe = subprocess.run([str(venv / "bin" / "python"), "-c", "import importlib.util as u; print(u.find_spec('torch') is None)"],
                           capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip() == "True"  # the venv really has no torch


def test_symmetric_conversion_follows_codes_through_a_transpose():
    """Q -> Transpose -> DQ (the INT8 export moves a dequantize down to the reduction it feeds): the DQ gets the
    converted quantizer's scale and zero point too."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from ram_edge.export.tensorrt_qdq import to_symmetric_int8, violations

    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"], name="q"),
             helper.make_node("Transpose", ["xq"], ["xt"], name="t", perm=[1, 0]),
             helper.make_node("DequantizeLinear", ["xt", "s", "zp"], ["y"], name="dq")]
    inits = [numpy_helper.from_array(np.array(0.02, np.float32), "s"), helper.make_tensor("zp", TensorProto.UINT8, [], [60])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.array([[-1.2, 0.0, 0.5], [1.9, -0.3, 3.8]], np.float32)
    converted, report = to_symmetric_int8(model)
    assert violations(converted) == [] and report.activation_quantizers == 1 and report.weight_tensors == 0
    y = ort.InferenceSession(converted.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(y, x.T, atol=(195 * 0.02) / 127 / 2 + 1e-6)  # within half a step of the new scale
