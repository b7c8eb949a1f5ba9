"""`ram-edge quantize`: NNCF post-training quantization and 8-bit weights on a micro RAM, calibration data,
exact reload, the torch runtime, and bad input that writes nothing."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the train extra is needed: pip install 'ram-edge[train]'")
pytest.importorskip("nncf", reason="the train extra is needed: pip install 'ram-edge[train]'")

from PIL import Image, ImageDraw  # noqa: E402

from conftest import run_cli  # noqa: E402

TAGS = ["red square", "blue circle", "green triangle", "sky", "grass"]


def _image(rng: np.random.Generator, size: int = 48) -> Image.Image:
    img = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 255, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(3):
        x, y = (int(v) for v in rng.integers(0, size // 2, 2))
        draw.rectangle((x, y, x + size // 3, y + size // 3), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    return img


@pytest.fixture(scope="module")
def micro(tmp_path_factory, micro_checkpoint_factory) -> dict[str, Path]:
    """A random-weight micro RAM checkpoint, a folder of photos-like images and a JSONL of them."""
    root = tmp_path_factory.mktemp("micro")
    checkpoint = micro_checkpoint_factory(tags=TAGS, label_embed_dim=16, source={"kind": "test"})
    images = root / "photos"
    (images / "album").mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(24):
        _image(rng).save(images / "album" / f"{i:02d}.png")
    (images / "broken.jpg").write_bytes(b"not a jpeg")
    (images / "annotations_are_not_here.txt").write_text("ignored: not an image")
    jsonl = root / "data"
    jsonl.mkdir()
    rows = [{"image": str(p), "tags": [TAGS[i % len(TAGS)]]} for i, p in enumerate(sorted((images / "album").glob("*.png")))]
    (jsonl / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"checkpoint": checkpoint, "images": images, "jsonl": jsonl, "root": root}


def _batch(micro) -> np.ndarray:
    from ram_edge.preprocess import load_image, preprocess
    from ram_edge.config import PreprocessConfig

    files = sorted((micro["images"] / "album").glob("*.png"))[:6]
    return np.stack([preprocess(load_image(f), PreprocessConfig(image_size=32)) for f in files])


def _float_probs(micro, batch: np.ndarray) -> np.ndarray:
    from ram_edge.models.checkpoint import load_checkpoint
    from ram_edge.models.quantized import tagging_graph

    model, _ = load_checkpoint(micro["checkpoint"])
    with torch.no_grad():
        return tagging_graph(model)(torch.from_numpy(batch)).numpy()


@pytest.mark.slow
def test_ptq_checkpoint_reloads_exactly_and_runs_like_any_checkpoint(micro, tmp_path):
    from ram_edge import Tagger
    from ram_edge.models.quantized import NNCF_CONFIG_FILE, QUANTIZED_FILE, load_quantized

    out = tmp_path / "ptq"
    result = run_cli("quantize", micro["checkpoint"], "-o", out, "--method", "ptq", "--calib", micro["images"],
                     "--calib-size", 100, "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    # 24 readable images, the broken one skipped and counted (and named on stderr); 1 in 5 held out for the check.
    assert record["calibration"] == {"source": str(micro["images"]), "kind": "folder", "images": 20, "unreadable": 1}
    assert record["held_out"]["images"] == 4
    assert "1 calibration image(s) could not be read" in result.stderr and "broken.jpg" in result.stderr
    assert record["method"] == "ptq" and record["tools"]["nncf"]
    for name in (QUANTIZED_FILE, NNCF_CONFIG_FILE, "config.json", "tags.txt", "thresholds.txt"):
        assert (out / name).is_file(), name
    # The float weights stay as they were (tools that read float weights keep working).
    assert (out / "model.safetensors").read_bytes() == (micro["checkpoint"] / "model.safetensors").read_bytes()

    batch = _batch(micro)
    first, _ = load_quantized(out)
    second, _ = load_quantized(out)
    with torch.no_grad():
        a, b = first(torch.from_numpy(batch)).numpy(), second(torch.from_numpy(batch)).numpy()
    np.testing.assert_array_equal(a, b)  # save -> reload is exact
    reference = _float_probs(micro, batch)
    assert 0 < np.abs(a - reference).max() < 0.1  # quantized, and close to the float graph
    # The torch runtime runs the quantized graph (probabilities, not logits).
    tagger = Tagger.load(out, runtime="torch")
    np.testing.assert_allclose(tagger.predict(batch), a, rtol=0, atol=1e-7)
    assert tagger.tags == TAGS

    # A fresh process (NNCF loads its kernels and logs on the first quantized forward): stdout stays pure JSON.
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "ram_edge.cli.main", "tag", str(micro["images"] / "album"), "--model", str(out),
                           "--runtime", "torch", "--json", "--threshold", "0"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(lines) == 24 and all(len(line["tags"]) == len(TAGS) for line in lines)

    result = run_cli("eval", out, micro["jsonl"] / "annotations.jsonl", "--runtime", "torch", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["images"] == 24


@pytest.fixture(scope="module")
def ptq_checkpoint(micro, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ptq") / "q"
    result = run_cli("quantize", micro["checkpoint"], "-o", out, "--calib", micro["images"])
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.slow
@pytest.mark.parametrize("fmt, runtime", [("onnx", "ort"), ("openvino", "openvino")])
def test_int8_bundle_runs_int8_and_agrees_with_the_quantized_model(micro, ptq_checkpoint, tmp_path, fmt, runtime):
    from ram_edge import Tagger
    from ram_edge.export.validate import TOLERANCES
    from ram_edge.models.quantized import load_quantized

    bundle = tmp_path / f"int8-{fmt}"
    result = run_cli("export", ptq_checkpoint, "-o", bundle, "--format", fmt, "--json")
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)
    assert manifest["precision"] == "int8" and manifest["quantization"]["method"] == "ptq"
    assert manifest["quantization"]["calibration"]["images"] == 20 and manifest["quantization"]["held_out"]["images"] == 4
    assert manifest["validation"]["max_abs_diff"] <= TOLERANCES["int8"]
    assert 0 <= manifest["quantization"]["vs_float"]["tag_set_f1"] <= 1
    batch = _batch(micro)
    with torch.no_grad():
        expected = load_quantized(ptq_checkpoint)[0](torch.from_numpy(batch)).numpy()
    tagger = Tagger.load(bundle, runtime=runtime)
    got = tagger.predict(batch)
    assert np.abs(got - expected).max() <= TOLERANCES["int8"]
    if runtime == "ort":  # the memory pattern overshoots on Q/DQ graphs (ort_runtime.py): planned per run instead
        assert not tagger.runtime.session.get_session_options().enable_mem_pattern
    if fmt == "onnx":
        import onnx
        from onnx import numpy_helper

        model = onnx.load(str(bundle / "model.onnx"))
        inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        ops = [n.op_type for n in model.graph.node]
        int8_weights = [n for n, a in inits.items() if a.dtype == np.int8 and a.ndim >= 2]
        assert ops.count("DequantizeLinear") > 0 and len(int8_weights) >= 5
        # Every weight is stored as int8: no QuantizeLinear of a constant is left.
        assert not [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in inits]
        # ... and stored the way the MatMul reads it: no DequantizeLinear(weight) -> Transpose left for
        # onnxruntime to fold at every load (a 1 GB transient at Swin-B/384).
        readers = {}
        for node in model.graph.node:
            for name in node.input:
                readers.setdefault(name, []).append(node.op_type)
        assert not [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
                    and "Transpose" in readers.get(n.output[0], [])]
        # Activations are dequantized right beside the MatMul that reads them (int8 attention scores in
        # onnxruntime, export/int8_activations.py): no DequantizeLinear of an activation feeds an op that only
        # moves values, and no LayerNorm is read only by a (smoothing) Mul.
        moves = {"Gather", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten"}
        assert not [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] not in inits
                    and set(readers.get(n.output[0], [])) & moves]
        assert not [n for n in model.graph.node if n.op_type == "LayerNormalization" and readers[n.output[0]] == ["Mul"]]
        # The label queries' projection (a product of two constants once NNCF's fake quantization is folded) is
        # computed at export: no MatMul of constants, and the queries are stored once.
        constant = set(inits) | {n.output[0] for n in model.graph.node if n.op_type == "Cast" and n.input[0] in inits}
        assert not [n for n in model.graph.node if n.op_type == "MatMul" and all(x in constant for x in n.input)]
        classes = expected.shape[1]
        assert len([a for a in inits.values() if a.ndim == 3 and a.shape[:2] == (1, classes)]) == 2  # queries, projected
    else:
        import openvino as ov

        compiled = ov.Core().compile_model(str(bundle / "model.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        kernels = {(str(op.get_rt_info()["layerType"].astype(str)), str(op.get_rt_info()["runtimePrecision"].astype(str)))
                   for op in compiled.get_runtime_model().get_ordered_ops()}
        assert {k for k in kernels if k[0] in ("FullyConnected", "MatMul", "Convolution") and k[1] in ("u8", "i8")}, kernels


@pytest.mark.slow
def test_openvino_int8_kernels_follow_the_cpu_or_the_setting(micro, ptq_checkpoint, tmp_path, monkeypatch):
    """Without VNNI / AMX an INT8 IR runs float kernels on its 8-bit weights (OpenVINO's low-precision transformations
    off); the answers stay those of the quantized model either way."""
    pytest.importorskip("openvino")
    from ram_edge import Tagger
    from ram_edge.errors import ConfigError
    from ram_edge.export.validate import TOLERANCES
    from ram_edge.models.quantized import load_quantized
    from ram_edge.runtimes import openvino_runtime

    bundle = tmp_path / "int8-ov"
    assert run_cli("export", ptq_checkpoint, "-o", bundle, "--format", "openvino").exit_code == 0
    batch = _batch(micro)
    with torch.no_grad():
        expected = load_quantized(ptq_checkpoint)[0](torch.from_numpy(batch)).numpy()

    def int8_kernels_used(tagger) -> bool:
        # "layer kernel weights": the kernel's name ends in what it computes in ("brgemm_avx512_I8", "..._f32"); the
        # weights' type is i8 for the compressed float kernels too.
        return any(key.split()[1].lower().endswith("_i8") for key in tagger.runtime.matmul_kernels())

    for setting, avx2_only, wanted in (("on", True, True), ("off", False, False), ("auto", False, True),
                                        ("auto", True, False)):
        monkeypatch.setenv(openvino_runtime.INT8_KERNELS_ENV, setting)
        monkeypatch.setattr(openvino_runtime, "x86_avx2_only", lambda: avx2_only)
        tagger = Tagger.load(bundle, runtime="openvino")
        assert tagger.runtime.int8_kernels is wanted
        assert int8_kernels_used(tagger) is wanted, (setting, avx2_only)
        # The products' precision, as onnxruntime reports it; the float layers' stays ram-edge's fp32.
        assert tagger.runtime.compute_precision == ("int8" if wanted else "fp32")
        assert tagger.runtime.inference_precision == "fp32"
        assert np.abs(tagger.predict(batch) - expected).max() <= TOLERANCES["int8"]
    monkeypatch.setenv(openvino_runtime.INT8_KERNELS_ENV, "sometimes")
    with pytest.raises(ConfigError, match="RAM_EDGE_OV_INT8_KERNELS='sometimes' is not valid"):
        Tagger.load(bundle, runtime="openvino")
    monkeypatch.setenv(openvino_runtime.INT8_KERNELS_ENV, "off")
    assert Tagger.load(micro["checkpoint"], runtime="torch").runtime is not None  # float models: no question asked


@pytest.mark.slow
def test_ort_int8_u8u8_follows_the_cpu_or_the_setting(micro, ptq_checkpoint, tmp_path, monkeypatch):
    """Without VNNI onnxruntime's U8S8 kernels saturate 16-bit pair sums; ram-edge asks for its exact U8U8 kernels
    there. That rewrite needs every int8 weight to read its own zero point (the export unshares them); an older bundle
    whose weights share one loads with the U8S8 kernels and a warning instead of failing."""
    import os
    import shutil
    import subprocess
    import sys
    import warnings

    import onnx
    from onnx import numpy_helper

    from ram_edge import Tagger
    from ram_edge.bundle import read_bundle, write_manifest
    from ram_edge.errors import ConfigError, RamEdgeWarning
    from ram_edge.export.int8 import unshare_weight_quantization
    from ram_edge.export.validate import TOLERANCES
    from ram_edge.models.quantized import load_quantized
    from ram_edge.runtimes import ort_runtime

    bundle = tmp_path / "int8-onnx"
    assert run_cli("export", ptq_checkpoint, "-o", bundle, "--format", "onnx").exit_code == 0
    model = onnx.load(str(bundle / "model.onnx"))
    inits = {i.name: i for i in model.graph.initializer}
    weights = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert len(weights) >= 5 and all(n.input[2] in inits for n in weights)
    for slot in (0, 2):
        names = [n.input[slot] for n in weights]
        assert len(set(names)) == len(names), f"weights share input {slot}"
    batch = _batch(micro)
    with torch.no_grad():
        expected = load_quantized(ptq_checkpoint)[0](torch.from_numpy(batch)).numpy()

    def session_u8u8(tagger) -> str:
        options = tagger.runtime.session.get_session_options()
        return options.get_session_config_entry("session.x64quantprecision") if tagger.runtime.int8_u8u8 else "0"

    for setting, dot_product, wanted in (("on", True, True), ("off", False, False), ("auto", False, True),
                                         ("auto", True, False), ("auto", None, False)):
        monkeypatch.setenv(ort_runtime.INT8_U8U8_ENV, setting)
        monkeypatch.setattr(ort_runtime, "x86_int8_dot_product", lambda: dot_product)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            tagger = Tagger.load(bundle, runtime="ort")
        assert tagger.runtime.int8_u8u8 is wanted and session_u8u8(tagger) == ("1" if wanted else "0"), setting
        assert np.abs(tagger.predict(batch) - expected).max() <= TOLERANCES["int8"]
    monkeypatch.setenv(ort_runtime.INT8_U8U8_ENV, "sometimes")
    with pytest.raises(ConfigError, match="RAM_EDGE_ORT_INT8_U8U8='sometimes' is not valid"):
        Tagger.load(bundle, runtime="ort")

    # An older export: weights with equal zero points read one initializer.
    old = tmp_path / "old"
    shutil.copytree(bundle, old)
    by_shape: dict = {}
    for node in weights:
        by_shape.setdefault(numpy_helper.to_array(inits[node.input[2]]).tobytes() + bytes(str(inits[node.input[2]].dims), "ascii"), []).append(node)
    shared = next(nodes for nodes in by_shape.values() if len(nodes) > 1)
    for node in shared[1:]:
        node.input[2] = shared[0].input[2]
    onnx.save(model, str(old / "model.onnx"))
    write_manifest(old, read_bundle(old, verify=False).manifest)
    monkeypatch.setenv(ort_runtime.INT8_U8U8_ENV, "on")
    with pytest.warns(RamEdgeWarning, match="share zero points"):
        tagger = Tagger.load(old, runtime="ort")
    assert tagger.runtime.int8_u8u8 is False
    assert np.abs(tagger.predict(batch) - expected).max() <= TOLERANCES["int8"]
    # The CLI says so in one line and still tags.
    image = sorted((micro["images"] / "album").glob("*.png"))[0]
    proc = subprocess.run([sys.executable, "-m", "ram_edge.cli.main", "tag", str(image), "--model", str(old), "--json"],
                          capture_output=True, text=True, env={**os.environ, ort_runtime.INT8_U8U8_ENV: "on"})
    assert proc.returncode == 0 and json.loads(proc.stdout)["image"] == str(image)
    assert proc.stderr.strip().splitlines() == [f"warning: {old / 'model.onnx'}: this INT8 bundle cannot use "
                                                f"onnxruntime's exact U8U8 kernels (its weights share zero points), so on "
                                                f"CPUs without VNNI its int8 products may saturate. Re-export it with this "
                                                f"version of ram-edge to fix that"]
    assert unshare_weight_quantization(model.graph) == len(shared) - 1
    onnx.save(model, str(old / "model.onnx"))
    write_manifest(old, read_bundle(old, verify=False).manifest)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Tagger.load(old, runtime="ort").runtime.int8_u8u8 is True


@pytest.mark.slow
@pytest.mark.parametrize("runtime, fmt, setting", [("openvino", "openvino", "int8 kernels"), ("ort", "onnx", "U8U8")])
def test_int8_settings_benchmark_writes_its_report(micro, ptq_checkpoint, tmp_path, capsys, runtime, fmt, setting):
    pytest.importorskip("openvino")
    from experiment_scripts import load

    main = load("ov_int8_kernels").main

    for source, name in ((micro["checkpoint"], "fp32"), (ptq_checkpoint, "int8")):
        assert run_cli("export", source, "-o", tmp_path / name, "--format", fmt).exit_code == 0
    report = tmp_path / "r" / "ov.md"
    main(["--fp32", str(tmp_path / "fp32"), "--int8", str(tmp_path / "int8"), "--runtime", runtime, "--rounds", "2",
          "--iters", "2", "--warmup", "0", "--threads", "1", "--report", str(report)])
    result = json.loads(capsys.readouterr().out)
    assert result["runtime"] == runtime and set(result["cells"]) == {"fp32/auto", "int8/on", "int8/off"}
    assert all(len(c["ms"]) == 2 and c["median_ms"] > 0 for c in result["cells"].values())
    assert result["cells"]["fp32/auto"]["speedup_vs_fp32"] == 1.0
    text = report.read_text()
    assert f"| bundle | {setting} |" in text and "| int8 | off |" in text and "| fp32 | – |" in text
    assert f"--runtime {runtime}" in text and "--report" in text
    assert json.loads(report.with_suffix(".json").read_text())["rounds"] == 2
    assert sorted(p.name for p in report.parent.iterdir()) == ["ov.json", "ov.md"]  # no temporary file left


@pytest.mark.slow
def test_int8_export_errors(micro, ptq_checkpoint, tmp_path):
    cases = [
        ((micro["checkpoint"], "--precision", "int8"), "needs a quantized checkpoint"),
        ((ptq_checkpoint, "--precision", "fp16"), "exports as int8"),
        ((ptq_checkpoint, "--calib", micro["images"]), "--calib is for --precision int8"),
        ((ptq_checkpoint, "--precision", "int8", "--calib", micro["images"]), "already quantized"),
    ]
    for args, message in cases:
        result = run_cli("export", args[0], "-o", tmp_path / "b", *args[1:])
        assert result.exit_code == 2 and message in result.stderr, result.output
        assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_int8_export_through_the_cli_prints_no_dependency_chatter(ptq_checkpoint, tmp_path):
    """`ram-edge export QUANTIZED` in a fresh process: NNCF's strip imports torchao, which warns of every CUDA kernel
    library it cannot load and draws a torch deprecation warning; the CLI keeps those off a user's terminal."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "ram_edge.cli.main", "export", str(ptq_checkpoint), "-o",
                           str(tmp_path / "bundle")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "wrote" in proc.stderr + proc.stdout
    noise = [line for line in proc.stderr.splitlines() if "torchao" in line or "_pytree" in line]
    assert noise == []


