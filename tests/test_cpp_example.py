"""examples/cpp: a C++ host that embeds Python, decodes images itself (stb_image) and tags its own pixel
buffers through `Tagger.tag_pixels`; built with CMake and run here, against `ram-edge tag`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "ram_edge" / "assets" / "default_model" / "examples"


def _why_not() -> str | None:
    for tool in ("cmake", "g++"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt install cmake g++)"
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").is_file():
        return "the Python headers are not installed (apt install python3-dev)"
    if not any(Path(d, "stb_image.h").is_file() for d in ("/usr/include/stb", "/usr/include", "/usr/local/include/stb")):
        return "stb_image.h is not installed (apt install libstb-dev)"
    return None


@pytest.fixture(scope="module")
def binary(tmp_path_factory) -> Path:
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    pytest.importorskip("onnxruntime", reason="the example tags with the default ONNX bundle: pip install 'ram-edge[ort]'")
    build = tmp_path_factory.mktemp("cpp-build")
    for args in (["cmake", "-S", str(REPO / "examples" / "cpp"), "-B", str(build), f"-DPython3_EXECUTABLE={sys.executable}"],
                 ["cmake", "--build", str(build)]):
        proc = subprocess.run(args, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return build / "ram_edge_tag"


def _env() -> dict[str, str]:
    return {**os.environ, "RAM_EDGE_PYTHON": sys.executable}


@pytest.mark.slow
def test_cpp_host_prints_what_ram_edge_tag_prints(binary):
    images = [str(p) for p in sorted(EXAMPLES.glob("*.png"))]
    expected = subprocess.run([sys.executable, "-m", "ram_edge.cli.main", "tag", *images], capture_output=True, text=True)
    assert expected.returncode == 0, expected.stderr
    for extra in ([], ["--bgr"], ["--threads", "3"], ["--bgr", "--threads", "4"]):
        got = subprocess.run([str(binary), *extra, *images], capture_output=True, text=True, env=_env(), timeout=300)
        assert got.returncode == 0, got.stderr
        assert got.stdout == expected.stdout, extra


@pytest.mark.slow
def test_cpp_host_reports_bad_input(binary, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    good = str(EXAMPLES / "scene-4.png")
    proc = subprocess.run([str(binary), good, str(bad), str(tmp_path / "missing.png")], capture_output=True, text=True, env=_env())
    assert proc.returncode == 1
    assert proc.stdout.startswith(good + ": ") and len(proc.stdout.splitlines()) == 1
    assert "broken.jpg: cannot decode" in proc.stderr and "missing.png: cannot decode" in proc.stderr and "2 of 3" in proc.stderr
    no_model = subprocess.run([str(binary), "--model", str(tmp_path / "nothing"), good], capture_output=True, text=True, env=_env())
    assert no_model.returncode == 2 and "does not exist" in no_model.stderr and "Traceback" not in no_model.stderr
