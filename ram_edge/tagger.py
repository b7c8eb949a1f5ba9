"""`Tagger`: the public API. One object = one model on one runtime; thread-safe `tag` calls."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

import numpy as np

from .artifacts import ArtifactInfo, describe
from .errors import RamEdgeError
from .labels import LabelSet
from .preprocess import load_image, preprocess

if TYPE_CHECKING:
    from .stream import TagStream

ImageInput = Any  # str | Path | PIL.Image.Image | np.ndarray (uint8 HxWx3)


@dataclass(frozen=True)
class Tag:
    """One fired tag."""

    tag: str
    score: float
    zh: str | None = None

    def to_dict(self, chinese: bool = False) -> dict[str, Any]:
        """JSON-ready dictionary (with `zh` when asked and known)."""
        data: dict[str, Any] = {"tag": self.tag, "score": round(self.score, 6)}
        if chinese:
            data["zh"] = self.zh
        return data


@dataclass
class TagResult:
    """Tags of one image (sorted by score), or the error that image raised."""

    image: str | None
    tags: list[Tag] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the image was tagged."""
        return self.error is None

    def to_dict(self, chinese: bool = False) -> dict[str, Any]:
        """JSON-ready dictionary: {"image", "tags"} or {"image", "error"}."""
        if self.error is not None:
            return {"image": self.image, "error": self.error}
        return {"image": self.image, "tags": [t.to_dict(chinese) for t in self.tags]}


def _image_name(source: ImageInput) -> str | None:
    return str(source) if isinstance(source, (str, Path)) else None


