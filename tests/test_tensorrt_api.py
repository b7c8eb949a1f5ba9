"""Every TensorRT call ram-edge makes, checked against NVIDIA's TensorRT 10 API stubs (tensorrt-stubs) with mypy.

TensorRT cannot be installed on the CPU machines; ../shared/tools/trt_api_check.py installs the stubs
(and mypy where absent) and reports calls that do not exist in the real API or are called wrongly.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import shared_dir

REPO = Path(__file__).resolve().parents[1]
# The engine builder, the trt runtime and its CUDA memory layer, and the GPU check script.
FILES = ["export/tensorrt_format.py", "runtimes/tensorrt_runtime.py", "runtimes/cuda_memory.py", "runtimes/tensorrt_version.py",
         "benchmarks/gpu_check.py"]


@pytest.mark.slow
def test_tensorrt_calls_match_the_tensorrt_10_api():
    tool = shared_dir() / "tools" / "trt_api_check.py"
    if not tool.is_file():
        pytest.skip(f"{tool} not found: the API check lives in ../shared/tools (set RAM_EDGE_SHARED to the folder holding it)")
    proc = subprocess.run([sys.executable, str(tool), *FILES], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"0 error(s) in {len(FILES)} file(s)" in proc.stdout
