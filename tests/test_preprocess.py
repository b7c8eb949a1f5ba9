"""Image loading and the official transform: golden parity, every Pillow mode, bad files."""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import pytest
from PIL import Image

from conftest import require_shared
from ram_edge.config import PreprocessConfig
from ram_edge.errors import ImageError
from ram_edge.preprocess import IMAGE_EXTENSIONS, iter_image_files, load_image, preprocess, preprocess_batch

CFG224 = PreprocessConfig(image_size=224)


def _gradient(w: int = 40, h: int = 30) -> Image.Image:
    """An RGB image with distinct values per pixel, so that rotations and resizes are visible."""
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) % 256], axis=-1).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


# --- golden parity -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ram_tiny", "ram_plus_tiny"])
def test_golden_inputs_bit_exact(name):
    folder = require_shared("golden", name)
    images = json.loads((folder / "config.json").read_text(encoding="utf-8"))["images"]
    ref = np.load(folder / "inputs.npy")
    # None of the four images carries an EXIF orientation, so exif_transpose=True changes nothing.
    for n in images:
        assert Image.open(folder / "images" / n).getexif().get(0x0112, 1) == 1
    batch = preprocess_batch([folder / "images" / n for n in images], CFG224, exif_transpose=True)
    assert batch.shape == ref.shape == (4, 3, 224, 224) and batch.dtype == np.float32
    # Measured: max abs diff 0.0 (bit-identical) for both fixtures.
    assert np.abs(batch - ref).max() <= 1e-6
    assert np.array_equal(batch, ref)


def test_preprocess_layout_and_arithmetic():
    img = _gradient()
    x = preprocess(img, PreprocessConfig(image_size=32))
    assert x.shape == (3, 32, 32) and x.dtype == np.float32 and x.flags.c_contiguous
    hwc = np.asarray(img.resize((32, 32), Image.BILINEAR))
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    for c in range(3):
        expect = (hwc[:, :, c].astype(np.float32) / np.float32(255) - mean[c]) / std[c]
        assert np.array_equal(x[c], expect)
    bicubic = preprocess(img, PreprocessConfig(image_size=32, resample="bicubic"))
    assert not np.array_equal(bicubic, x)
    # A 1x1 image becomes a constant image.
    one = preprocess(Image.new("RGB", (1, 1), (10, 20, 30)), PreprocessConfig(image_size=16))
    assert all(np.unique(one[c]).size == 1 for c in range(3))


def test_preprocess_needs_rgb():
    with pytest.raises(ImageError, match="needs an RGB PIL image, got mode 'L'"):
        preprocess(Image.new("L", (4, 4)), CFG224)


# --- modes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode,suffix",
    [("L", "png"), ("P", "gif"), ("1", "png"), ("CMYK", "jpg"), ("YCbCr", "tif"), ("LAB", "tif"), ("RGBA", "png"),
     ("LA", "png"), ("RGB", "ppm"), ("L", "pgm")],
)
def test_modes_from_files_match_convert_rgb(tmp_path, mode, suffix):
    path = tmp_path / f"img.{suffix}"
    src = _gradient().convert(mode)
    if mode in ("RGBA", "LA"):
        src.putalpha(Image.linear_gradient("L").resize(src.size))
    src.save(path)
    with Image.open(path) as ref_img:
        assert ref_img.mode == mode
        expect = np.asarray(ref_img.convert("RGB"))
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (40, 30)
    # Alpha is dropped, not composited: exactly the official convert('RGB').
    assert np.array_equal(np.asarray(out), expect)


@pytest.mark.parametrize("mode", ["HSV", "RGBa", "RGBX", "PA", "La"])
def test_modes_in_memory(mode):
    if mode == "PA":
        src = _gradient().convert("P").convert("PA")
        expect = src.convert("RGB")
    elif mode == "La":
        src = Image.new("La", (5, 4), (100, 128))
        expect = src.convert("LA").convert("RGB")  # Pillow has no direct La -> RGB
    else:
        src = _gradient().convert(mode)
        expect = src.convert("RGB")
    out = load_image(src)
    assert out.mode == "RGB"
    assert np.array_equal(np.asarray(out), np.asarray(expect))


