"""`ram-edge bench` and the benchmark harness, on the tiny converted golden models."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import run_cli
from ram_edge.benchmarks.harness import matmul_roofline, run_benchmark, write_markdown_report
from ram_edge.cli.main import cli
from ram_edge.errors import RamEdgeError

needs_torch = pytest.mark.skipif(
    __import__("importlib").util.find_spec("torch") is None,
    reason="the torch extra is needed: pip install 'ram-edge[torch]'",
)


def _bench(*args):
    return run_cli("bench", *args)


def _check_result(result: dict, *, batch_size: int, iters: int) -> None:
    batch, image = result["latency_batch_ms"], result["latency_image_ms"]
    assert 0 < batch["min"] <= batch["p50"] <= batch["p90"] <= batch["p99"]
    assert batch["min"] <= batch["mean"] <= batch["p99"]
    assert image["p50"] <= image["p90"] <= image["p99"]
    assert image["p50"] == pytest.approx(batch["p50"] / batch_size)
    assert result["throughput_img_s"] > 0
    # Throughput and mean latency describe the same timed calls.
    assert result["throughput_img_s"] == pytest.approx(batch_size * 1e3 / batch["mean"], rel=1e-6)
    assert result["batch_size"] == batch_size and result["iters"] == iters
    assert result["runtime"] == "torch" and result["device"] == "cpu"
    assert result["num_tags"] == 4585 and result["image_size"] == 224
    assert result["format"] == "checkpoint" and result["family"] == "ram" and result["precision"] == "fp32"
    assert result["compute_precision"] == "fp32"
    assert result["load_time_s"] > 0 and result["first_run_ms"] > 0
    assert result["peak_rss_mb"] > 0 and result["model_size_mb"] > 0
    if result["rss_after_load_mb"] is not None:
        assert result["peak_rss_mb"] >= result["rss_after_load_mb"] > 0
    machine = result["machine"]
    assert machine["cores"] >= 1 and machine["python"] and machine["cpu"]
    assert machine["runtime_package"] == "torch" and machine["runtime_version"]
    assert "T" in result["timestamp"]


@needs_torch
def test_bench_json(converted_golden):
    result = _bench(converted_golden["ram_tiny"], "--runtime", "torch", "--iters", 3, "--warmup", 1, "--batch-size", 2, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    _check_result(data, batch_size=2, iters=3)
    assert data["warmup"] == 1 and data["threads"] is None and data["input"] == "random"
    assert data["model"] == str(converted_golden["ram_tiny"])


@needs_torch
def test_bench_images_and_human_output(converted_golden, tmp_path):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(images / "a.png")
    Image.fromarray(np.arange(48 * 64, dtype=np.uint8).reshape(48, 64) % 251, "L").save(images / "b.png")
    # Three slots, two images: the harness cycles them.
    result = _bench(converted_golden["ram_tiny"], "--runtime", "torch", "--iters", 1, "--warmup", 0,
                    "--batch-size", 3, "--images", images, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    _check_result(data, batch_size=3, iters=1)
    assert data["input"] == str(images)

    result = _bench(converted_golden["ram_tiny"], "--runtime", "torch", "--iters", 1, "--warmup", 0, "--threads", 1)
    assert result.exit_code == 0, result.output
    labels = [line.split()[0] for line in result.stdout.splitlines()]
    assert labels == ["model", "runtime", "load", "per", "per", "throughput", "peak", "size"]
    assert "threads 1" in result.stdout and "img/s" in result.stdout


@needs_torch
def test_bench_images_dir_without_images(converted_golden, tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    result = _bench(converted_golden["ram_tiny"], "--runtime", "torch", "--images", tmp_path, "--iters", 1)
    assert result.exit_code == 2
    assert result.stderr.startswith("error: no image files found in")


def test_unknown_runtime_lists_valid_ones(converted_golden):
    result = _bench(converted_golden["ram_tiny"], "--runtime", "tflite", "--iters", 1)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "tflite" in lines[0]
    for name in ("auto", "torch", "ort", "openvino"):
        assert name in lines[0]
    assert result.stdout == ""


@pytest.mark.parametrize("kwargs", [{"iters": 0}, {"batch_size": 0}, {"warmup": -1}, {"threads": 0}])
def test_run_benchmark_rejects_bad_counts(kwargs, tmp_path):
    with pytest.raises(RamEdgeError, match=next(iter(kwargs))):
        run_benchmark(tmp_path, **kwargs)


def _row(runtime, device, p50, **extra):
    return {
        "runtime": runtime, "device": device, "precision": "fp32", "compute_precision": "fp32", "batch_size": 4,
        "latency_batch_ms": {"p50": p50, "p90": p50 * 1.1, "p99": p50 * 1.2, "mean": p50, "min": p50 * 0.9},
        "latency_image_ms": {"p50": p50 / 4, "p90": p50 * 1.1 / 4, "p99": p50 * 1.2 / 4},
        "throughput_img_s": 4000 / p50, "load_time_s": 1.5, "peak_rss_mb": 812.4, "model_size_mb": 3.2,
        "machine": {"cpu": "AMD EPYC 7B13", "cores": 2, "platform": "Linux-x86_64", "python": "3.11.7"},
        **extra,
    }


def test_write_markdown_report(tmp_path):
    rows = [
        _row("torch", "cpu", 123.456, macs_per_image=4.5e9, queries=4585),
        _row("ort", "cpu|fast", 61.0, macs_per_image=4.5e9, pct_of_roofline=37.25),
    ]
    out = tmp_path / "reports" / "bench.md"
    write_markdown_report(rows, out, "CPU latency", notes="Random input, 2 threads.")
    text = out.read_text()
    lines = text.splitlines()
    assert lines[0] == "# CPU latency"
    assert any(line.startswith("Machine: AMD EPYC 7B13, 2 cores") for line in lines)
    assert any(line.startswith("Date: ") for line in lines)
    table = [line for line in lines if line.startswith("|")]
    assert len(table) == 2 + len(rows)
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header[:11] == ["runtime", "device", "precision", "compute", "batch", "p50 ms/batch", "p50 ms/image",
                           "img/s", "load s", "peak RSS MB", "size MB"]
    assert header[11:] == ["MACs/image", "queries", "% of roofline"]
    assert table[2].startswith("| torch | cpu | fp32 | fp32 | 4 | 123 | 30.86 | 32.40 | 1.50 | 812 | 3.20 | 4.50 G | 4585 | – |")
    # A pipe inside a value is escaped so that the row keeps its columns.
    assert "cpu\\|fast" in table[3] and table[3].rstrip().endswith("| – | 37.25 |")
    assert text.rstrip().endswith("Random input, 2 threads.")
    assert not [p for p in out.parent.iterdir() if p.name != "bench.md"]  # no temporary file left


def test_harness_import_does_not_import_torch():
    code = "import sys, ram_edge.benchmarks.harness, ram_edge.cli.bench; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@needs_torch
def test_matmul_roofline_is_positive():
    assert matmul_roofline(threads=1, n=64, repeats=2) > 0


# ---- side by side: `ram-edge bench A B [C ...]` ---------------------------------------------------

def test_side_by_side_rounds_alternate_and_speedups_are_against_the_first():
    from ram_edge.benchmarks.side_by_side import bench_side_by_side, interleaved_order, table_lines

    assert interleaved_order(3, 2) == [(0, 0), (0, 1), (0, 2), (1, 2), (1, 1), (1, 0)]
    ran: list[str] = []
    latency = {"a": [10.0, 12.0], "b": [5.0, 4.0], "c": []}

    def measure(model, runtime, options):
        ran.append(model)
        if model == "c":
            return {"error": "runtime 'openvino' is not installed"}
        value = latency[model][sum(1 for m in ran if m == model) - 1]
        return {"latency_image_ms": {"p50": value}, "runtime": runtime, "precision": "int8", "compute_precision": "int8",
                "batch_size": 1, "model_size_mb": 2.5}

    rows = bench_side_by_side([("a", "ort"), ("b", "openvino"), ("c", "openvino")], rounds=2, measure=measure, progress=False)
    assert ran == ["a", "b", "c", "c", "b", "a"]
    assert rows[0]["ms_per_image"] == 11.0 and rows[0]["speedup_vs_first"] == 1.0
    assert rows[1]["ms_per_image"] == 4.5 and rows[1]["speedup_vs_first"] == pytest.approx(11.0 / 4.5)
    assert rows[1]["round_spread"] == pytest.approx(1.0 / 4.5)
    assert rows[2]["ms_per_image"] is None and "not installed" in rows[2]["error"]
    lines = table_lines(rows)
    assert "2.44x" in lines[2] and "failed: runtime 'openvino' is not installed" in lines[3]
    with pytest.raises(RamEdgeError, match="two or more"):
        bench_side_by_side([("a", "ort")], measure=measure, progress=False)


def test_bench_two_models_side_by_side_on_the_command_line():
    pytest.importorskip("onnxruntime", reason="the ort extra is needed: pip install 'ram-edge[ort]'")
    from ram_edge.default_model import default_model_path

    fp32, int8 = default_model_path("bundle_fp32"), default_model_path("bundle")
    result = CliRunner().invoke(cli, ["bench", str(fp32), f"{int8}@onnxruntime", "--iters", "2", "--warmup", "0", "--rounds", "1",
                                      "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout.strip().splitlines()[-1])["rows"]
    assert [r["runtime"] for r in rows] == ["ort", "ort"] and [r["precision"] for r in rows] == ["fp32", "int8"]
    assert rows[0]["speedup_vs_first"] == 1.0 and rows[1]["speedup_vs_first"] > 0 and rows[1]["compute_precision"] == "int8"
    one = CliRunner().invoke(cli, ["bench", f"{int8}@ort", "--iters", "2", "--warmup", "0", "--json"])
    assert one.exit_code == 0 and json.loads(one.stdout.strip().splitlines()[-1])["runtime"] == "ort", one.output
    refused = CliRunner().invoke(cli, ["bench", str(fp32), "--rounds", "3"])
    assert refused.exit_code == 2 and "--rounds: only with two or more models" in refused.output
