"""Bad input never crashes: over 500 generated bad images, corrupted bundles and checkpoints, and every
command-line argument accounted for. Zero tracebacks, a clear error per input, nothing half-written."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ram_edge import Tagger
from ram_edge.default_model import default_model_path
from ram_edge.errors import RamEdgeError

pytest.importorskip("onnxruntime", reason="the ort extra is needed: pip install 'ram-edge[ort]'")

EXAMPLES = Path(__file__).resolve().parents[1] / "ram_edge" / "assets" / "default_model" / "examples"
FORMATS = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP", "tif": "TIFF", "gif": "GIF", "bmp": "BMP"}


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _huge_png(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _png_chunk(b"IEND", b"")


def _huge_jpeg(valid: bytes, width: int, height: int) -> bytes:
    data = bytearray(valid)
    at = data.find(b"\xff\xc0")
    if at < 0:
        at = data.find(b"\xff\xc2")
    struct.pack_into(">HH", data, at + 5, height, width)
    return bytes(data)


def bad_images(folder: Path) -> list[Path]:
    """Write >= 500 bad or odd image files into `folder` (deterministic)."""
    rng = np.random.default_rng(1234)
    base = Image.open(EXAMPLES / "scene-3.png").convert("RGB")
    valid = {ext: _encode(base, fmt) for ext, fmt in FORMATS.items()}
    files: dict[str, bytes] = {}
    for ext, data in valid.items():
        for cut in np.unique(np.linspace(1, len(data) - 1, 20).astype(int)):
            files[f"truncated-{cut}.{ext}"] = data[:cut]
        for i in range(55):
            mutated = bytearray(data)
            for pos in rng.integers(0, len(data), size=int(rng.integers(1, 12))):
                mutated[pos] = int(rng.integers(0, 256))
            files[f"mutated-{i}.{ext}"] = bytes(mutated)
        files[f"empty.{ext}"] = b""
        for i in range(8):
            files[f"random-{i}.{ext}"] = rng.bytes(int(rng.integers(1, 5000)))
    files["huge.png"] = _huge_png(100_000, 100_000)
    files["huge-wide.png"] = _huge_png(2**31 - 1, 1)
    files["huge.jpg"] = _huge_jpeg(valid["jpg"], 65_000, 65_000)
    files["zero-size.png"] = _huge_png(0, 0)
    odd = {
        "one-pixel.png": _encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"),
        "one-pixel-grey.jpg": _encode(Image.new("L", (1, 1), 128), "JPEG"),
        "sixteen-bit.png": _encode(Image.fromarray((np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16)), "PNG"),
        "cmyk.jpg": _encode(base.convert("CMYK"), "JPEG"),
        "cmyk.tif": _encode(base.convert("CMYK"), "TIFF"),
        "palette.png": _encode(base.convert("P"), "PNG", transparency=0),
        "la.png": _encode(base.convert("LA"), "PNG"),
        "float.tif": _encode(Image.fromarray(np.full((8, 8), 0.5, np.float32)), "TIFF"),
        "animated.gif": _encode(base, "GIF", save_all=True, append_images=[base.rotate(90)], duration=100, loop=0),
        "animated.webp": _encode(base, "WEBP", save_all=True, append_images=[base.rotate(90)], duration=100),
        "tall.png": _encode(Image.new("RGB", (1, 3000)), "PNG"),
        "not-an-image.txt.jpg": b"hello, I am a text file\n",
        "html.png": b"<html><body>404 not found</body></html>",
    }
    exif = base.getexif()
    exif[0x0112] = 7  # a real orientation, then broken below
    jpeg_exif = bytearray(_encode(base, "JPEG", exif=exif.tobytes()))
    app1 = jpeg_exif.find(b"Exif")
    for i in range(12):
        broken = bytearray(jpeg_exif)
        for pos in rng.integers(app1, app1 + 60, size=6):
            broken[pos] = int(rng.integers(0, 256))
        odd[f"broken-exif-{i}.jpg"] = bytes(broken)
    files.update(odd)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in sorted(files.items()):
        path = folder / name
        path.write_bytes(data)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory) -> tuple[Path, list[Path]]:
    folder = tmp_path_factory.mktemp("fuzz") / "images"
    return folder, bad_images(folder)


@pytest.fixture(scope="module")
def tagger():
    with Tagger.load(default_model_path(), runtime="ort") as t:
        yield t


@pytest.mark.slow
def test_five_hundred_bad_images_never_crash(bad_folder, tagger):
    _, paths = bad_folder
    assert len(paths) >= 500
    results, probs = tagger.tag_many(paths, batch_size=16)
    assert len(results) == len(paths)
    for path, result in zip(paths, results):
        assert result.image == str(path)
        if not result.ok:
            assert path.name in result.error and "Traceback" not in result.error
            assert len(result.error) < 500
    failed = [r for r in results if not r.ok]
    assert len(failed) >= 300  # truncations, random bytes, empty files, huge dimensions, most mutations
    assert all(not r.ok for r, p in zip(results, paths) if p.name.startswith(("empty", "huge", "zero-size", "random")))
    assert all(r.ok for r, p in zip(results, paths) if p.name in ("one-pixel.png", "sixteen-bit.png", "cmyk.jpg", "palette.png",
                                                                   "animated.gif", "animated.webp", "la.png"))
    ok_rows = np.array([r.ok for r in results])
    assert np.isfinite(probs[ok_rows]).all() and np.isnan(probs[~ok_rows]).all()


def test_bad_in_memory_inputs(tagger):
    cases = [np.zeros((4, 4, 3), np.float32), np.zeros((4, 4, 2), np.uint8), np.zeros((0, 4, 3), np.uint8),
             np.zeros((4,), np.uint8), "not/a/file.png", 42, None, b"\x89PNG", Image.frombytes("RGB", (1, 1), b"\0\0\0")]
    results, _ = tagger.tag_many(cases)
    assert [r.ok for r in results] == [False] * 8 + [True]
    for result in results[:8]:
        assert result.error and "Traceback" not in result.error


def test_cli_accounts_for_every_argument(bad_folder, tmp_path):
    folder, paths = bad_folder
    empty = tmp_path / "no-images"
    empty.mkdir()
    (empty / "notes.txt").write_text("no pictures here")
    good = EXAMPLES / "scene-1.png"
    args = [str(good), str(tmp_path / "missing.jpg"), str(empty), str(EXAMPLES / "examples.json"), str(folder)]
    proc = subprocess.run([sys.executable, "-m", "ram_edge.cli.main", "tag", "--json", *args], capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    named = {row["image"] for row in rows}
    assert {str(good), str(tmp_path / "missing.jpg"), str(empty), str(EXAMPLES / "examples.json")} <= named
    assert {str(p) for p in paths if p.suffix.lower() in (".png", ".jpg", ".webp", ".tif", ".gif", ".bmp")} <= named
    by_name = {row["image"]: row for row in rows}
    assert "tags" in by_name[str(good)] and "folder holds no image" in by_name[str(empty)]["error"]
    assert "not found" in by_name[str(tmp_path / "missing.jpg")]["error"]
    human = subprocess.run([sys.executable, "-m", "ram_edge.cli.main", "tag", str(empty), str(tmp_path / "missing.jpg")],
                           capture_output=True, text=True)
    assert human.returncode == 1 and "Traceback" not in human.stderr
    assert str(empty) in human.stderr and "missing.jpg" in human.stderr and "2 of 2" in human.stderr


# ---- corrupted bundles and checkpoints ---------------------------------------------------------

def _corruptions(directory: Path):
    """(name, function that corrupts a copy of `directory`) for every file: truncated, emptied, flipped bytes."""
    for file in sorted(p for p in directory.iterdir() if p.is_file()):
        rel = file.name

        def truncate(d, rel=rel):
            data = (d / rel).read_bytes()
            (d / rel).write_bytes(data[: len(data) // 2])

        def empty(d, rel=rel):
            (d / rel).write_bytes(b"")

        def flip(d, rel=rel):
            data = bytearray((d / rel).read_bytes())
            for pos in np.random.default_rng(len(data)).integers(0, len(data), size=16):
                data[pos] ^= 0xFF
            (d / rel).write_bytes(bytes(data))

        def remove(d, rel=rel):
            (d / rel).unlink()

        yield from ((f"{rel}:truncated", truncate), (f"{rel}:empty", empty), (f"{rel}:flipped", flip), (f"{rel}:missing", remove))


MANIFEST_EDITS = {
    "format": lambda m: m.update(format="something-else"),
    "format_version": lambda m: m.update(format_version="1"),
    "model_format": lambda m: m.update(model_format="tflite"),
    "precision": lambda m: m.update(precision=None),
    "precision-unknown": lambda m: m.update(precision="int4"),
    "family": lambda m: m.update(family="yolo"),
    "labels": lambda m: m.update(labels={"tags": "not a list"}),
    "labels-count": lambda m: m["labels"].update(tags=m["labels"]["tags"][:-1]),
    "preprocess": lambda m: m.update(preprocess={"image_size": -3}),
    "preprocess-mean": lambda m: m["preprocess"].update(mean=[0.5]),
    "io": lambda m: m.pop("io"),
    "io-input": lambda m: m["io"].update(inputs=[{"name": "pixels"}]),
    "files": lambda m: m.update(files={"model": "../../etc/passwd"}),
    "files-type": lambda m: m.update(files=["model.onnx"]),
    "sha256": lambda m: m.update(sha256={}),
    "not-a-dict": None,
}


def _tag_with(model: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ram_edge.cli.main", "tag", "--model", str(model), str(EXAMPLES / "scene-1.png")],
                          capture_output=True, text=True)


def _expect_clean_refusal(load, what: str) -> None:
    try:
        load()
    except RamEdgeError as exc:
        assert str(exc) and "Traceback" not in str(exc), what
        return
    except Exception as exc:  # noqa: BLE001 - this is the failure the test exists for
        pytest.fail(f"{what}: {type(exc).__name__} instead of a clear ram-edge error: {exc}")


@pytest.mark.slow
@pytest.mark.parametrize("kind, runtime", [("bundle", "ort"), ("bundle_fp32", "openvino")])
def test_corrupted_bundles_are_refused_clearly(kind, runtime, tmp_path):
    pytest.importorskip(runtime if runtime != "ort" else "onnxruntime")
    source = default_model_path(kind)
    cases = list(_corruptions(source))
    for name, corrupt in cases:
        target = tmp_path / name.replace(":", "-")
        shutil.copytree(source, target)
        corrupt(target)
        _expect_clean_refusal(lambda: Tagger.load(target, runtime=runtime), f"{kind} {name}")
    # A corrupted model whose manifest was re-hashed to match: the runtime itself must refuse it clearly.
    from ram_edge.bundle import write_manifest

    for name, corrupt in cases:
        if not name.startswith("model.onnx") or name.endswith("missing"):
            continue
        target = tmp_path / ("rehashed-" + name.replace(":", "-"))
        shutil.copytree(source, target)
        corrupt(target)
        write_manifest(target, json.loads((target / "manifest.json").read_text()))
        _expect_clean_refusal(lambda: Tagger.load(target, runtime=runtime).tag([EXAMPLES / "scene-1.png"]), f"rehashed {name}")
    for field, edit in MANIFEST_EDITS.items():
        target = tmp_path / f"manifest-{field}"
        shutil.copytree(source, target)
        manifest = json.loads((target / "manifest.json").read_text())
        if edit is None:
            manifest = ["not", "a", "dict"]
        else:
            edit(manifest)
        (target / "manifest.json").write_text(json.dumps(manifest))
        _expect_clean_refusal(lambda: Tagger.load(target, runtime=runtime).tag([EXAMPLES / "scene-1.png"]), f"manifest {field}")
    proc = _tag_with(tmp_path / "manifest-labels")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


CHECKPOINT_EDITS = {
    "config-family": lambda c: c["model"].update(family="yolo"),
    "config-swin": lambda c: c["model"].pop("swin"),
    "config-swin-depths": lambda c: c["model"]["swin"].update(depths="deep"),
    "config-num-classes": lambda c: c["model"].update(num_classes=3),
    "config-types": lambda c: c["model"].update(embed_dim="wide"),
    "config-format": lambda c: c.update(format_version=7),
    "config-model": lambda c: c.update(model=None),
    "config-list": None,
}


@pytest.mark.slow
def test_corrupted_checkpoints_are_refused_clearly(tmp_path):
    pytest.importorskip("torch")
    source = default_model_path("checkpoint")
    for name, corrupt in _corruptions(source):
        target = tmp_path / name.replace(":", "-")
        shutil.copytree(source, target)
        corrupt(target)
        _expect_clean_refusal(lambda: Tagger.load(target, runtime="torch").tag([EXAMPLES / "scene-1.png"]), f"checkpoint {name}")
    for field, edit in CHECKPOINT_EDITS.items():
        target = tmp_path / field
        shutil.copytree(source, target)
        config = json.loads((target / "config.json").read_text())
        if edit is None:
            config = [config]
        else:
            edit(config)
        (target / "config.json").write_text(json.dumps(config))
        _expect_clean_refusal(lambda: Tagger.load(target, runtime="torch").tag([EXAMPLES / "scene-1.png"]), f"checkpoint {field}")


@pytest.mark.slow
def test_commands_on_corrupted_inputs_write_nothing(tmp_path):
    pytest.importorskip("torch")
    source = default_model_path("checkpoint")
    broken = tmp_path / "broken"
    shutil.copytree(source, broken)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 3])
    (tmp_path / "data.jsonl").write_text(json.dumps({"image": str(EXAMPLES / "scene-1.png"), "tags": ["bell"]}) + "\n")
    for args in (["export", broken, "-o", tmp_path / "out"], ["eval", broken, tmp_path / "data.jsonl"],
                 ["export", tmp_path / "nowhere", "-o", tmp_path / "out"], ["convert", tmp_path / "nothing.pth", "-o", tmp_path / "out", "--tags", tmp_path / "data.jsonl"],
                 ["convert", EXAMPLES / "scene-1.png", "-o", tmp_path / "out", "--tags", tmp_path / "data.jsonl"], ["eval", source, tmp_path / "missing.jsonl"],
                 ["bench", broken]):
        proc = subprocess.run([sys.executable, "-m", "ram_edge.cli.main", *map(str, args)], capture_output=True, text=True)
        assert proc.returncode == 2, (args, proc.stderr)
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, (args, proc.stderr)
        assert not (tmp_path / "out").exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no temporary leftovers


@pytest.mark.slow
def test_broken_config_files_are_one_line_errors(tmp_path):
    """A training config, quantization config or benchmark suite that is not YAML, not UTF-8 or not a mapping."""
    pytest.importorskip("yaml")
    files = {
        "unclosed.yaml": b"data: [\n",
        "binary.yaml": b"\x7fELF\x02\x01\x01\x00\xd0\xd1\xff\xfe",
        "list.yaml": b"- a\n- b\n",
        "unclosed.json": b'{"steps": 3,\n',
    }
    source = default_model_path("checkpoint")
    for name, data in files.items():
        config = tmp_path / name
        config.write_bytes(data)
        for args in (["train", config], ["quantize", source, "-o", tmp_path / "q", "--calib", EXAMPLES, "--config", config],
                     ["bench", "--suite", config, "-o", tmp_path / "reports"]):
            proc = subprocess.run([sys.executable, "-m", "ram_edge.cli.main", *map(str, args)], capture_output=True, text=True)
            assert proc.returncode == 2, (args, proc.stderr)
            assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, (args, proc.stderr)
            assert str(config) in proc.stderr, (args, proc.stderr)
        assert not (tmp_path / "q").exists() and not (tmp_path / "reports").exists()


def test_a_bundle_given_where_a_checkpoint_is_needed_names_the_mix_up(tmp_path):
    pytest.importorskip("torch")
    bundle = default_model_path("bundle")
    for args in (["export", bundle, "-o", tmp_path / "out"], ["quantize", bundle, "-o", tmp_path / "out", "--calib", EXAMPLES]):
        proc = subprocess.run([sys.executable, "-m", "ram_edge.cli.main", *map(str, args)], capture_output=True, text=True)
        assert proc.returncode == 2 and "an exported bundle, not a checkpoint directory" in proc.stderr, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