def _grey16(values: np.ndarray, mode: str = "I;16") -> Image.Image:
    """A 16-bit grey image of `values` in one of Pillow's byte orders."""
    order = {"I;16": "<u2", "I;16L": "<u2", "I;16B": ">u2", "I;16N": "=u2"}[mode]
    h, w = values.shape
    return Image.frombytes(mode, (w, h), values.astype(order).tobytes())


@pytest.mark.parametrize("mode,suffix", [("I;16", "png"), ("I;16B", "tif"), ("I;16", "tif")])
def test_sixteen_bit_grey_is_scaled(tmp_path, mode, suffix):
    values = np.array([[0, 256, 32896, 65535]], dtype=np.uint16)
    img = _grey16(values, mode)
    path = tmp_path / f"g16.{suffix}"
    img.save(path)
    with Image.open(path) as check:
        assert check.mode == mode
    out = np.asarray(load_image(path))
    assert out[0, :, 0].tolist() == [0, 1, 128, 255]
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 0], out[..., 2])


def test_sixteen_bit_pgm_and_int32(tmp_path):
    values = np.array([[0, 32896, 65535]], dtype=np.uint16)
    _grey16(values).save(tmp_path / "g.pgm")
    with Image.open(tmp_path / "g.pgm") as check:
        assert check.mode == "I"  # Pillow opens 16-bit PGM as 32-bit 'I'
    assert np.asarray(load_image(tmp_path / "g.pgm"))[0, :, 0].tolist() == [0, 128, 255]
    i32 = Image.fromarray(np.array([[-5, 32896, 70000]], dtype=np.int32), "I")
    i32.save(tmp_path / "i.tif")
    assert np.asarray(load_image(tmp_path / "i.tif"))[0, :, 0].tolist() == [0, 128, 255]
    for mode in ("I;16L", "I;16N"):
        img = _grey16(values, mode)
        assert img.mode == mode
        assert np.asarray(load_image(img))[0, :, 0].tolist() == [0, 128, 255]


def test_float_image_is_clipped(tmp_path):
    values = np.array([[-5.0, 12.7, 254.9, 300.0]], dtype=np.float32)
    Image.fromarray(values, "F").save(tmp_path / "f.tif")
    out = np.asarray(load_image(tmp_path / "f.tif"))
    assert out[0, :, 0].tolist() == [0, 12, 254, 255]
    assert np.array_equal(out, np.asarray(Image.fromarray(values, "F").convert("RGB")))  # same as Pillow


def test_numpy_sources():
    rgb = np.asarray(_gradient())
    assert np.array_equal(np.asarray(load_image(rgb)), rgb)
    grey = rgb[:, :, 0]
    assert np.array_equal(np.asarray(load_image(grey)), np.repeat(grey[:, :, None], 3, axis=2))
    rgba = np.concatenate([rgb, np.zeros_like(rgb[:, :, :1])], axis=2)
    assert np.array_equal(np.asarray(load_image(rgba)), rgb)
    with pytest.raises(ImageError, match=r"array image of shape \(30, 40, 3\): dtype float32 is not supported"):
        load_image(rgb.astype(np.float32))
    with pytest.raises(ImageError, match=r"shape \(30, 40, 2\): expected HxW"):
        load_image(rgb[:, :, :2])
    with pytest.raises(ImageError, match="cannot load an image from int"):
        load_image(3)


