"""End-to-end `ram-edge tag` through the CLI on the converted golden models."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import GOLDEN, require_shared, run_cli

pytest.importorskip("torch", reason="the torch extra is needed: pip install 'ram-edge[torch]'")


def _invoke(*args):
    return run_cli("tag", *args)


@pytest.mark.parametrize("name", GOLDEN)
def test_tag_json_matches_official_tags(converted_golden, name, tmp_path):
    golden = require_shared("golden", name)
    expected = json.loads((golden / "tags.json").read_text())
    images = [golden / "images" / f for f in expected["images"]]
    scores = tmp_path / "scores.npy"
    result = _invoke(*images, "--model", converted_golden[name], "--runtime", "torch", "--json", "--chinese",
                     "--scores-out", scores, "--batch-size", "3")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["image"] for line in lines] == [str(p) for p in images]
    tags = (golden / "ram_tag_list.txt").read_text().splitlines()
    zh = (golden / "ram_tag_list_chinese.txt").read_text().splitlines()
    for line, indices in zip(lines, expected["tag_indices"]):
        got = [t["tag"] for t in line["tags"]]
        assert sorted(got) == sorted(tags[i] for i in indices)
        assert [t["score"] for t in line["tags"]] == sorted((t["score"] for t in line["tags"]), reverse=True)
        assert [t["zh"] for t in line["tags"]] == [zh[tags.index(g)].strip() for g in got]
    probs = np.load(scores)
    ref = np.load(golden / "outputs.npz")["probs"]
    assert probs.dtype == np.float32 and probs.shape == ref.shape
    assert np.abs(probs - ref).max() <= 1e-5


def test_bad_image_is_reported_and_others_tagged(converted_golden, tmp_path):
    golden = require_shared("golden", "ram_tiny")
    good = golden / "images" / "demo2.jpg"
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(good.read_bytes()[:2000])
    notimage = tmp_path / "notes.png"
    notimage.write_text("hello")
    result = _invoke(good, broken, notimage, "--model", converted_golden["ram_tiny"], "--json", "--scores-out", tmp_path / "s.npy")
    assert result.exit_code == 1
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [sorted(line) for line in lines] == [["image", "tags"], ["error", "image"], ["error", "image"]]
    assert "broken.jpg" in lines[1]["error"] and "notes.png" in lines[2]["error"]
    probs = np.load(tmp_path / "s.npy")
    assert np.isfinite(probs[0]).all() and np.isnan(probs[1:]).all()
    human = _invoke(good, broken, "--model", converted_golden["ram_tiny"])
    assert human.exit_code == 1
    assert str(good) in human.stdout and "broken.jpg" in human.stderr


def test_directory_threshold_and_top_k(converted_golden, tmp_path):
    golden = require_shared("golden", "ram_tiny")
    folder = tmp_path / "photos" / "sub"
    folder.mkdir(parents=True)
    for f in ("demo2.jpg", "demo4.jpg"):
        shutil.copy(golden / "images" / f, folder / f)
    result = _invoke(tmp_path / "photos", "--model", converted_golden["ram_tiny"], "--json", "--threshold", "0.5", "--top-k", "3")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["image"] for line in lines] == [str(folder / "demo2.jpg"), str(folder / "demo4.jpg")]
    for line in lines:
        assert 1 <= len(line["tags"]) <= 3 and all(t["score"] > 0.5 for t in line["tags"])


def test_missing_model_is_one_line_error(tmp_path):
    golden = require_shared("golden", "ram_tiny")
    result = _invoke(golden / "images" / "demo2.jpg", "--model", tmp_path / "nope")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and "nope" in result.stderr and "Traceback" not in result.output


def test_unavailable_device_lists_available(converted_golden):
    golden = require_shared("golden", "ram_tiny")
    result = _invoke(golden / "images" / "demo2.jpg", "--model", converted_golden["ram_tiny"], "--runtime", "torch", "--device", "npu")
    assert result.exit_code == 2 and "available: cpu" in result.stderr


def test_tagger_api_accepts_paths_pil_and_arrays(converted_golden):
    from PIL import Image

    from ram_edge import Tagger

    golden = require_shared("golden", "ram_tiny")
    path = golden / "images" / "demo4.jpg"
    tagger = Tagger.load(converted_golden["ram_tiny"], runtime="torch")
    pil = Image.open(path)
    array = np.asarray(pil.convert("RGB"))
    by_path, by_pil, by_array = tagger.tag([path, pil, array])
    assert by_path.tags == by_pil.tags == by_array.tags and by_path.tags
    assert by_path.image == str(path) and by_pil.image is None


def test_core_import_does_not_load_torch_or_onnx():
    import subprocess
    import sys

    code = (
        "import sys, ram_edge; from ram_edge import Tagger; import ram_edge.cli.main, ram_edge.runtimes, "
        "ram_edge.labels, ram_edge.preprocess, ram_edge.artifacts, ram_edge.checkpoint_dir, ram_edge.stream, ram_edge.batching, "
        "ram_edge.cli.watch, ram_edge.runtimes.tensorrt_runtime, ram_edge.runtimes.cuda_memory;"
        "bad = [m for m in ('torch', 'onnx', 'onnxruntime', 'openvino', 'nncf') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
