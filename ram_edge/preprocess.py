"""Image loading and the official RAM input transform, in numpy and Pillow (no torch).

The official transform is ``convert('RGB')``, ``Resize((S, S))`` (PIL bilinear, aspect ratio not
kept), ``ToTensor()`` and ``Normalize(mean, std)``; :func:`preprocess` reproduces it bit for bit.

Differences from the official code, all in :func:`load_image`:

* EXIF orientation is applied (``ImageOps.exif_transpose``) unless ``exif_transpose=False``; the
  official transform ignores it. Images without EXIF or with orientation 1 are unaffected.
* 16-bit grey images ('I;16*', and 'I', which Pillow uses for 16-bit PGM) are scaled to 8 bit
  (round(v / 257)) instead of being clipped at 255 as Pillow's ``convert('RGB')`` would.
* Decoding errors, truncated files and images over the pixel limit raise :class:`ImageError`
  instead of a Pillow exception or warning.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .config import PreprocessConfig
from .errors import ImageError

ImageSource = Union[str, os.PathLike, Image.Image, np.ndarray]

# Lower-case suffixes (with the dot) picked up when a directory is expanded.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)

_EXIF_ORIENTATION = 0x0112
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
# Modes Pillow cannot convert to RGB directly: go through a mode it can.
_CONVERT_VIA = {"La": "LA", "PA": "RGBA"}


def _grey16_to_rgb(values: np.ndarray) -> Image.Image:
    """16-bit grey values (0..65535) -> 8-bit RGB by round(v / 257)."""
    v = values.astype(np.uint32)
    # No ties exist (v / 257 is never k + 0.5 for integer v), so this is plain rounding.
    grey = ((v * 2 + 257) // 514).astype(np.uint8)
    return Image.fromarray(grey, "L").convert("RGB")


def _to_rgb(img: Image.Image, where: str) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; alpha is dropped, not composited (as the official code)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in _SIXTEEN_BIT_MODES:
        return _grey16_to_rgb(np.asarray(img))
    if mode == "I":
        return _grey16_to_rgb(np.clip(np.asarray(img), 0, 65535))
    if mode == "F":
        # Clip and truncate like Pillow's own F -> L conversion; NaN has no meaningful grey value.
        values = np.nan_to_num(np.asarray(img, dtype=np.float32), nan=0.0, posinf=255.0, neginf=0.0)
        grey = np.clip(values, 0.0, 255.0).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    try:
        if mode in _CONVERT_VIA:
            return img.convert(_CONVERT_VIA[mode]).convert("RGB")
        return img.convert("RGB")
    except ValueError as exc:
        raise ImageError(
            f"{where}: image mode {mode!r} cannot be converted to RGB ({exc}); save it as RGB or grey"
        ) from None


def _check_size(size: tuple[int, int], where: str, max_pixels: int | None) -> None:
    """Reject empty images and images over the caller's explicit pixel limit."""
    w, h = size
    if w < 1 or h < 1:
        raise ImageError(f"{where}: image has no pixels ({w}x{h})")
    if max_pixels is not None and w * h > max_pixels:
        raise ImageError(
            f"{where}: {w}x{h} pixels exceeds the limit of {max_pixels} pixels; "
            f"resize the image, or raise max_pixels if the file is trusted"
        )


def _exif_transpose(img: Image.Image, where: str) -> Image.Image:
    """Apply the EXIF orientation; no copy when there is nothing to do."""
    try:
        orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
        if orientation in (None, 1):
            return img
        return ImageOps.exif_transpose(img)
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types on malformed EXIF
        if isinstance(exc, MemoryError):
            raise
        raise ImageError(
            f"{where}: unreadable EXIF orientation ({type(exc).__name__}: {exc}); "
            f"pass exif_transpose=False to ignore it"
        ) from None


def _array_to_image(arr: np.ndarray, max_pixels: int | None) -> Image.Image:
    """uint8 HxW, HxWx1, HxWx3 or HxWx4 (alpha dropped) -> Pillow image."""
    where = f"array image of shape {arr.shape}"
    if arr.dtype != np.uint8:
        raise ImageError(f"{where}: dtype {arr.dtype} is not supported; pass uint8 values 0..255")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        _check_size((arr.shape[1], arr.shape[0]), where, max_pixels)
        return Image.fromarray(np.ascontiguousarray(arr), "L")
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        _check_size((arr.shape[1], arr.shape[0]), where, max_pixels)
        return Image.fromarray(np.ascontiguousarray(arr[:, :, :3]), "RGB")
    raise ImageError(f"{where}: expected HxW (grey), HxWx3 (RGB) or HxWx4 (RGBA)")


