"""Frames from a video file, a camera, an RTSP/HTTP URL or a GStreamer pipeline, decoded by a reader
thread while the model runs (OpenCV's VideoCapture; torch-free).

Live sources (cameras, URLs, pipelines) keep one frame slot: when tagging is slower than the
source, a newer frame replaces the untaken one and the old one is counted as dropped, so nothing
queues up and the tags describe what the camera sees now. A lost live source is reopened with
backoff. A file hands over every selected frame (the reader waits for the tagger) and ends cleanly;
`realtime=True` plays it at its own frame rate like a camera instead.
"""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from .errors import StreamError

# OpenCV prints backend warnings ("can't open camera by index") and FFmpeg its errors ("moov atom not found", 8 =
# fatal only) on stderr; ram-edge reports errors itself. Users can still set either variable to see them.
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "8")

_URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.I)


@dataclass(frozen=True)
class SourceSpec:
    """What a SOURCE argument names."""

    kind: str  # "file", "camera", "url", "gstreamer"
    target: Any  # path, camera index or device path, URL, pipeline string
    text: str

    @property
    def live(self) -> bool:
        """Cameras, URLs and pipelines are live; files are not."""
        return self.kind != "file"


def parse_source(source: str | int | os.PathLike) -> SourceSpec:
    """Classify SOURCE: camera index or /dev/videoN, URL, GStreamer pipeline (has ' ! '), else a video file."""
    text = str(source).strip()
    if isinstance(source, int) or text.isdigit():
        return SourceSpec("camera", int(text), text)
    if re.fullmatch(r"/dev/video\d+", text):
        return SourceSpec("camera", text, text)
    if "!" in text and ("appsink" in text or " ! " in text):
        return SourceSpec("gstreamer", text, text)
    if _URL.match(text):
        return SourceSpec("url", text, text)
    path = Path(text)
    if not path.exists():
        raise StreamError(f"video source {text!r} does not exist; give a video file, a camera index (0), /dev/videoN, "
                          f"an rtsp:// or http:// URL, or a GStreamer pipeline ending in appsink")
    if path.is_dir():
        raise StreamError(f"video source {text!r} is a folder; tag the images in it with `ram-edge tag {text}`")
    return SourceSpec("file", str(path), text)


def open_capture(spec: SourceSpec, timeout_s: float = 10.0) -> Any:
    """An opened cv2.VideoCapture for `spec`; StreamError when OpenCV cannot open it."""
    import cv2

    if spec.kind == "gstreamer":
        if "GStreamer:  YES" not in cv2.getBuildInformation() and "GStreamer: YES" not in cv2.getBuildInformation().replace("  ", " "):
            raise StreamError(f"{spec.text!r} is a GStreamer pipeline, but this OpenCV ({cv2.__version__}) was built without "
                              f"GStreamer; on a Jetson use JetPack's OpenCV (python3-opencv) instead of opencv-python-headless")
        cap = cv2.VideoCapture(spec.target, cv2.CAP_GSTREAMER)
    elif spec.kind == "url":
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(timeout_s * 1000), cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(timeout_s * 1000)]
        cap = cv2.VideoCapture(spec.target, cv2.CAP_ANY, params)
    else:
        cap = cv2.VideoCapture(spec.target)
    if not cap.isOpened():
        cap.release()
        hint = {"file": "it is not a video OpenCV can decode (or is truncated)",
                "camera": "no such camera, or it is in use by another program",
                "url": "the stream is unreachable, or OpenCV's FFmpeg cannot read it",
                "gstreamer": "the pipeline failed to start (check it with gst-launch-1.0)"}[spec.kind]
        raise StreamError(f"cannot open video source {spec.text!r}: {hint}")
    return cap


@dataclass
class Frame:
    """One decoded frame: its index in the source, its time in seconds, the BGR pixels."""

    index: int
    time: float
    image: np.ndarray