@pytest.mark.slow
def test_a_kernel_load_killed_midway_does_not_block_later_runs(micro, ptq_checkpoint):
    """torch loads NNCF's kernels under a lock file that only a finished load removes: a process killed while loading
    leaves it, and every later run waited NNCF's timeout and failed. The file is what torch's FileBaton leaves (an empty
    `lock` in the build folder); ram-edge removes it under its own OS lock and loads."""
    import os
    import subprocess
    import sys

    from nncf.torch.quantization.extensions import QuantizedFunctionsCPULoader

    stale = Path(QuantizedFunctionsCPULoader.get_build_dir()) / "lock"
    stale.touch()
    image = sorted((micro["images"] / "album").glob("*.png"))[0]
    proc = subprocess.run([sys.executable, "-m", "ram_edge.cli.main", "tag", str(image), "--model", str(ptq_checkpoint),
                           "--runtime", "torch", "--json"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "NNCF_EXTENSION_LOAD_TIMEOUT": "60"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"note: removed {stale}" in proc.stderr and not stale.exists()
    assert json.loads(proc.stdout)["image"] == str(image)


@pytest.mark.slow
def test_int8_bundle_runtime_path_imports_no_torch(ptq_checkpoint, micro, tmp_path):
    import subprocess
    import sys

    bundle = tmp_path / "int8"
    assert run_cli("export", ptq_checkpoint, "-o", bundle).exit_code == 0
    code = ("import sys\nfrom ram_edge import Tagger\n"
            f"t = Tagger.load({str(bundle)!r}, runtime='ort')\n"
            f"print(t.scores([{str(sorted((micro['images'] / 'album').glob('*.png'))[0])!r}]).shape)\n"
            "assert not {'torch', 'nncf', 'onnx'} & set(sys.modules), sorted({'torch', 'nncf', 'onnx'} & set(sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == f"(1, {len(TAGS)})"


def test_weights_only_needs_no_calibration_and_reloads_exactly(micro, tmp_path):
    from ram_edge.models.quantized import load_quantized

    out = tmp_path / "weights"
    result = run_cli("quantize", micro["checkpoint"], "-o", out, "--method", "weights")
    assert result.exit_code == 0, result.output
    assert "no calibration needed" in result.stdout
    config = json.loads((out / "config.json").read_text())
    assert config["source"]["quantization"]["method"] == "weights" and config["source"]["kind"] == "test"
    batch = _batch(micro)
    with torch.no_grad():
        a = load_quantized(out)[0](torch.from_numpy(batch)).numpy()
        b = load_quantized(out)[0](torch.from_numpy(batch)).numpy()
    np.testing.assert_array_equal(a, b)
    assert 0 < np.abs(a - _float_probs(micro, batch)).max() < 0.05


def test_calibration_reads_every_dataset_format(micro, tmp_path):
    from ram_edge.config import PreprocessConfig
    from ram_edge.quantize.calibration import load_calibration

    pre = PreprocessConfig(image_size=32)
    data = load_calibration(micro["jsonl"], pre, 10, progress=False)
    assert data.kind == "jsonl" and data.images.shape == (10, 3, 32, 32) and data.images.dtype == np.float32
    # A different seed draws other images from the same source.
    other = load_calibration(micro["jsonl"], pre, 10, seed=1, progress=False)
    assert not np.array_equal(data.images, other.images)
    shard = tmp_path / "shard-000.tar"
    with tarfile.open(shard, "w") as tar:
        for i, png in enumerate(sorted((micro["images"] / "album").glob("*.png"))[:3]):
            for name, payload in ((f"{i:06d}.png", png.read_bytes()), (f"{i:06d}.json", b'{"captions": ["x"]}')):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    data = load_calibration(shard, pre, 10, progress=False)
    assert data.kind == "wds" and len(data.images) == 3
    folder = load_calibration(micro["images"], pre, 5, progress=False)
    assert folder.kind == "folder" and len(folder.images) == 5


@pytest.mark.parametrize("case", ["empty", "unreadable", "missing", "no-calib", "bad-config"])
def test_bad_calibration_input_is_one_line_and_writes_nothing(micro, tmp_path, case):
    calib = tmp_path / "calib"
    calib.mkdir()
    args = ["--calib", calib]
    expected = "no calibration images in"
    if case == "unreadable":
        (calib / "a.jpg").write_bytes(b"nope")
        (calib / "b.png").write_bytes(b"")
        expected = "none of the 2 calibration image(s)"
    elif case == "missing":
        args, expected = ["--calib", tmp_path / "nowhere"], "does not exist"
    elif case == "no-calib":
        args, expected = [], "needs calibration images"
    elif case == "bad-config":
        (tmp_path / "q.yaml").write_text("method: ptq\ncalib_sise: 10\n")
        args, expected = ["--config", tmp_path / "q.yaml", "--calib", micro["images"]], "unknown field(s) ['calib_sise']"
    out = tmp_path / "out"
    result = run_cli("quantize", micro["checkpoint"], "-o", out, *args)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and expected in lines[0], result.stderr
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def _kl_on(checkpoint: Path, micro, images: np.ndarray) -> float:
    """Binary KL of a quantized checkpoint's tag probabilities from the float model's, on `images`."""
    from ram_edge.models.checkpoint import load_checkpoint
    from ram_edge.quantize.qat import binary_kl
    from ram_edge.models.quantized import load_quantized, tagging_graph

    teacher = tagging_graph(load_checkpoint(micro["checkpoint"])[0])
    student, _ = load_quantized(checkpoint)
    teacher.emit_logits = student.emit_logits = True
    with torch.no_grad():
        x = torch.from_numpy(images)
        return float(binary_kl(student(x), teacher(x)))


QAT_CONFIG = """method: qat
calib_size: 16
qat:
  steps: 10
  batch_size: 8
  lr: 3.0e-5
  warmup_steps: 1
  checkpoint_every: 2
  log_every: 1
  crop_scale: [1.0, 1.0]
  hflip: false
"""


@pytest.fixture(scope="module")
def qat_run(micro, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("qat")
    (root / "qat.yaml").write_text(QAT_CONFIG)
    out = root / "qat"
    result = run_cli("quantize", micro["checkpoint"], "-o", out, "--config", root / "qat.yaml", "--calib", micro["images"] / "album",
                     "--json")
    assert result.exit_code == 0, result.output
    return {"out": out, "run": root / "qat.qat-run", "config": root / "qat.yaml", "record": json.loads(result.stdout)}


@pytest.mark.slow
def test_qat_fine_tunes_the_ptq_model_towards_the_float_one(micro, qat_run):
    from ram_edge import Tagger
    from ram_edge.config import PreprocessConfig
    from ram_edge.quantize.calibration import load_calibration
    from ram_edge.models.quantized import load_quantized

    record = qat_run["record"]
    assert record["method"] == "qat" and record["qat"]["steps"] == 10 and record["calibration"]["images"] == 16
    assert record["qat"]["data"] == {"kind": "folder", "path": str(micro["images"] / "album")}
    log = [json.loads(line) for line in (qat_run["run"] / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "step" in r and "distillation" in r]
    assert [r["step"] for r in steps] == list(range(1, 11)) and all(np.isfinite(r["loss"]) for r in steps)
    # The PTQ starting point is a quantized checkpoint of its own; QAT moved the model towards the float teacher.
    images = load_calibration(micro["images"] / "album", PreprocessConfig(image_size=32), 24, progress=False).images
    before, after = _kl_on(qat_run["run"] / "ptq", micro, images), _kl_on(qat_run["out"], micro, images)
    assert after < 0.9 * before, (before, after)
    # Reload is exact, and the torch runtime runs it like any checkpoint.
    batch = _batch(micro)
    with torch.no_grad():
        a = load_quantized(qat_run["out"])[0](torch.from_numpy(batch)).numpy()
        b = load_quantized(qat_run["out"])[0](torch.from_numpy(batch)).numpy()
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(Tagger.load(qat_run["out"], runtime="torch").predict(batch), a, rtol=0, atol=1e-7)


@pytest.mark.slow
def test_resumed_qat_ends_identical_to_an_uninterrupted_run(micro, qat_run, tmp_path):
    from safetensors.numpy import load_file

    out, run = tmp_path / "qat", tmp_path / "run"
    args = ["quantize", micro["checkpoint"], "-o", out, "--config", qat_run["config"], "--calib", micro["images"] / "album",
            "--run-dir", run]
    result = run_cli(*args, "--stop-at", 4)
    assert result.exit_code == 0, result.output
    assert not out.exists() and (run / "checkpoints" / "latest").read_text() == "step-00000004"
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    assert "resuming from" in result.stderr
    a, b = load_file(str(out / "quantized.safetensors")), load_file(str(qat_run["out"] / "quantized.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    # The finished run's output exists: running again is refused, and a run directory of another setup too.
    again = run_cli(*args)
    assert again.exit_code == 2 and "already exists" in again.stderr
    other = run_cli("quantize", micro["checkpoint"], "-o", tmp_path / "other", "--method", "qat", "--steps", 3,
                    "--calib", micro["images"] / "album", "--run-dir", run)
    assert other.exit_code == 2 and "holds a QAT run of another setup (config differ)" in other.stderr, other.stderr
    assert not (tmp_path / "other").exists()


def test_qat_refuses_a_run_dir_another_process_works_in(micro, tmp_path):
    from ram_edge.dir_lock import exclusive_directory

    run_dir = tmp_path / "run"
    with exclusive_directory(run_dir, "x"):  # flock conflicts between open files, in one process too
        result = run_cli("quantize", micro["checkpoint"], "-o", tmp_path / "q", "--method", "qat", "--calib",
                         micro["images"], "--steps", "4", "--run-dir", run_dir)
        assert [p.name for p in run_dir.iterdir()] == [".ram-edge.lock"]  # the refused run wrote nothing there
    assert result.exit_code == 2, result.output
    assert f"{run_dir} is in use by another ram-edge process" in result.stderr and "--run-dir" in result.stderr
    assert not (tmp_path / "q").exists()


@pytest.mark.slow
def test_a_terminated_qat_run_names_its_last_checkpoint_and_resumes(micro, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    out, run_dir = tmp_path / "q", tmp_path / "q.qat-run"
    command = [sys.executable, "-m", "ram_edge.cli.main", "quantize", str(micro["checkpoint"]), "-o", str(out),
               "--method", "qat", "--calib", str(micro["images"]), "--steps", "100000"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    latest = run_dir / "checkpoints" / "latest"
    deadline = time.monotonic() + 300
    while not latest.is_file() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "Traceback" not in err, err[-2000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"terminated; the last QAT checkpoint is {run_dir / 'checkpoints' / 'step-'}"), line
    assert line.endswith("run the same command again to resume from it") and not out.exists()


def test_qat_tagging_loss_needs_tags_that_match_the_label_set(micro, tmp_path):
    (tmp_path / "q.yaml").write_text(QAT_CONFIG.replace("  hflip: false\n", "  hflip: false\n  tagging_weight: 1.0\n"))
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"image": str(p), "tags": ["zebra"]} for p in sorted((micro["images"] / "album").glob("*.png"))]
    (data / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = run_cli("quantize", micro["checkpoint"], "-o", tmp_path / "out", "--config", tmp_path / "q.yaml", "--calib", data)
    assert result.exit_code == 2 and "none of the first 24 examples has a tag of the model's label set" in result.stderr, result.output
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.qat-run").exists()


@pytest.mark.slow
def test_qat_bundles_and_tag_subsets_of_quantized_models(micro, qat_run, tmp_path):
    from ram_edge import Tagger

    full, subset = tmp_path / "full", tmp_path / "subset"
    assert run_cli("export", qat_run["out"], "-o", full).exit_code == 0
    result = run_cli("export", qat_run["out"], "-o", subset, "--tags", f"{TAGS[3]},{TAGS[1]}", "--json")
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)
    assert manifest["precision"] == "int8" and manifest["quantization"]["method"] == "qat"
    assert manifest["labels"]["tags"] == [TAGS[1], TAGS[3]] or manifest["labels"]["tags"] == [TAGS[3], TAGS[1]]
    batch = _batch(micro)
    all_probs = Tagger.load(full, runtime="ort").predict(batch)
    columns = [TAGS.index(t) for t in manifest["labels"]["tags"]]
    # The subset's queries are constants of the same quantized graph: the same scores as the full bundle's columns.
    np.testing.assert_allclose(Tagger.load(subset, runtime="ort").predict(batch), all_probs[:, columns], rtol=0, atol=1e-5)


@pytest.mark.parametrize("fmt, runtime", [("onnx", "ort"), pytest.param("openvino", "openvino", marks=pytest.mark.slow)])
def test_weights_only_bundles_store_8_bit_weights(micro, tmp_path, fmt, runtime):
    from ram_edge import Tagger
    from ram_edge.export.validate import TOLERANCES
    from ram_edge.models.quantized import load_quantized

    weights = tmp_path / "w8"
    assert run_cli("quantize", micro["checkpoint"], "-o", weights, "--method", "weights").exit_code == 0
    bundle, fp32 = tmp_path / "bundle", tmp_path / "fp32"
    result = run_cli("export", weights, "-o", bundle, "--format", fmt, "--json")
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)
    assert manifest["precision"] == "int8" and manifest["quantization"]["method"] == "weights"
    assert manifest["compute_precision"] == "fp32" and manifest["validation"]["tolerance"] == TOLERANCES["int8-weights"]
    batch = _batch(micro)
    with torch.no_grad():
        expected = load_quantized(weights)[0](torch.from_numpy(batch)).numpy()
    tagger = Tagger.load(bundle, runtime=runtime)
    assert tagger.runtime.compute_precision == "fp32"
    assert np.abs(tagger.predict(batch) - expected).max() <= TOLERANCES["int8-weights"]
    assert run_cli("export", micro["checkpoint"], "-o", fp32, "--format", fmt).exit_code == 0
    model_file = "model.onnx" if fmt == "onnx" else "model.bin"
    # The micro model's weights are a small part of its file; the 8-bit ones are a quarter of their float size.
    assert (bundle / model_file).stat().st_size < 0.75 * (fp32 / model_file).stat().st_size
    if fmt == "onnx":
        import onnx
        from onnx import numpy_helper

        model = onnx.load(str(bundle / "model.onnx"))
        u8 = [i.name for i in model.graph.initializer if numpy_helper.to_array(i).dtype == np.uint8 and len(i.dims) >= 2]
        assert len(u8) >= 10 and not [n for n in model.graph.node if n.op_type == "QuantizeLinear"]


@pytest.mark.slow
def test_export_int8_with_calib_runs_ptq_on_the_way(micro, tmp_path):
    bundle = tmp_path / "int8"
    result = run_cli("export", micro["checkpoint"], "-o", bundle, "--precision", "int8", "--calib", micro["images"] / "album",
                     "--calib-size", 12, "--format", "openvino", "--json")
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)
    assert manifest["precision"] == "int8" and manifest["quantization"]["method"] == "ptq"
    assert manifest["quantization"]["calibration"]["images"] == 12 and manifest["quantization"]["calibration"]["kind"] == "folder"
    assert (bundle / "model.xml").is_file()
    # 24 photos: 12 calibrate, 4 (1 in 5) are held out and check the written IR on OpenVINO.
    assert manifest["quantization"]["held_out"]["images"] == 4
    assert manifest["quantization"]["vs_float_photos"]["images"] == 4 and manifest["quantization"]["vs_float_photos"]["runtime"] == "openvino"


@pytest.mark.slow
def test_sensitivity_report_ranks_operations_and_its_patterns_keep_them_in_float(micro, tmp_path):
    from ram_edge.models.quantized import load_quantized
    from ram_edge.quantize.sensitivity import quantizer_groups

    out = tmp_path / "ptq"
    result = run_cli("quantize", micro["checkpoint"], "-o", out, "--calib", micro["images"] / "album", "--report")
    assert result.exit_code == 0, result.output
    assert "whole model:" in result.stdout and "worst  1 kept in float" in result.stdout
    report = json.loads((out / "sensitivity.json").read_text())
    graph, _ = load_quantized(out)
    groups = quantizer_groups(graph)
    ops = report["ops"]
    # One row per quantized operation, every quantizer counted once, most sensitive first.
    assert sorted(r["op"] for r in ops) == sorted(groups) and sum(r["quantizers"] for r in ops) == sum(map(len, groups.values()))
    assert [r["mean_abs_diff"] for r in ops] == sorted((r["mean_abs_diff"] for r in ops), reverse=True)
    assert ops[0]["mean_abs_diff"] > 0 and report["whole_model"][0]["kept_in_float"] == 0
    # Keeping the worst operations in float brings the model closer to float.
    whole = {r["kept_in_float"]: r["mean_abs_diff"] for r in report["whole_model"]}
    assert whole[5] < whole[0]
    # The suggested patterns are data for the next run: those operations get no quantizers.
    patterns = report["suggested_ignored_patterns"]["3"]
    (tmp_path / "q.yaml").write_text(json.dumps({"method": "ptq", "ignored_patterns": patterns}))
    again = tmp_path / "ptq-mixed"
    assert run_cli("quantize", micro["checkpoint"], "-o", again, "--calib", micro["images"] / "album", "--config", tmp_path / "q.yaml").exit_code == 0
    mixed = quantizer_groups(load_quantized(again)[0])
    kept = {r["op"] for r in ops[:3]}
    weight_quantized = {op for op in kept if op in mixed}
    assert len(weight_quantized) < len(kept), (kept, sorted(mixed))


@pytest.mark.slow
def test_ram_plus_int8_bundle_stores_description_embeddings_once_in_int8(micro, micro_checkpoint_factory, tmp_path):
    import onnx
    from onnx import numpy_helper

    from ram_edge import Tagger

    classes, des, dim = 40, 4, 32
    # Unit-norm label queries, as the text encoder writes them (a fresh model holds zeros).
    checkpoint = micro_checkpoint_factory("ram_plus", tags=classes, des_per_class=des, label_embed_dim=dim, unit_queries=True)
    bundle = tmp_path / "int8"
    result = run_cli("export", checkpoint, "-o", bundle, "--precision", "int8", "--calib", micro["images"] / "album", "--calib-size", 8)
    assert result.exit_code == 0, result.output
    model = onnx.load(str(bundle / "model.onnx"))
    arrays = [numpy_helper.to_array(i) for i in model.graph.initializer]
    descriptions = [a for a in arrays if a.size == classes * des * dim]
    # One copy, 8-bit, behind a per-tensor DequantizeLinear: the other operand of both products is quantized.
    assert len(descriptions) == 1 and descriptions[0].dtype == np.int8
    name = next(i.name for i in model.graph.initializer if numpy_helper.to_array(i).size == classes * des * dim)
    readers = [n for n in model.graph.node if name in n.input]
    assert [n.op_type for n in readers] == ["DequantizeLinear"]
    assert float(np.abs(descriptions[0]).max()) == 127
    assert Tagger.load(bundle, runtime="ort").predict(_batch(micro)).shape == (6, classes)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["validation"]["max_abs_diff"] <= manifest["validation"]["tolerance"]
    # The OpenVINO INT8 IR keeps them 8-bit too.
    import openvino as ov

    ir = tmp_path / "int8-ir"
    result = run_cli("export", checkpoint, "-o", ir, "--format", "openvino", "--precision", "int8", "--calib", micro["images"] / "album",
                     "--calib-size", 8)
    assert result.exit_code == 0, result.output
    constants = [op for op in ov.Core().read_model(str(ir / "model.xml")).get_ops() if op.get_type_name() == "Constant"]
    big = [op for op in constants if int(np.prod(list(op.get_output_shape(0)))) == classes * des * dim]
    assert len(big) == 1 and big[0].get_element_type() == ov.Type.i8
    assert Tagger.load(ir, runtime="openvino").predict(_batch(micro)).shape == (6, classes)


@pytest.mark.slow
def test_qat_under_torchrun_two_ranks_agree_and_match_the_single_process_contract(micro, qat_run, tmp_path):
    """`torchrun --nproc_per_node 2 -m ram_edge.cli.main quantize --method qat`: gloo on CPU, PTQ once on rank 0."""
    import os
    import subprocess
    import sys

    out, run = tmp_path / "qat", tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ram_edge.cli.main",
           "quantize", str(micro["checkpoint"]), "-o", str(out), "--config", str(qat_run["config"]),
           "--calib", str(micro["images"] / "album"), "--run-dir", str(run), "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    # One PTQ starting point, one output, written by rank 0.
    assert (run / "ptq" / "quantized.safetensors").is_file() and (out / "quantized.safetensors").is_file()
    assert proc.stderr.count("post-training quantization first") == 1
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r for r in log if r.get("event") == "start"][0]["world"] == 2
    assert [r for r in log if r.get("event") == "finished"][0]["ranks_identical"] is True
    steps = [r for r in log if "distillation" in r]
    assert [r["step"] for r in steps] == list(range(1, 11)) and all(np.isfinite(r["loss"]) for r in steps)
    record = json.loads((out / "config.json").read_text())["source"]["quantization"]
    assert record["method"] == "qat" and record["qat"]["steps"] == 10
    # Two ranks of 8 images each train towards the float teacher as one process does.
    from ram_edge.config import PreprocessConfig
    from ram_edge.quantize.calibration import load_calibration

    images = load_calibration(micro["images"] / "album", PreprocessConfig(image_size=32), 24, progress=False).images
    before, after = _kl_on(run / "ptq", micro, images), _kl_on(out, micro, images)
    assert after < 0.9 * before, (before, after)


def _description_graph(classes: int, des: int, dim: int, embeddings: np.ndarray):
    """RAM++'s two products with its description embeddings, as the INT8 export writes them: similarities
    E (C, des, D) x dequantized image embedding^T, then dequantized softmax weights x E."""
    from onnx import TensorProto, helper, numpy_helper

    f = TensorProto.FLOAT
    nodes = [
        helper.make_node("Transpose", ["v"], ["vt"], perm=[1, 0]),
        helper.make_node("QuantizeLinear", ["vt", "sv", "zu"], ["vq"]),
        helper.make_node("DequantizeLinear", ["vq", "sv", "zu"], ["vdq"]),
        helper.make_node("MatMul", ["E", "vdq"], ["logits"]),
        helper.make_node("Transpose", ["logits"], ["lt"], perm=[2, 0, 1]),
        helper.make_node("Softmax", ["lt"], ["w"], axis=2),
        helper.make_node("QuantizeLinear", ["w", "sw", "zu"], ["wq"]),
        helper.make_node("DequantizeLinear", ["wq", "sw", "zu"], ["wdq"]),
        helper.make_node("Unsqueeze", ["wdq", "axis2"], ["wu"]),
        helper.make_node("MatMul", ["wu", "E"], ["mixed"]),
    ]
    inits = [numpy_helper.from_array(embeddings, "E"), numpy_helper.from_array(np.array(0.02, np.float32), "sv"),
             numpy_helper.from_array(np.array(1 / 255, np.float32), "sw"), numpy_helper.from_array(np.array(0, np.uint8), "zu"),
             numpy_helper.from_array(np.array([2], np.int64), "axis2")]
    graph = helper.make_graph(nodes, "descriptions", [helper.make_tensor_value_info("v", f, ["B", dim])],
                              [helper.make_tensor_value_info("logits", f, [classes, des, "B"]),
                               helper.make_tensor_value_info("mixed", f, ["B", classes, 1, dim])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_description_embeddings_become_int8_and_their_similarities_are_computed_in_slices():
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from ram_edge.export.int8 import quantize_matmul_constants

    rng = np.random.default_rng(0)
    classes, des, dim = 10, 3, 8
    embeddings = rng.normal(size=(classes, des, dim)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=-1, keepdims=True)
    model = _description_graph(classes, des, dim, embeddings)
    assert quantize_matmul_constants(model.graph, min_elements=16, chunk_elements=4 * des * dim) == 1
    onnx.checker.check_model(model)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    stored = [a for a in inits.values() if a.size == embeddings.size]
    assert len(stored) == 1 and stored[0].dtype == np.int8  # one 8-bit copy
    # The similarities (constant on the left: no int8 kernel) in slices of 4 classes; the mixture reads the whole.
    products = [n for n in model.graph.node if n.op_type == "MatMul"]
    assert len(products) == 3 + 1 and [n.op_type for n in model.graph.node].count("Slice") == 3
    v = rng.normal(size=(2, dim)).astype(np.float32)
    logits, mixed = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"v": v})
    # Reference: the same quantization grid in numpy.
    scale = np.abs(embeddings).max() / 127
    e8 = np.clip(np.rint(embeddings / scale), -127, 127) * scale
    vq = np.clip(np.rint(v.T / 0.02), 0, 255) * 0.02
    expected_logits = e8 @ vq
    assert logits.shape == (classes, des, 2) and np.allclose(logits, expected_logits, atol=1e-5)
    weights = np.exp(expected_logits.transpose(2, 0, 1))
    weights /= weights.sum(-1, keepdims=True)
    wq = np.clip(np.rint(weights * 255), 0, 255) / 255
    assert np.allclose(mixed[:, :, 0, :], np.einsum("bcj,cjd->bcd", wq, e8), atol=1e-4)
    assert np.abs(e8 - embeddings).max() <= scale / 2 + 1e-7
    # OpenVINO's form (chunk_elements=0): the same 8-bit constant, no slices (it would fold them into copies).
    whole = _description_graph(classes, des, dim, embeddings)
    assert quantize_matmul_constants(whole.graph, min_elements=16, chunk_elements=0) == 1
    assert [n.op_type for n in whole.graph.node].count("MatMul") == 2 and "Slice" not in [n.op_type for n in whole.graph.node]


@pytest.mark.slow
def test_ort_int8_baseline_report_times_fp32_dynamic_and_ram_edge_int8(micro, ptq_checkpoint, tmp_path):
    from experiment_scripts import load

    main = load("ort_int8_baseline").main

    fp32, int8 = tmp_path / "fp32", tmp_path / "int8"
    assert run_cli("export", micro["checkpoint"], "-o", fp32, "--format", "onnx").exit_code == 0
    assert run_cli("export", ptq_checkpoint, "-o", int8, "--format", "onnx").exit_code == 0
    report = tmp_path / "report" / "baseline.md"
    main(["--fp32", str(fp32), "--int8", str(int8), "--workdir", str(tmp_path / "work"), "--report", str(report),
          "--rounds", "2", "--iters", "2", "--threads", "1", "--name", "micro"])
    result = json.loads(report.with_suffix(".json").read_text())
    assert set(result["p50_ms"]) == {"fp32", "dynamic", "ram_edge"} and all(len(t) == 2 for t in result["rounds_ms"].values())
    # The baseline is onnxruntime's dynamic quantization and ram-edge's graph runs onnxruntime's int8 kernels.
    assert "DynamicQuantizeMatMul" in result["ops_ms"]["dynamic"] or "MatMulInteger" in result["ops_ms"]["dynamic"]
    assert "MatMulIntegerToFloat" in result["ops_ms"]["ram_edge"] and "MatMulIntegerToFloat" not in result["ops_ms"]["fp32"]
    text = report.read_text()
    assert "quantize_dynamic" in text and "x fp32" in text and "Reproduce: `python benchmarks/experiments/ort_int8_baseline.py" in text
    assert not list((tmp_path / "work").glob("profile-*"))  # profiler traces are read and removed
    # The wrong bundle in the wrong place is a clear error, not a traceback.
    with pytest.raises(SystemExit):
        main(["--fp32", str(int8), "--int8", str(fp32), "--workdir", str(tmp_path / "work"), "--report", str(report)])


@pytest.mark.slow
def test_quantized_checkpoint_files_are_readable_by_other_users(ptq_checkpoint):
    """A checkpoint copied to a device and run by a service account: no file of it may be private (0600)."""
    for path in ptq_checkpoint.iterdir():
        assert path.stat().st_mode & 0o444 == 0o444, f"{path.name}: {oct(path.stat().st_mode)}"


@pytest.mark.slow
def test_export_refuses_an_existing_output_before_loading_nncf(ptq_checkpoint, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "exists"
    out.mkdir()
    code = ("import sys\nfrom ram_edge.cli.main import main\ntry:\n"
            f"    main(['export', {str(ptq_checkpoint)!r}, '-o', {str(out)!r}])\n"
            "finally:\n    print('nncf loaded' if 'nncf' in sys.modules else 'nncf not loaded', file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "already exists" in proc.stderr and "nncf not loaded" in proc.stderr, proc.stderr


@pytest.mark.slow
def test_nncf_info_lines_stay_off_the_terminal_unless_debugging(micro, tmp_path, monkeypatch):
    import logging

    from nncf.common.logging.logger import nncf_logger

    from ram_edge.models.nncf_kernels import quiet_nncf_logs

    monkeypatch.delenv("RAM_EDGE_DEBUG", raising=False)
    quiet_nncf_logs()
    assert not nncf_logger.isEnabledFor(logging.INFO) and nncf_logger.isEnabledFor(logging.WARNING)
    monkeypatch.setenv("RAM_EDGE_DEBUG", "1")
    quiet_nncf_logs()
    assert nncf_logger.isEnabledFor(logging.INFO)
    monkeypatch.delenv("RAM_EDGE_DEBUG")
    quiet_nncf_logs()
    # What the terminal shows: NNCF's handler writes to the process's own streams, so a real process.
    import subprocess
    import sys

    env = {k: v for k, v in __import__("os").environ.items() if k != "RAM_EDGE_DEBUG"}
    proc = subprocess.run([sys.executable, "-m", "ram_edge.cli.main", "quantize", str(micro["checkpoint"]), "-o", str(tmp_path / "q"),
                           "--calib", str(micro["images"])], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "INFO:nncf" not in proc.stdout + proc.stderr and "Not adding activation input quantizer" not in proc.stderr


@pytest.mark.parametrize("settings", [{"smooth_quant": False}, {"smooth_quant_alpha": 0.5, "bias_correction": False},
                                      {"preset": "performance"}])
@pytest.mark.slow
def test_nncf_ptq_choices_quantize_and_export(micro, tmp_path, settings):
    """SmoothQuant off / another alpha / no bias correction / symmetric activations: each quantizes, is recorded, and
    exports to an INT8 ONNX that onnxruntime loads (with SmoothQuant off, NNCF's strip left a shared quantizer behind
    as OpenVINO's custom FakeQuantize op)."""
    import onnx
    import yaml

    config = tmp_path / "q.yaml"
    config.write_text(yaml.safe_dump({"method": "ptq", **settings}))
    result = run_cli("quantize", micro["checkpoint"], "-o", tmp_path / "q", "--calib", micro["images"], "--config", config)
    assert result.exit_code == 0, result.output
    recorded = json.loads((tmp_path / "q" / "config.json").read_text())["source"]["quantization"]["config"]
    assert all(recorded[k] == v for k, v in settings.items())
    result = run_cli("export", tmp_path / "q", "-o", tmp_path / "onnx")
    assert result.exit_code == 0, result.output
    ops = {n.op_type for n in onnx.load(str(tmp_path / "onnx" / "model.onnx")).graph.node}
    assert "FakeQuantize" not in ops and "QuantizeLinear" in ops


@pytest.mark.parametrize("bad, needle", [({"smooth_quant_alpha": 0}, "smooth_quant_alpha"), ({"preset": "fast"}, "preset")])
def test_nncf_ptq_choices_are_checked(bad, needle):
    from ram_edge.errors import QuantizeError
    from ram_edge.quantize.config import QuantizeConfig

    with pytest.raises(QuantizeError, match=needle):
        QuantizeConfig.from_dict(bad)


# ---- the held-out check -----------------------------------------------------------------------------

def test_held_out_split_sizes():
    from ram_edge.quantize.config import QuantizeConfig
    from ram_edge.quantize.held_out import extra_images, held_out_count

    cfg = QuantizeConfig()
    assert extra_images(cfg) == 75 and held_out_count(375, cfg) == 75  # 1 in 5 of what is read, 300 calibrate
    assert held_out_count(100, cfg) == 20 and held_out_count(40, cfg) == 16 and held_out_count(24, cfg) == 4
    off = QuantizeConfig(held_out_fraction=0)
    assert extra_images(off) == 0 and held_out_count(375, off) == 0
    assert extra_images(QuantizeConfig(method="weights")) == 0


def test_held_out_warning_names_the_remedies():
    from ram_edge.quantize.held_out import warning

    assert warning({"passed": True}) is None
    message = warning({"passed": False, "threshold": 0.97, "tag_set_f1": 0.9})
    assert message.startswith("warning: ") and "0.900" in message and "--method qat" in message and "smooth_quant: false" in message


@pytest.mark.slow
def test_quantize_reports_and_records_the_held_out_check_as_compare_computes_it(micro, tmp_path):
    from ram_edge.checkpoint_dir import read_checkpoint_dir

    out = tmp_path / "q"
    result = run_cli("quantize", micro["checkpoint"], "-o", out, "--calib", micro["images"], "--json")
    assert result.exit_code == 0, result.output
    record = read_checkpoint_dir(out).source["quantization"]
    check = record["held_out"]
    assert check["images"] == 4 and record["calibration"]["images"] == 20  # 24 readable photos: 1 in 5 held out
    assert len(check["image_paths"]) == 4 and all(p.startswith(str(micro["images"].resolve())) for p in check["image_paths"])
    assert json.loads(result.stdout)["held_out"]["tag_set_f1"] == check["tag_set_f1"]
    assert f"held-out check of the quantized model on 4 image(s)" in result.stderr
    assert ("warning: INT8 changed the tags" in result.stderr) == (not check["passed"])
    # The same figure from `ram-edge compare` on the same images, the float and the quantized checkpoint on torch.
    compared = run_cli("compare", "-m", f"{micro['checkpoint']}@torch", "-m", f"{out}@torch", *check["image_paths"], "--json")
    assert compared.exit_code == 0, compared.output
    agreement = json.loads(compared.stdout)["models"][1]["agreement"]
    assert agreement["tag_set_f1"] == pytest.approx(check["tag_set_f1"], abs=1e-9)
    assert agreement["max_abs_diff"] == pytest.approx(check["max_abs_diff"], abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("fmt, runtime", [("onnx", "ort"), ("openvino", "openvino")])
def test_export_checks_the_written_bundle_on_the_held_out_photos(micro, tmp_path, fmt, runtime):
    from ram_edge.bundle import read_bundle
    from ram_edge.compare import compare_scores
    from ram_edge import Tagger

    q = tmp_path / "q"
    assert run_cli("quantize", micro["checkpoint"], "-o", q, "--calib", micro["images"]).exit_code == 0
    result = run_cli("export", q, "-o", tmp_path / "bundle", "--format", fmt)
    assert result.exit_code == 0, result.output
    manifest = read_bundle(tmp_path / "bundle").manifest["quantization"]
    photos, random_inputs = manifest["vs_float_photos"], manifest["vs_float"]
    assert photos["images"] == 4 and photos["runtime"] == runtime and "held out" in photos["inputs"]
    assert "random" in random_inputs["inputs"]  # the random-tensor figure stays, labelled as such
    assert f"held-out check of the written bundle ({runtime}) on 4 photo(s)" in result.stderr
    # The figure is compare's on the same photos: the float checkpoint (torch) against the bundle on its runtime.
    paths = manifest["held_out"]["image_paths"]
    with Tagger.load(micro["checkpoint"], runtime="torch") as ref, Tagger.load(tmp_path / "bundle", runtime=runtime) as got:
        agreement = compare_scores(ref.scores(paths), got.scores(paths), got.labels)
    assert agreement.tag_set_f1 == pytest.approx(photos["tag_set_f1"], abs=1e-9)
    assert agreement.max_abs_diff == pytest.approx(photos["max_abs_diff"], abs=1e-5)
