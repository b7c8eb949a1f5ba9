"""`ram-edge bench --suite`: a micro-model suite end to end on CPU (report, JSON, plots), and a failing
cell reported as a row without stopping the others."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch", reason="the suite makes its bundles with `ram-edge export`: pip install 'ram-edge[export]'")
pytest.importorskip("onnxruntime")

from conftest import micro_model  # noqa: E402
from ram_edge.cli.main import cli  # noqa: E402


def _micro_model(depths: list[int]):
    """A random-weight micro RAM (32 px, window 4, a one-layer decoder, 12 tags) and its label set."""
    return micro_model(tags=12, depths=depths, decoder_layers=1, label_embed_dim=16)


@pytest.fixture(scope="module")
def micro_checkpoint(micro_checkpoint_factory) -> Path:
    return micro_checkpoint_factory(tags=12, decoder_layers=1, label_embed_dim=16, source={"kind": "test"})


def _suite(tmp_path: Path, checkpoint: Path, **fields) -> Path:
    data = {"name": "micro", "models": [{"name": "micro", "source": str(checkpoint), "tags": ["all", 4]}],
            "rounds": 1, "iters": 2, "warmup": 0, "threads": 1, "roofline": False, **fields}
    path = tmp_path / "suite.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.slow
def test_suite_runs_end_to_end_and_writes_report_and_plots(micro_checkpoint, tmp_path):
    suite = _suite(tmp_path, micro_checkpoint, runtimes=["ort", "torch"], batches=[1, 2], rounds=2)
    result = CliRunner().invoke(cli, ["bench", "--suite", str(suite), "-o", str(tmp_path / "reports"), "--workdir", str(tmp_path / "work")])
    assert result.exit_code == 0, result.output
    reports = sorted((tmp_path / "reports").glob("*.md"))
    assert len(reports) == 1 and "-micro-" in reports[0].name
    data = json.loads(reports[0].with_suffix(".json").read_text())
    rows = {(r["runtime"], r["batch"], r["tags"]): r for r in data["rows"]}
    # torch runs the checkpoint's whole label set only: no subset cells for it.
    assert set(rows) == {("ort", 1, "all"), ("ort", 2, "all"), ("ort", 1, 4), ("ort", 2, 4), ("torch", 1, "all"), ("torch", 2, "all")}
    for row in rows.values():
        assert row["ms_per_image"] > 0 and len(row["rounds"]) == 2 and row["round_spread_pct"] is not None
        assert row["accuracy"]["max_abs_diff"] < 1e-3 and row["size_mb"] > 0
    assert rows[("ort", 1, 4)]["num_tags"] == 4 and rows[("ort", 1, "all")]["num_tags"] == 12
    assert rows[("ort", 1, "all")]["cold_start_s"] > 0 and "cold_start_s" not in rows[("ort", 2, "all")]
    assert data["plots"] and all((tmp_path / "reports" / name).is_file() for name in data["plots"])
    assert any(name.endswith("-batch.png") for name in data["plots"]) and any(name.endswith("-speedup.png") for name in data["plots"])
    text = reports[0].read_text()
    assert "| micro | ort | fp32 |" in text and "![" in text and "noise" in text
    assert "no earlier run of this suite" in text and data["reproduction"] is None
    # The same command again: the report says how far the two runs are apart, cell by cell.
    first = {f"micro/{r['runtime']}/fp32/b{r['batch']}/{r['tags']}": r["ms_per_image"] for r in data["rows"]}
    result = CliRunner().invoke(cli, ["bench", "--suite", str(suite), "-o", str(tmp_path / "reports"), "--workdir", str(tmp_path / "work")])
    assert result.exit_code == 0, result.output
    again = json.loads(reports[0].with_suffix(".json").read_text())["reproduction"]
    assert again["previous"] == reports[0].with_suffix(".json").name and len(again["cells"]) == len(first)
    for cell in again["cells"]:
        assert cell["previous_ms"] == first[cell["cell"]]
        assert cell["diff_pct"] == pytest.approx(100 * abs(cell["ms"] - cell["previous_ms"]) / min(cell["ms"], cell["previous_ms"]))
    assert again["largest_pct"] == max(c["diff_pct"] for c in again["cells"])
    assert "Reproduction: against the previous run" in reports[0].read_text()


@pytest.mark.slow
def test_a_failing_cell_is_a_row_and_the_rest_still_run(micro_checkpoint, tmp_path):
    suite = _suite(tmp_path, micro_checkpoint, runtimes=["ort", "trt"], precisions=["fp16"], cold_start=False)
    result = CliRunner().invoke(cli, ["bench", "--suite", str(suite), "-o", str(tmp_path / "reports"), "--workdir", str(tmp_path / "work"),
                                      "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout.strip().splitlines()[-1])["rows"]
    by_runtime = {}
    for row in rows:
        by_runtime.setdefault(row["runtime"], []).append(row)
    assert all(r.get("ms_per_image") for r in by_runtime["ort"])
    assert all(r.get("error") and "TensorRT" in r["error"] for r in by_runtime["trt"])
    report = next((tmp_path / "reports").glob("*.md")).read_text()
    assert "| micro | trt | fp16 |" in report


def test_suite_config_errors(tmp_path):
    from ram_edge.benchmarks.suite import SuiteConfig
    from ram_edge.errors import ConfigError

    for bad, needle in (({"name": "x", "models": []}, "at least one model"),
                        ({"name": "x", "models": [{"name": "m", "source": "default"}], "runtimes": ["tflite"]}, "unknown runtime"),
                        ({"name": "x", "models": [{"name": "m", "source": "default", "tags": [0]}]}, "tag count"),
                        ({"name": "x", "models": [{"name": "m", "source": "default"}], "batches": [0]}, "batches"),
                        ({"name": "x", "models": [{"name": "m", "source": "default"}], "colour": "red"}, "unknown field")):
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(bad))
        with pytest.raises(ConfigError, match=needle):
            SuiteConfig.load(path)
    result = CliRunner().invoke(cli, ["bench", "--suite", str(path), "some-model"])
    assert result.exit_code == 2 and "not both" in result.output
    # Options that one mode would ignore are refused, not dropped in silence.
    result = CliRunner().invoke(cli, ["bench", "--suite", str(path), "--runtime", "ort", "--batch-size", "8"])
    assert result.exit_code == 2 and "--runtime, --batch-size: not with --suite" in result.output
    result = CliRunner().invoke(cli, ["bench", "some-model", "-o", str(tmp_path / "out.json")])
    assert result.exit_code == 2 and "--output: only with --suite" in result.output
    assert not (tmp_path / "out.json").exists()
    # A report folder that cannot be made is said before hours of cells, not after.
    path.write_text(json.dumps({"name": "x", "models": [{"name": "m", "source": "default"}]}))
    result = CliRunner().invoke(cli, ["bench", "--suite", str(path), "-o", str(path / "reports"), "--workdir",
                                      str(tmp_path / "work")])
    assert result.exit_code == 2 and f"cannot write {path / 'reports' / 'report.md'}" in result.stderr
    assert not (tmp_path / "work").exists()


def test_fp16_export_of_a_one_layer_decoder(micro_checkpoint, tmp_path):
    """Regression: shared LayerNorm weights became an fp16 Identity feeding a float32 LayerNorm (found by the suite)."""
    from ram_edge.export.writer import export_bundle

    manifest = export_bundle(micro_checkpoint, tmp_path / "fp16", precision="fp16")
    assert manifest["precision"] == "fp16" and manifest["validation"]["max_abs_diff"] <= manifest["validation"]["tolerance"]


def test_fp16_export_of_equal_position_tables(tmp_path):
    """Regression: two blocks' equal (untrained, all-zero) position-bias tables were one initializer read directly
    and through an Identity; the fp16 pass kept it float32 yet converted the Reshape reading it."""
    from ram_edge.export.writer import export_bundle
    from ram_edge.models.checkpoint import save_checkpoint

    model, labels = _micro_model([2, 2])
    tables = [b.attn.relative_position_bias_table for b in model.visual_encoder.layers[0].blocks]
    assert all(not t.any() for t in tables)  # what makes the exporter share them
    checkpoint = save_checkpoint(model, labels, tmp_path / "micro", source={"kind": "test"})
    manifest = export_bundle(checkpoint, tmp_path / "fp16", precision="fp16")
    assert manifest["validation"]["max_abs_diff"] <= manifest["validation"]["tolerance"]


def test_fp16_initializer_read_by_kept_and_converted_ops(tmp_path):
    """An initializer that a float32 LayerNorm and a converted Add both read gets a float32 copy for the LayerNorm."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from ram_edge.export.onnx_format import to_fp16

    w = numpy_helper.from_array(np.linspace(-1, 1, 8, dtype=np.float32), "w")
    nodes = [helper.make_node("Add", ["x", "w"], ["a"]),
             helper.make_node("Identity", ["w"], ["w2"]),
             helper.make_node("LayerNormalization", ["a", "w2", "w"], ["y"], axis=-1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])], [w])
    model = to_fp16(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    types = {i.name: i.data_type for i in model.graph.initializer}
    assert types == {"w": TensorProto.FLOAT16, "w_float32": TensorProto.FLOAT}
    assert not [n for n in model.graph.node if n.op_type == "Identity"]
    onnx.save(model, tmp_path / "m.onnx")
    x = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    got = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    a = x + np.linspace(-1, 1, 8, dtype=np.float32)
    want = (a - a.mean(-1, keepdims=True)) / np.sqrt(a.var(-1, keepdims=True) + 1e-5) * np.linspace(-1, 1, 8) + np.linspace(-1, 1, 8)
    np.testing.assert_allclose(got, want, atol=2e-2)


def test_mac_counts_cover_ram_plus_description_mixing(converted_golden):
    """RAM++ queries depend on the image: the decoder's MACs at n tags include mixing n tags' descriptions."""
    from experiment_scripts import load
    from ram_edge.benchmarks.random_weights import count_macs

    torch_decoder_times = load("full_size").torch_decoder_times

    for name, ckpt in converted_golden.items():
        total = len((ckpt / "tags.txt").read_text(encoding="utf-8").splitlines())
        macs = count_macs(ckpt, [2, total])
        assert macs["encoder"] > 0 and 0 < macs["decoder_2"] < macs[f"decoder_{total}"], name
        times = torch_decoder_times(ckpt, [2], threads=1, iters=1)
        assert times[2] > 0


def test_int8_targets_are_judged_on_full_size_models_and_shown_unjudged_for_the_default_model():
    from dataclasses import asdict

    from ram_edge.benchmarks.suite import SuiteConfig, suite_path, targets

    shipped = {name: asdict(SuiteConfig.load(suite_path(name)).targets) for name in ("default_model", "full_size_swin_l384")}

    def row(model, precision, ms, size, rss):
        return {"model": model, "runtime": "ort", "precision": precision, "batch": 1, "tags": "all", "ms_per_image": ms,
                "size_mb": size, "peak_rss_mb": rss}

    rows = []
    for model in ("default", "ram-swin-l384"):
        rows += [row(model, "fp32", 100.0, 100.0, 1000.0), row(model, "int8", 50.0, 25.0, 500.0)]
    result = {"rows": rows, "cpu": {"vnni": True}, "macs": {},
              "suite": {"models": [{"name": "default", "source": "default", "targets": shipped["default_model"]},
                                   {"name": "ram-swin-l384", "source": "preset:ram_swin_large_384",
                                    "targets": shipped["full_size_swin_l384"]}]}}
    int8 = [t for t in targets(result) if "INT8" in t["target"]]
    full = {t["target"].split(": ", 1)[1]: t for t in int8 if t["model"] == "ram-swin-l384"}
    assert full["files <= 30% of fp32"]["pass"] is True and full["peak memory <= 60% of fp32"]["pass"] is True
    assert full[">= 2.5x fp32 (VNNI)"]["pass"] is False and full[">= 2.5x fp32 (VNNI)"]["value"] == "2.00x"
    shown = [t for t in int8 if t["model"] == "default"]
    assert len(shown) == 3 and all(t["pass"] is None and "not judged" in t["target"] for t in shown)


def test_targets_are_the_suite_files_data():
    """The thresholds come from a suite's `targets:` section (a model's own section replaces the suite's); a suite
    without one judges nothing, and the shipped suites are found by name."""
    from ram_edge.benchmarks.suite import SUITES_DIR, SuiteConfig, suite_path, targets
    from ram_edge.errors import ConfigError

    default = SuiteConfig.load(suite_path("default_model"))
    assert suite_path("default_model") == SUITES_DIR / "default_model.yaml"
    assert default.targets.cold_start_s == 1.0 and default.targets.roofline_pct == 85.0
    assert "int8_size" in default.targets.not_judged
    for path in SUITES_DIR.glob("*.yaml"):
        assert SuiteConfig.load(path).targets.roofline_pct is not None, path
    with pytest.raises(ConfigError, match="no shipped suite of that name; give a suite file or one of: default_model"):
        suite_path("default-model")
    result = CliRunner().invoke(cli, ["bench", "--suite", "default-model"])
    assert result.exit_code == 2 and "suite 'default-model': no such file" in result.stderr

    rows = [{"model": "m", "runtime": "ort", "precision": p, "batch": 1, "tags": "all", "ms_per_image": ms, "size_mb": 10.0,
             "peak_rss_mb": 100.0, "cold_start_s": 0.5} for p, ms in (("fp32", 10.0), ("int8", 5.0))]
    result = {"rows": rows, "cpu": {"vnni": False}, "macs": {}, "suite": {"models": [{"name": "m", "source": "default"}]}}
    assert targets(result) == []
    result["suite"]["targets"] = {"cold_start_s": 1.0, "int8_speed_ort": 3.0, "not_judged": ["int8_speed_ort"]}
    assert [(t["target"], t["value"], t["pass"]) for t in targets(result)] == [
        ("ort INT8 batch 1 (not judged here): >= 3.0x fp32 (no VNNI)", "2.00x", None),
        ("cold start to the first tags < 1 s", "0.50 s (ort fp32)", True)]
    result["suite"]["models"][0]["targets"] = {"int8_speed_ort": 1.5}
    assert [(t["target"], t["pass"]) for t in targets(result)] == [("ort INT8 batch 1: >= 1.5x fp32 (no VNNI)", True)]

    for bad, needle in (({"int8_size": -1}, "int8_size must be a positive number"),
                        ({"not_judged": ["speed"]}, "not_judged names unknown target"),
                        ({"not_judged": "int8_size"}, "not_judged must be a list"),
                        ({"cold_start": 1}, "unknown field")):
        with pytest.raises(ConfigError, match=needle):
            SuiteConfig(name="x", models=[{"name": "m", "source": "default"}], targets=bad)


def test_report_names_tell_cpu_kinds_apart():
    from ram_edge.benchmarks.suite import machine_name

    zen5 = {"model": "AMD EPYC 9R45 (Zen 5)", "cores": 2, "features": ["avx2", "avx512f", "avx512_vnni", "avx512_bf16"], "vnni": True}
    xeon = {"model": "Intel(R) Xeon(R) Processor", "cores": 2, "vnni": True,
            "features": ["avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16"]}
    zen3 = {"model": "AMD EPYC 7B13", "cores": 2, "features": ["avx2"], "vnni": False}
    assert [machine_name(c) for c in (zen5, xeon, zen3)] == ["avx512-vnni-2c", "intel-avx512-vnni-amx-2c", "avx2-2c"]
