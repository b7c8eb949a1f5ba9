"""Real TensorRT on an NVIDIA GPU: fp16 and INT8 engines of the shipped default model against onnxruntime.

Skipped (with the reason) where TensorRT or a GPU is missing; the CPU tests of the same code use the
test double in test_tensorrt.py. The full GPU check is `python -m ram_edge.benchmarks.gpu_check`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ram_edge.bundle import read_bundle
from ram_edge.default_model import default_model_path

EXAMPLES = Path(__file__).resolve().parents[1] / "ram_edge" / "assets" / "default_model" / "examples"


def _why_not() -> str | None:
    """Why the real-TensorRT tests cannot run here (None when they can)."""
    from ram_edge.runtimes.tensorrt_runtime import TensorRTRuntime

    if not TensorRTRuntime.is_installed():
        return f"TensorRT is not usable here: {TensorRTRuntime.install_hint()}"
    if not TensorRTRuntime.available_devices():
        return "no NVIDIA GPU visible"
    return None


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("kind, precision", [("bundle_fp32", "fp16"), ("bundle", "int8")])
def test_real_tensorrt_engine_matches_onnxruntime(kind, precision, tmp_path):
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    from ram_edge import Tagger
    from ram_edge.export.tensorrt_format import TrtBuildOptions, build_trt_bundle

    source = default_model_path(kind)
    if read_bundle(source, verify=False).precision != ("int8" if precision == "int8" else "fp32"):
        pytest.skip(f"the shipped {kind} is not the {precision} engine's source")
    images = sorted(EXAMPLES.glob("*.png"))
    with Tagger.load(source, runtime="ort") as reference:
        expected = [{t.tag for t in r.tags} for r in reference.tag(images)]
    manifest = build_trt_bundle(source, tmp_path / precision, TrtBuildOptions(precision=precision, max_batch=8, opt_batch=8))
    assert manifest["validation"]["max_abs_diff"] <= manifest["validation"]["tolerance"]
    with Tagger.load(tmp_path / precision, runtime="trt") as tagger:
        got = [{t.tag for t in r.tags} for r in tagger.tag(images)]
    agreement = np.mean([len(a & b) / max(1, len(a | b)) for a, b in zip(got, expected)])
    assert agreement > 0.9, f"tag sets of the {precision} engine agree {agreement:.3f} with onnxruntime"
