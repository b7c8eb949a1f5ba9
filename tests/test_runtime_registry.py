"""Runtime names: the registered ones, the names users type for them, and a suggestion for a near miss."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ram_edge.cli.main import cli
from ram_edge.errors import RuntimeUnavailableError
from ram_edge.runtimes.registry import canonical_runtime, resolve_runtime

ASSETS = Path(__file__).resolve().parents[1] / "ram_edge" / "assets" / "default_model"


@pytest.mark.parametrize("typed, name", [("ort", "ort"), ("onnxruntime", "ort"), ("OnnxRuntime", "ort"), ("tensorrt", "trt"),
                                         ("TensorRT", "trt"), ("ov", "openvino"), ("pytorch", "torch"), ("auto", "auto")])
def test_aliases_name_the_registered_runtime(typed, name):
    assert canonical_runtime(typed) == name


@pytest.mark.parametrize("typed, suggestion", [("onnxrntime", "onnxruntime"), ("openvno", "openvino"), ("tensort", "tensorrt")])
def test_a_near_miss_is_suggested(typed, suggestion):
    with pytest.raises(RuntimeUnavailableError, match=f"did you mean '{suggestion}'"):
        canonical_runtime(typed)
    with pytest.raises(RuntimeUnavailableError, match="available: auto, trt, ort, openvino, torch"):
        canonical_runtime("tflite")


def test_an_alias_runs_on_the_command_line():
    pytest.importorskip("onnxruntime", reason="the ort extra is needed: pip install 'ram-edge[ort]'")
    image = str(ASSETS / "examples" / "scene-1.png")
    result = CliRunner().invoke(cli, ["tag", "--model", str(ASSETS / "bundle_fp32"), "--runtime", "onnxruntime", "--json", image])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.splitlines()[0])["tags"]
    assert resolve_runtime("onnxruntime", "onnx").name == "ort"
    wrong = CliRunner().invoke(cli, ["tag", "--model", str(ASSETS / "bundle_fp32"), "--runtime", "openvno", image])
    assert wrong.exit_code == 2 and "did you mean 'openvino'" in wrong.output and "Traceback" not in wrong.output
