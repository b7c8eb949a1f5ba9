"""The GPU check scripts on the CPU: benchmarks/gpu_check.py (TensorRT, through tests/trt_double.py) keeps going and
writes its report when steps fail; benchmarks/gpu_torch_check.py (a GPU without TensorRT) runs end to end on the CPU.

The real GPU runs are `python -m ram_edge.benchmarks.gpu_check` and `python -m ram_edge.benchmarks.gpu_torch_check`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import cuda_double
import trt_double
from conftest import run_cli
from ram_edge.benchmarks.harness import CliFailed, markdown_table, step_error

pytest.importorskip("onnxruntime", reason="the double runs engines with onnxruntime: pip install 'ram-edge[ort]'")


def _in_process(*args: str) -> str:
    """`ram-edge ARGS` in this process, failing the way harness.run_cli does (CliFailed)."""
    result = run_cli(*args)
    if result.exit_code:
        last = (result.output.strip().splitlines() or [f"exit code {result.exit_code}"])[-1].removeprefix("error: ")
        raise CliFailed(f"`ram-edge {' '.join(args[:2])}` failed: {last}")
    return result.output


@pytest.fixture
def double(tmp_path, monkeypatch):
    """TensorRT and CUDA replaced by the test double (timing cache in a temporary home)."""
    trt_double.install(monkeypatch, tmp_path / "cache")
    monkeypatch.setattr(trt_double.Builder, "fail_build", False)
    return trt_double


# ---- helpers shared by the scripts ---------------------------------------------------------------

def test_step_error_is_one_line_with_the_type():
    assert step_error(RuntimeError("CUDA out of memory.\n  Tried to allocate 2 GiB")) == \
        "RuntimeError: CUDA out of memory. Tried to allocate 2 GiB"
    assert step_error(KeyError()) == "KeyError"
    assert len(step_error(ValueError("x" * 1000), limit=50)) == 50


def test_markdown_table_marks_missing_cells():
    lines = markdown_table([{"a": 1, "b": 0.5}, {"a": 2, "error": "boom | bang"}], ["a", "b", "error"])
    assert lines[0] == "| a | b | error |"
    assert lines[2] == "| 1 | 0.5 | – |" and lines[3] == "| 2 | – | boom \\| bang |"


# ---- gpu_check (TensorRT) ------------------------------------------------------------------------

def test_gpu_check_no_test_split_falls_back_to_the_examples(monkeypatch, tmp_path):
    """`ram-edge data scenes` failing (no emoji font) raises CliFailed from run_cli; the check goes on without mAP."""
    from ram_edge.benchmarks import gpu_check
    from ram_edge.bundle import read_bundle
    from ram_edge.default_model import default_model_path

    def no_font(*args: str) -> str:
        raise CliFailed("`ram-edge data scenes` failed: the Noto Color Emoji font is not installed")

    monkeypatch.setattr(gpu_check, "sh", no_font)
    assert gpu_check._test_split(tmp_path, 4, read_bundle(default_model_path("bundle_fp32")).preprocess) is None


def test_gpu_check_writes_its_report_when_engine_builds_fail(double, monkeypatch, tmp_path):
    """Every engine build fails (and the full-size checkpoint cannot be made): each failure is a row, the ONNX rows are
    still measured, and the markdown report and its JSON are written."""
    from ram_edge.benchmarks import gpu_check, random_weights

    def no_memory(root: Path, preset: str = random_weights.PRESET) -> Path:
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(double.Builder, "fail_build", True)
    monkeypatch.setattr(gpu_check, "sh", _in_process)
    # The example images, with or without an emoji font here (the fallback has its own test).
    monkeypatch.setattr(gpu_check, "_test_split", lambda *args: None)
    monkeypatch.setattr(random_weights, "build_checkpoint", no_memory)
    report = tmp_path / "report.md"
    status = gpu_check.main(["--workdir", str(tmp_path / "work"), "--report", str(report), "--test-count", "4", "--iters", "2"])
    assert status == 1
    result = json.loads(report.with_suffix(".json").read_text())
    rows = {(r["model"], r["variant"]): r for r in result["accuracy"]}
    assert "error" not in rows["default", "fp32 ONNX (onnxruntime CPU)"]
    assert rows["default", "INT8 ONNX (onnxruntime CPU)"]["agreement_vs_fp32"] > 0
    for variant in ("fp16 engine", "INT8 engine"):
        assert rows["default", variant]["error"].startswith("engine build failed: CliFailed: `ram-edge export"), rows["default", variant]
    assert rows[gpu_check.FULL_SIZE, "random-weight checkpoint"]["error"] == \
        "random-weight checkpoint failed: RuntimeError: CUDA out of memory"
    engine_rows = [r for r in result["speed"] if r["runtime"].startswith("TensorRT")]
    assert len(engine_rows) == 8 and all(r["error"].startswith("skipped: no engine") for r in engine_rows)
    text = report.read_text()
    assert "## Failed steps" in text and "default INT8 engine: engine build failed" in text
    assert "| default | INT8 ONNX (onnxruntime CPU) |" in text
    assert result["environment"]["gpu"] == cuda_double.NAME


def test_gpu_check_default_model_with_engines(double, monkeypatch, tmp_path):
    """With the builds working, every default-model row is measured and the report has no failed accuracy step."""
    from ram_edge.benchmarks import gpu_check

    monkeypatch.setattr(gpu_check, "sh", _in_process)
    rows = gpu_check.check_default_model(tmp_path, test_count=4)
    assert [r["variant"] for r in rows] == ["fp32 ONNX (onnxruntime CPU)", "INT8 ONNX (onnxruntime CPU)", "fp16 engine", "INT8 engine"]
    assert not any("error" in r for r in rows), rows
    # The double runs each engine's own ONNX: the fp16 engine equals fp32.
    assert rows[2]["max_abs_diff_vs_fp32"] == 0.0
    result = {"environment": {"gpu": "double"}, "date": "2026-11-30", "command": "test", "seconds": 1.0, "accuracy": rows,
              "speed": [], "verdicts": gpu_check.verdicts(rows, [])}
    assert gpu_check.failures(result) == []
    gpu_check.write_report(tmp_path / "r.md", result)
    assert "## Failed steps\n\n- none" in (tmp_path / "r.md").read_text()


# ---- gpu_torch_check (a GPU without TensorRT) ----------------------------------------------------

def test_gpu_torch_check_help_needs_no_cuda():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "ram_edge.benchmarks.gpu_torch_check", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "--no-full-size" in proc.stdout and "--device" in proc.stdout


def test_gpu_torch_check_pure_helpers():
    import argparse

    from ram_edge.benchmarks import gpu_torch_check as g

    assert [g.device_arg(d) for d in ("cpu", "CUDA", "cuda:1")] == ["cpu", "cuda", "cuda:1"]
    with pytest.raises(argparse.ArgumentTypeError, match="cpu, cuda or cuda:N"):
        g.device_arg("gpu")
    assert [g.device_index(d) for d in ("cpu", "cuda", "cuda:3")] == [None, 0, 3]
    reference = np.array([[0.9, 0.1, 0.6], [0.2, 0.8, 0.3]], np.float32)
    probs = np.array([[0.9, 0.1, 0.4], [0.2, 0.8, 0.3]], np.float32)
    result = g.compare(reference, probs, lambda p: p > 0.5)
    # Image 1 loses one of its two tags: F1 2/3; image 2 agrees: F1 1.
    assert result["max_abs_diff"] == pytest.approx(0.2) and result["tag_f1"] == pytest.approx((2 / 3 + 1) / 2)
    with pytest.raises(ValueError, match="cannot be compared"):
        g.compare(reference, probs[:1], lambda p: p > 0.5)
    assert g.latency([0.004, 0.002, 0.003], batch=2) == {"ms_per_batch": 3.0, "ms_per_image": 1.5, "img_s": pytest.approx(666.67, 0.01),
                                                         "ms_min": 2.0}
    with pytest.raises(ValueError, match="--iters"):
        g.latency([], batch=1)
    assert g.batch_of(np.arange(3)[:, None], 8)[:, 0].tolist() == [0, 1, 2, 0, 1, 2, 0, 1]


def test_gpu_torch_check_report_names_failures_and_the_unmeasured_engine(tmp_path):
    from ram_edge.benchmarks import gpu_torch_check as g

    result = {"date": "2026-12-01", "command": "test", "iters": 3, "warmup": 1, "seconds": 2.0,
              "environment": {"device": "cuda", "gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "errors": []},
              "accuracy": [{"model": "default", "variant": "model.half(), cuda, fp16", "error": "running failed: RuntimeError: x"}],
              "speed": [], "training": {"device": "cuda:0", "error": "losses [nan] are not 1 finite values"},
              "memory": {"backends": {"cuda-python": [{"check": "stream handle", "ok": False, "error": "stream handle failed: y"}]}}}
    assert len(g.failures(result)) == 3
    g.write_report(tmp_path / "r.md", result)
    text = (tmp_path / "r.md").read_text()
    assert "TensorRT engine itself stays unmeasured" in text and "NVIDIA H100 80GB HBM3 (compute capability 9.0" in text
    assert "- memory layer (cuda-python): stream handle: stream handle failed: y" in text and "### cuda-python" in text
    assert json.loads((tmp_path / "r.json").read_text())["training"]["device"] == "cuda:0"


def test_gpu_torch_check_runs_end_to_end_on_the_cpu(monkeypatch, tmp_path):
    """--device cpu with tiny counts: every row measured, and without a CUDA driver the memory layer says skipped, and why."""
    pytest.importorskip("torch", reason="the torch runtime and the trainer need the train extra: pip install 'ram-edge[train]'")
    from ram_edge.benchmarks import gpu_torch_check as g

    def no_driver():
        raise OSError("libcuda.so.1: cannot open shared object file: No such file or directory")

    monkeypatch.setattr(g, "_libcuda", no_driver)
    report = tmp_path / "out" / "check.md"
    status = g.main(["--device", "cpu", "--no-full-size", "--report", str(report), "--workdir", str(tmp_path / "work"),
                     "--images", "3", "--iters", "1", "--warmup", "0", "--train-steps", "1", "--memory-iters", "2"])
    result = json.loads(report.with_suffix(".json").read_text())
    assert status == 0, result["failed"]
    assert [r["variant"] for r in result["accuracy"]] == ["torch runtime, cpu, fp32 (the reference)", "torch runtime, cpu, fp32",
                                                          "model.half(), cpu, fp16"]
    fp32, fp16 = result["accuracy"][1:]
    assert fp32["max_abs_diff"] == 0.0 and fp32["tag_f1"] == 1.0 and fp32["images"] == 3
    assert 0 < fp16["max_abs_diff"] < 0.05
    assert [(r["variant"].split(",")[0], r["batch"]) for r in result["speed"]] == \
        [("torch runtime", 1), ("torch runtime", 8), ("model.half()", 1), ("model.half()", 8)]
    assert all(r["ms_per_image"] > 0 for r in result["speed"])
    training = result["training"]
    assert training["device"] == "cpu" and training["amp"] is False and training["params_changed"] > 0
    assert len(training["losses"]) == 1 and np.isfinite(training["losses"][0])
    assert result["memory"] == {"skipped": "no CUDA driver: libcuda could not be loaded "
                                           "(libcuda.so.1: cannot open shared object file: No such file or directory)"}
    text = report.read_text()
    assert "Skipped: no CUDA driver: libcuda could not be loaded" in text and "## Failed steps\n\n- none" in text
    assert "TensorRT engine itself stays unmeasured" in text and "python -m ram_edge.benchmarks.gpu_torch_check --device cpu" in text


@pytest.fixture(params=["cuda-python", "pycuda"])
def fake_cuda(request, monkeypatch):
    """ram-edge's real memory layer for one library, over the CUDA test double (tests/cuda_double.py)."""
    from ram_edge.runtimes.cuda_memory import open_cuda

    gpu = cuda_double.reset()
    for name, module in cuda_double.modules(request.param).items():
        monkeypatch.setitem(sys.modules, name, module)
    memory = open_cuda(0, request.param)
    yield memory, gpu
    memory.close()