class Tagger:
    """Tag images with a RAM / RAM++ model through any registered runtime.

    >>> tagger = Tagger.load("ram_plus_swin_large_384")          # doctest: +SKIP
    >>> tagger.tag(["photo.jpg"])[0].tags                          # doctest: +SKIP
    """

    def __init__(self, info: ArtifactInfo, runtime, *, exif_transpose: bool = True, max_pixels: int | None = None) -> None:
        self.info = info
        self.runtime = runtime
        self.labels: LabelSet = info.labels
        self.exif_transpose = exif_transpose
        self.max_pixels = max_pixels
        self._lock = None if getattr(runtime, "thread_safe", False) else threading.Lock()

    @classmethod
    def load(
        cls,
        path: str | Path,
        runtime: str = "auto",
        device: str | None = None,
        *,
        threads: int | None = None,
        compute_precision: str | None = None,
        exif_transpose: bool = True,
        max_pixels: int | None = None,
    ) -> "Tagger":
        """Open a checkpoint directory or bundle with the named runtime (`auto`: best installed).

        `compute_precision` (fp32, bf16, fp16) is the arithmetic precision; None: fp32 on a CPU.
        """
        from .runtimes import resolve_runtime

        info = describe(path)
        backend = resolve_runtime(runtime, info.format)
        engine = backend(info.path, device=device, threads=threads, compute_precision=compute_precision)
        return cls(info, engine, exif_transpose=exif_transpose, max_pixels=max_pixels)

    @property
    def default_batch_size(self) -> int:
        """Images per inference when the caller does not say: 1 for full-size (384 px) models on a CPU, else 8.

        Full-size models on a CPU are compute-bound: the time per image does not fall with the batch (torch's
        encoder and decoder cost the same per image at batch 1 to 8, benchmarks/batching_swin_b384.md; onnxruntime
        and OpenVINO were 5-15% slower per image at 8, benchmarks/full_size_swin_l384.md) while peak memory grows
        about 2.8x, so batch 1. Small models (the default model, 160 px) gain 10-25% per image at batch 8 on the
        same CPU (benchmarks/results/suites/), and accelerators need batches to fill their units.
        """
        device = str(getattr(self.runtime, "device", "cpu")).strip().lower()
        if device.startswith("cpu") and int(self.info.preprocess.image_size) >= 384:
            return 1
        return 8

    @property
    def tags(self) -> list[str]:
        """The model's tag names, in label-file order."""
        return list(self.labels.tags)

    def load_images(self, images: Sequence[ImageInput], *, channels: str = "rgb") -> np.ndarray:
        """Decode and preprocess images into one (N, 3, S, S) float32 batch (raises on a bad image).

        `channels`: 'rgb' or 'bgr' (OpenCV) for uint8 HxWx3 arrays; paths and PIL images are decoded as they are.
        """
        batch = [
            preprocess(load_image(img, exif_transpose=self.exif_transpose, max_pixels=self.max_pixels, channels=channels),
                       self.info.preprocess)
            for img in images
        ]
        return np.stack(batch) if batch else np.zeros((0, 3, self.info.preprocess.image_size, self.info.preprocess.image_size), np.float32)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, S, S) preprocessed batch -> (N, C) float32 probabilities."""
        if len(batch) == 0:
            return np.zeros((0, len(self.labels.tags)), np.float32)
        if self._lock is None:
            return self.runtime.run(batch)
        with self._lock:
            return self.runtime.run(batch)

    def scores(self, images: Sequence[ImageInput], *, channels: str = "rgb") -> np.ndarray:
        """Probabilities (N, C) for images (paths, PIL images or uint8 arrays in `channels` order)."""
        return self.predict(self.load_images(images, channels=channels))

    def decode(
        self, probs: np.ndarray, images: Sequence[ImageInput] | None = None, *, threshold: float | None = None, top_k: int | None = None
    ) -> list[TagResult]:
        """Turn probabilities into sorted tags using the per-tag (or one global) threshold."""
        labels = self.labels if threshold is None else self.labels.with_threshold(threshold)
        names = images if images is not None else [None] * len(probs)
        results = []
        for source, fired in zip(names, labels.decode(probs, top_k=top_k)):
            tags = [Tag(labels.tags[i], float(p), labels.zh_name(i) if labels.tags_zh else None) for i, p in fired]
            results.append(TagResult(_image_name(source), tags))
        return results

    def tag(
        self, images: ImageInput | Iterable[ImageInput], *, threshold: float | None = None, top_k: int | None = None,
        channels: str = "rgb",
    ) -> list[TagResult]:
        """Tag one image or many; raises on the first bad image (see `tag_many` for per-image errors).

        Safe to call from many threads at once: a runtime that is not thread-safe is serialised by a lock,
        and every runtime releases the GIL while it computes.
        """
        if not isinstance(images, (list, tuple)):
            images = [images]
        return self.decode(self.scores(images, channels=channels), images, threshold=threshold, top_k=top_k)

    def tag_pixels(self, pixels: Any, height: int, width: int, *, row_stride: int | None = None, channels: str = "rgb",
                   threshold: float | None = None, top_k: int | None = None) -> TagResult:
        """Tag one uint8 image in a buffer the caller owns (a C++ host's memory through the buffer protocol), without a copy.

        `pixels`: any object with the buffer protocol (memoryview, bytes, numpy array) holding `height` rows of
        `width` 3-byte pixels, each row `row_stride` bytes apart (default 3 * width); `channels`: 'rgb' or 'bgr'.
        """
        from .errors import ImageError

        stride = 3 * int(width) if row_stride is None else int(row_stride)
        view = memoryview(pixels).cast("B")
        if height < 1 or width < 1 or stride < 3 * width:
            raise ImageError(f"pixel buffer: bad geometry {width}x{height} with row stride {stride} (needs >= {3 * width})")
        needed = stride * (height - 1) + 3 * width
        if view.nbytes < needed:
            raise ImageError(f"pixel buffer of {view.nbytes} bytes is too small for {width}x{height} RGB with row stride {stride} "
                             f"(needs {needed})")
        array = np.ndarray((height, width, 3), dtype=np.uint8, buffer=view, strides=(stride, 3, 1))
        return self.tag([array], threshold=threshold, top_k=top_k, channels=channels)[0]

    def stream(self, source: Any, *, every: int | None = None, fps: float | None = None, max_frames: int | None = None,
               realtime: bool | None = None, threshold: float | None = None, top_k: int | None = None,
               reconnect_attempts: int = 5, input_width: int | None = None, input_height: int | None = None,
               input_rate: float | None = None, input_flip: str | None = None, input_codec: str | None = None,
               input_backend: str | None = None, smooth: int = 1, hysteresis: float = 0.0,
               events: bool = False) -> "TagStream":
        """Tag the frames of a video file, camera, stream or GStreamer pipeline, named as `ram-edge watch` takes them.

        `source`: a path or file:///path, a camera index, /dev/videoN or v4l2:///dev/videoN, csi://0 (a Jetson CSI
        camera), rtsp://host:port/path, rtp://@:1234, http(s)://, or a pipeline ending in appsink. `input_width`,
        `input_height`, `input_rate`, `input_flip` (jetson-utils' names: none, clockwise, rotate-180, ...),
        `input_codec` (rtp://) and `input_backend` ("ffmpeg" or "gstreamer" for rtsp://) are `watch`'s --input-*
        options (ram_edge.video_sources). Iterate over the returned stream for `StreamResult`s (frame index, time in
        seconds, `TagResult`); its `stats` count frames read, tagged, skipped, dropped. Live sources keep only the
        newest frame when tagging is slower than the source; `every` / `fps` choose which frames to tag. `smooth`
        averages each tag's probability over the last K tagged frames and `hysteresis` turns a tag on above threshold
        + D and off at or below threshold - D (ram_edge.smoothing); `events` yields only frames whose tag set changed,
        with `added` and `removed`. Needs OpenCV.
        """
        from .stream import FrameReader, TagStream
        from .video_sources import parse_source

        spec = parse_source(source, width=input_width, height=input_height, rate=input_rate, flip=input_flip,
                            codec=input_codec, backend=input_backend)
        reader = FrameReader(spec, every=every, fps=fps, realtime=realtime, reconnect_attempts=reconnect_attempts)
        return TagStream(self, reader, threshold=threshold, top_k=top_k, max_frames=max_frames, smooth=smooth,
                         hysteresis=hysteresis, events=events)

    def iter_tag(
        self,
        images: Sequence[ImageInput],
        *,
        batch_size: int | None = None,
        threshold: float | None = None,
        top_k: int | None = None,
        progress: Any = None,
        channels: str = "rgb",
    ) -> Iterator[tuple[TagResult, np.ndarray | None]]:
        """Tag images in batches, yielding each image's result and probabilities (None for an image that failed, whose
        result holds the error) in input order as soon as its batch is done: a library of any size in flat memory.

        `batch_size` None: `default_batch_size` (1 for full-size models on a CPU, else 8).
        """
        step = max(1, batch_size or self.default_batch_size)
        for start in range(0, len(images), step):
            chunk = list(images[start : start + step])
            slots: list[tuple[TagResult, np.ndarray | None] | None] = [None] * len(chunk)
            arrays, ok_rows = [], []
            for offset, img in enumerate(chunk):
                try:
                    image = load_image(img, exif_transpose=self.exif_transpose, max_pixels=self.max_pixels, channels=channels)
                    arrays.append(preprocess(image, self.info.preprocess))
                    ok_rows.append(offset)
                except RamEdgeError as exc:
                    slots[offset] = (TagResult(_image_name(img), error=str(exc)), None)
            if arrays:
                chunk_probs = self.predict(np.stack(arrays))
                decoded = self.decode(chunk_probs, [chunk[r] for r in ok_rows], threshold=threshold, top_k=top_k)
                for row, result, row_probs in zip(ok_rows, decoded, chunk_probs):
                    slots[row] = (result, row_probs)
            if progress is not None:
                progress.update(len(chunk))
            yield from slots  # type: ignore[misc]

    def tag_many(
        self,
        images: Sequence[ImageInput],
        *,
        batch_size: int | None = None,
        threshold: float | None = None,
        top_k: int | None = None,
        progress: Any = None,
        channels: str = "rgb",
    ) -> tuple[list[TagResult], np.ndarray]:
        """Tag images in batches, recording a per-image error instead of raising; returns
        the results and the (N, C) probability matrix (NaN rows for failed images).

        `batch_size` None: `default_batch_size` (1 for full-size models on a CPU, else 8).
        """
        results: list[TagResult] = []
        probs = np.full((len(images), len(self.labels.tags)), np.nan, dtype=np.float32)
        for i, (result, row) in enumerate(self.iter_tag(images, batch_size=batch_size, threshold=threshold, top_k=top_k,
                                                        progress=progress, channels=channels)):
            results.append(result)
            if row is not None:
                probs[i] = row
        return results, probs

    def close(self) -> None:
        """Release the runtime."""
        self.runtime.close()

    def __enter__(self) -> "Tagger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