@dataclass
class StreamStats:
    """Counts of one stream; `dropped` frames were replaced by newer ones before the tagger took them."""

    read: int = 0
    tagged: int = 0
    skipped: int = 0
    dropped: int = 0
    errors: int = 0
    reconnects: int = 0
    max_pending: int = 0  # never above 1: frames do not queue

    def to_dict(self) -> dict[str, int]:
        """JSON-ready counts."""
        return asdict(self)

    def summary(self) -> str:
        """One line for stderr."""
        return (f"{self.read} frame(s) read, {self.tagged} tagged, {self.skipped} skipped (--every/--fps), "
                f"{self.dropped} dropped (tagging slower than the source), {self.errors} error(s), {self.reconnects} reconnect(s)")



class FrameReader:
    """Decodes frames of one source in a thread and hands them over one at a time (see module docstring)."""

    def __init__(self, source: str | int | os.PathLike | SourceSpec, *, every: int | None = None, fps: float | None = None,
                 realtime: bool | None = None, live: bool | None = None, reconnect_attempts: int = 5,
                 backoff: tuple[float, float] = (0.5, 8.0), open_timeout_s: float = 10.0,
                 opener: Callable[[SourceSpec, float], Any] = open_capture) -> None:
        if every is not None and every < 1:
            raise StreamError(f"every must be >= 1, got {every}")
        if fps is not None and fps <= 0:
            raise StreamError(f"fps must be > 0, got {fps}")
        if every is not None and fps is not None:
            raise StreamError("give every (frames) or fps (per second), not both")
        self.spec = source if isinstance(source, SourceSpec) else parse_source(source)
        self.live = self.spec.live if live is None else live
        self.realtime = self.live if realtime is None else realtime
        self.every, self.fps = every, fps
        self.reconnect_attempts, self.backoff, self.open_timeout_s = reconnect_attempts, backoff, open_timeout_s
        self._opener = opener
        self.stats = StreamStats()
        self._slot: Frame | None = None
        self._ended = False
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._cap: Any = None
        self.frame_count: int | None = None

    # -- reader thread ---------------------------------------------------------------------------
    def open(self) -> "FrameReader":
        """Open the source now (StreamError if it cannot be opened: one attempt, no waiting)."""
        if self._cap is not None:
            return self
        self._cap = self._open_with_retries(first=True)
        try:
            import cv2

            count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT))
            self.frame_count = count if count > 0 and not self.live else None
        except Exception:  # noqa: BLE001 - informational (progress total) only
            self.frame_count = None
        return self

    def start(self) -> "FrameReader":
        """Open the source if not yet open and start decoding in the reader thread."""
        self.open()
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run, name="ram-edge-frame-reader", daemon=True)
        self._thread.start()
        return self

    def _open_with_retries(self, first: bool) -> Any:
        # The first open is one attempt: a source that was never there is an error now, not after a backoff.
        attempts = 1 if first else max(1, self.reconnect_attempts)
        delay, last = self.backoff[0], None
        for attempt in range(attempts):
            if self._stop.is_set():
                raise StreamError(f"stopped while opening {self.spec.text!r}")
            try:
                return self._opener(self.spec, self.open_timeout_s)
            except StreamError as exc:
                last = exc
            if attempt + 1 < attempts:
                self._stop.wait(delay)
                delay = min(delay * 2, self.backoff[1])
        if first:
            raise last  # type: ignore[misc]
        raise StreamError(f"lost video source {self.spec.text!r} and could not reopen it after {attempts} attempt(s) "
                          f"with backoff ({last})")

    def _selected(self, index: int, t: float, state: dict) -> bool:
        if self.every is not None:
            return index % self.every == 0
        if self.fps is not None:
            if t + 1e-9 >= state["due"]:
                state["due"] = max(state["due"] + 1.0 / self.fps, t)
                return True
            return False
        return True

    def _deliver(self, frame: Frame) -> None:
        with self._cond:
            if self.realtime:
                if self._slot is not None:
                    self.stats.dropped += 1  # the newest frame wins: the untaken one is dropped, not queued
            else:
                # A file at decoding speed: wait until the tagger has taken the previous frame.
                while self._slot is not None and not self._stop.is_set():
                    self._cond.wait(0.1)
                if self._stop.is_set():
                    return
            self._slot = frame
            self.stats.max_pending = max(self.stats.max_pending, 1)
            self._cond.notify_all()

    def _run(self) -> None:
        import cv2

        index, started = 0, time.monotonic()
        state = {"due": 0.0}
        try:
            while not self._stop.is_set():
                ok, image = self._cap.read()
                if not ok or image is None:
                    if not self.live:
                        break  # a file ends cleanly
                    self._cap.release()
                    self.stats.reconnects += 1
                    self._cap = self._open_with_retries(first=False)
                    continue
                self.stats.read += 1
                if self.live:
                    t = time.monotonic() - started
                else:
                    msec = self._cap.get(cv2.CAP_PROP_POS_MSEC)
                    rate = self._cap.get(cv2.CAP_PROP_FPS) or 0.0
                    t = index / rate if rate > 0 else (msec / 1000.0 if msec and msec > 0 else float(index))
                    if self.realtime:
                        wait = started + t - time.monotonic()
                        if wait > 0:
                            self._stop.wait(wait)
                if self._selected(index, t, state):
                    self._deliver(Frame(index, t, image))
                else:
                    self.stats.skipped += 1
                index += 1
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            self._error = exc
        finally:
            if self._cap is not None:
                self._cap.release()
            with self._cond:
                self._ended = True
                self._cond.notify_all()

    # -- consumer --------------------------------------------------------------------------------
    def frames(self) -> Iterator[Frame]:
        """Frames until the source ends or `stop()`; raises StreamError if a live source is lost for good."""
        while True:
            with self._cond:
                while self._slot is None and not self._ended and not self._stop.is_set():
                    self._cond.wait(0.1)
                item, self._slot = self._slot, None
                self._cond.notify_all()
            if item is None or self._stop.is_set():
                break
            yield item
        if self._error is not None and not self._stop.is_set():
            error, self._error = self._error, None
            if isinstance(error, StreamError):
                raise error
            raise StreamError(f"reading {self.spec.text!r} failed: {type(error).__name__}: {error}")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop decoding and release the source."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> "FrameReader":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclass
class StreamResult:
    """Tags of one frame."""

    frame: int
    time: float
    result: Any  # TagResult

    def to_dict(self, chinese: bool = False) -> dict[str, Any]:
        """{"frame", "time", "tags"} (or "error"), the tag objects as `ram-edge tag --json` writes them."""
        data = self.result.to_dict(chinese)
        data.pop("image", None)
        return {"frame": self.frame, "time": round(self.time, 3), **data}


@dataclass
class TagStream:
    """Iterate over (frame, time, tags) of a source with a `Tagger`; `stats` counts what happened."""

    tagger: Any
    reader: FrameReader
    threshold: float | None = None
    top_k: int | None = None
    max_frames: int | None = None
    stop_event: threading.Event = field(default_factory=threading.Event)

    @property
    def stats(self) -> StreamStats:
        """Frames read, tagged, skipped, dropped; errors and reconnects."""
        return self.reader.stats

    def stop(self) -> None:
        """End the iteration after the frame in progress (safe from a signal handler or another thread)."""
        self.stop_event.set()
        self.reader._stop.set()

    def __iter__(self) -> Iterator[StreamResult]:
        started = self.reader._thread is not None
        if not started:
            self.reader.start()
        try:
            for frame in self.reader.frames():
                if self.stop_event.is_set():
                    break
                result = self.tagger.tag_many([frame.image], channels="bgr", threshold=self.threshold, top_k=self.top_k)[0][0]
                result.image = None
                if result.ok:
                    self.stats.tagged += 1
                else:
                    self.stats.errors += 1
                yield StreamResult(frame.index, frame.time, result)
                if self.max_frames is not None and self.stats.tagged + self.stats.errors >= self.max_frames:
                    break
        finally:
            self.reader.stop()