def test_gpu_torch_check_memory_checks_on_the_cuda_double(fake_cuda):
    """The memory-layer checks drive the real CudaPythonMemory / PyCudaMemory (over the double, whose copies happen only
    at synchronize): all pass, and every buffer and stream is released."""
    from ram_edge.benchmarks import gpu_torch_check as g

    memory, gpu = fake_cuda
    rows = g.memory_checks(memory, iterations=3, nbytes=64, torch_device=None)
    assert [r["check"] for r in rows] == ["device", "device buffer alloc/free", "page-locked host alloc/free", "round trip on a stream",
                                          "buffer reuse, 3 iterations", "alloc/free, 3 cycles", "stream handle", "release"]
    assert all(r["ok"] for r in rows), rows
    assert rows[0]["detail"].startswith(cuda_double.NAME) and rows[-2]["detail"].endswith("the raw cudaStream_t")
    assert (gpu.blocks, gpu.streams_live) == ({}, 0)


class _AddressNotHandle:
    """A memory layer whose stream_handle gives cuda-python's getPtr(): where the handle is stored, not the handle."""

    def __init__(self, memory) -> None:
        self._memory = memory

    def __getattr__(self, name):
        return getattr(self._memory, name)

    def stream_handle(self, stream) -> int:
        return stream.getPtr()