def _open_path(path: Path, exif_transpose: bool, max_pixels: int | None) -> Image.Image:
    """Open, fully decode and convert one file, turning every failure into an ImageError."""
    if not path.exists():
        raise ImageError(f"{path}: file not found; check the path")
    if path.is_dir():
        raise ImageError(
            f"{path}: is a directory, not an image file; "
            f"pass the image files inside it (iter_image_files expands directories)"
        )
    try:
        if path.stat().st_size == 0:
            raise ImageError(f"{path}: empty file (0 bytes), not an image")
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror or exc})") from None
    # Pillow warns (not raises) between MAX_IMAGE_PIXELS and twice that. Turning the warning into
    # an error with warnings.catch_warnings is process-global and not thread-safe, so the same
    # limit is checked here from the header, before any pixel is decoded.
    try:
        with Image.open(path) as img:
            limit = Image.MAX_IMAGE_PIXELS
            if limit and img.size[0] * img.size[1] > limit:
                raise Image.DecompressionBombError(f"{img.size[0]}x{img.size[1]} pixels, limit {limit}")
            _check_size(img.size, str(path), max_pixels)
            # Decode everything now so that truncated data fails here, not in the middle of a batch.
            img.load()
            if exif_transpose:
                img = _exif_transpose(img, str(path))
            return _to_rgb(img, str(path))
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(
            f"{path}: too many pixels for Pillow's decompression-bomb limit ({exc}); "
            f"raise PIL.Image.MAX_IMAGE_PIXELS only if the file is trusted"
        ) from None
    except UnidentifiedImageError:
        raise ImageError(
            f"{path}: not an image (cannot identify image file); "
            f"Pillow reads JPEG, PNG, BMP, GIF, TIFF, WebP, PPM/PGM and more"
        ) from None
    except PermissionError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow decoders raise OSError, SyntaxError, ValueError, ...
        raise ImageError(f"{path}: truncated or corrupt image data ({type(exc).__name__}: {exc})") from None


CHANNEL_ORDERS = ("rgb", "bgr")


def load_image(
    source: ImageSource, *, exif_transpose: bool = True, max_pixels: int | None = None, channels: str = "rgb"
) -> Image.Image:
    """Load a path, PIL image or uint8 array as a fully decoded RGB PIL image.

    `channels` ('rgb' or 'bgr', OpenCV's order) says how a uint8 HxWx3 / HxWx4 array is ordered;
    arrays may have any strides (a crop, a row-padded camera buffer) and are never modified.
    """
    if max_pixels is not None and (isinstance(max_pixels, bool) or int(max_pixels) < 1):
        raise ImageError(f"max_pixels must be a positive integer or None, got {max_pixels!r}")
    if channels not in CHANNEL_ORDERS:
        raise ImageError(f"channels must be 'rgb' or 'bgr', got {channels!r}")
    if isinstance(source, (str, os.PathLike)):
        return _open_path(Path(source), exif_transpose, max_pixels)
    if isinstance(source, np.ndarray):
        if channels == "bgr" and source.ndim == 3 and source.shape[2] in (3, 4):
            source = source[:, :, 2::-1]  # a view; _array_to_image makes the contiguous copy it needs anyway
        return _to_rgb(_array_to_image(source, max_pixels), f"array image of shape {source.shape}")
    if isinstance(source, Image.Image):
        where = f"PIL image ({source.mode}, {source.size[0]}x{source.size[1]})"
        _check_size(source.size, where, max_pixels)
        try:
            source.load()
        except Exception as exc:  # noqa: BLE001 - lazily opened images decode here
            if isinstance(exc, MemoryError):
                raise
            raise ImageError(f"{where}: truncated or corrupt image data ({type(exc).__name__}: {exc})") from None
        img = _exif_transpose(source, where) if exif_transpose else source
        return _to_rgb(img, where)
    raise ImageError(
        f"cannot load an image from {type(source).__name__}; pass a file path, a PIL image or a uint8 numpy array"
    )


def preprocess(image: Image.Image, config: PreprocessConfig) -> np.ndarray:
    """RGB PIL image -> float32 (3, S, S), bit-identical to torchvision Resize+ToTensor+Normalize."""
    if not isinstance(image, Image.Image) or image.mode != "RGB":
        got = f"mode {image.mode!r}" if isinstance(image, Image.Image) else type(image).__name__
        raise ImageError(f"preprocess needs an RGB PIL image, got {got}; load it with load_image() first")
    size = int(config.image_size)
    resample = Image.BICUBIC if config.resample == "bicubic" else Image.BILINEAR
    resized = image.resize((size, size), resample)
    hwc = np.asarray(resized, dtype=np.uint8)
    # Same float32 operations in the same order as ToTensor (x / 255) and Normalize ((x - m) / s).
    x = hwc.astype(np.float32) / np.float32(255)
    x = (x - np.asarray(config.mean, dtype=np.float32)) / np.asarray(config.std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess_batch(
    sources: Iterable[ImageSource],
    config: PreprocessConfig,
    *,
    exif_transpose: bool = True,
    max_pixels: int | None = None,
) -> np.ndarray:
    """Load and preprocess several images into one float32 (N, 3, S, S) batch."""
    arrays = [
        preprocess(load_image(s, exif_transpose=exif_transpose, max_pixels=max_pixels), config) for s in sources
    ]
    if not arrays:
        raise ImageError("no images given; pass at least one image")
    return np.stack(arrays)


def iter_image_files(paths: Iterable[str | Path], recursive: bool = True) -> list[Path]:
    """Files as given (any extension) plus the image files of given directories, sorted per directory."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            candidates = path.rglob("*") if recursive else path.iterdir()
            found = []
            for p in candidates:
                rel = p.relative_to(path).parts
                # Hidden entries (.DS_Store, ._name.jpg resource forks, .ipynb_checkpoints) are not photos.
                if any(part.startswith(".") for part in rel):
                    continue
                if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file():
                    found.append(p)
            out.extend(sorted(found))
        elif path.exists():
            # Kept whatever its extension, so that a bad file is reported instead of silently skipped.
            out.append(path)
        else:
            # Kept too: load_image reports it for that image while the others are still tagged.
            out.append(path)
    return out