def test_exif_orientation(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rot.jpg"
    _gradient(40, 30).save(path, exif=exif, quality=95)
    assert load_image(path).size == (30, 40)
    assert load_image(path, exif_transpose=False).size == (40, 30)
    with Image.open(path) as raw:
        assert load_image(raw).size == (30, 40)


# --- bad files -----------------------------------------------------------------------------------


def _encoded(fmt: str) -> bytes:
    buf = io.BytesIO()
    # Noise does not compress, so cutting the file in half loses real image data.
    arr = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def test_empty_file(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty\.jpg: empty file \(0 bytes\)"):
        load_image(tmp_path / "empty.jpg")


@pytest.mark.parametrize("fmt,suffix", [("PNG", "png"), ("JPEG", "jpg")])
def test_truncated_file(tmp_path, fmt, suffix):
    data = _encoded(fmt)
    path = tmp_path / f"cut.{suffix}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as err:
        load_image(path)
    assert str(err.value).startswith(f"{path}: truncated or corrupt image data (")


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "photo.jpg"
    path.write_text("this is not an image\n")
    with pytest.raises(ImageError) as err:
        load_image(path)
    assert str(err.value).startswith(f"{path}: not an image (cannot identify image file)")


def test_directory_and_missing_path(tmp_path):
    with pytest.raises(ImageError, match="is a directory, not an image file"):
        load_image(tmp_path)
    with pytest.raises(ImageError, match=r"missing\.png: file not found"):
        load_image(tmp_path / "missing.png")


def test_max_pixels(tmp_path):
    path = tmp_path / "big.png"
    _gradient(40, 30).save(path)
    with pytest.raises(ImageError, match=r"big\.png: 40x30 pixels exceeds the limit of 1000 pixels"):
        load_image(path, max_pixels=1000)
    assert load_image(path, max_pixels=1200).size == (40, 30)
    with pytest.raises(ImageError, match=r"40x30 pixels exceeds the limit of 1000"):
        load_image(_gradient(40, 30), max_pixels=1000)


@pytest.mark.parametrize("limit", [1000, 500])  # warning band (limit < 1200 <= 2*limit) and hard error
def test_pillow_decompression_bomb_limit(tmp_path, monkeypatch, limit):
    path = tmp_path / "bomb.png"
    _gradient(40, 30).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no stray warning either
        with pytest.raises(ImageError) as err:
            load_image(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: too many pixels for Pillow's decompression-bomb limit")
    assert "MAX_IMAGE_PIXELS" in msg


def test_batch_and_errors_in_batch(tmp_path):
    good = tmp_path / "a.png"
    _gradient().save(good)
    batch = preprocess_batch([good, _gradient()], PreprocessConfig(image_size=16))
    assert batch.shape == (2, 3, 16, 16) and np.array_equal(batch[0], batch[1])
    with pytest.raises(ImageError, match="no images given"):
        preprocess_batch([], CFG224)


# --- file listing --------------------------------------------------------------------------------


def test_iter_image_files(tmp_path):
    for rel in ["b.jpg", "a.PNG", "notes.txt", "sub/c.webp", "sub/deeper/d.tiff", ".hidden/e.jpg", "._f.jpg"]:
        p = tmp_path / "dir" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    explicit = tmp_path / "dir" / "notes.txt"
    d = tmp_path / "dir"
    assert iter_image_files([d]) == [d / "a.PNG", d / "b.jpg", d / "sub" / "c.webp", d / "sub" / "deeper" / "d.tiff"]
    assert iter_image_files([d], recursive=False) == [d / "a.PNG", d / "b.jpg"]
    assert iter_image_files([explicit, str(d / "b.jpg")]) == [explicit, d / "b.jpg"]
    # A missing path is kept, so that it is reported for that image while the others are tagged.
    assert iter_image_files([d / "b.jpg", tmp_path / "nope.jpg"]) == [d / "b.jpg", tmp_path / "nope.jpg"]
    with pytest.raises(ImageError, match=r"nope\.jpg: file not found"):
        load_image(tmp_path / "nope.jpg")
    assert {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"} == set(IMAGE_EXTENSIONS)