def test_gpu_torch_check_catches_a_stream_handle_that_is_not_the_stream(monkeypatch):
    from ram_edge.benchmarks import gpu_torch_check as g
    from ram_edge.runtimes.cuda_memory import open_cuda

    cuda_double.reset()
    for name, module in cuda_double.modules("cuda-python").items():
        monkeypatch.setitem(sys.modules, name, module)
    memory = open_cuda(0, "cuda-python")
    rows = {r["check"]: r for r in g.memory_checks(_AddressNotHandle(memory), iterations=1, nbytes=16, torch_device=0)}
    assert rows["round trip on a stream"]["ok"] and not rows["stream handle"]["ok"]
    assert "but the raw cudaStream_t is 0x5a5a" in rows["stream handle"]["error"]
    # The wrong handle is never given to torch (a bogus stream can crash the process).
    assert rows["torch work on the handle (ExternalStream)"]["error"].startswith("skipped: the stream handle is wrong")


def test_gpu_torch_check_memory_child_failures_are_rows(monkeypatch):
    import subprocess

    from ram_edge.benchmarks import gpu_torch_check as g

    # A real child: an unknown library is refused by open_cuda and comes back as a row.
    rows = g._child_rows("no-such-library", 0, 1, 16, timeout=120)
    assert rows[0]["check"] == "open_cuda" and not rows[0]["ok"] and "unknown CUDA library 'no-such-library'" in rows[0]["error"]

    def crashed(command, **kwargs):
        return subprocess.CompletedProcess(command, -11, "", "Fatal Python error: Segmentation fault\n")

    monkeypatch.setattr(subprocess, "run", crashed)
    assert g._child_rows("cuda-python", 0, 1, 16, timeout=120) == [
        {"check": "child process", "ok": False, "error": "killed by signal 11: Fatal Python error: Segmentation fault"}]
