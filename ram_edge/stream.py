"""Frames from a video file, a camera, an RTSP/RTP/HTTP stream or a GStreamer pipeline (the forms of
`ram_edge.video_sources`), decoded by a reader thread while the model runs (OpenCV's VideoCapture; torch-free).

Live sources (cameras, URLs, pipelines) keep one frame slot: when tagging is slower than the
source, a newer frame replaces the untaken one and the old one is counted as dropped, so nothing
queues up and the tags describe what the camera sees now. A lost live source is reopened with
backoff. A file hands over every selected frame (the reader waits for the tagger) and ends cleanly;
`realtime=True` plays it at its own frame rate like a camera instead.

`TagStream` tags the frames; with `smooth` / `hysteresis` its tags go through a `TagStabilizer` (ram_edge.smoothing)
so that they hold still, and with `events` it yields only the frames where the tag set changed.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from .errors import StreamError
from .smoothing import TagStabilizer
from .video_sources import SourceSpec, frame_adjuster, open_capture, parse_source  # noqa: F401 - re-exported


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
        self._adjust = frame_adjuster(self.spec)  # the flip / resize the source itself does not do
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
                    self._deliver(Frame(index, t, image if self._adjust is None else self._adjust(image)))
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
    """Tags of one frame; with events, also the tags that turned on (`added`) and off (`removed`) at it."""

    frame: int
    time: float
    result: Any  # TagResult
    added: list[str] | None = None
    removed: list[str] | None = None

    def to_dict(self, chinese: bool = False) -> dict[str, Any]:
        """{"frame", "time", "tags"} (or "error"), the tag objects as `ram-edge tag --json` writes them; an event
        also has "added" and "removed" (tag names) before "tags"."""
        data = self.result.to_dict(chinese)
        data.pop("image", None)
        head: dict[str, Any] = {"frame": self.frame, "time": round(self.time, 3)}
        if self.added is not None and self.result.ok:
            head.update(added=self.added, removed=self.removed)
        return {**head, **data}


@dataclass
class TagStream:
    """Iterate over (frame, time, tags) of a source with a `Tagger`; `stats` counts what happened.

    `smooth` (K frames) and `hysteresis` (a margin D) steady the tags (ram_edge.smoothing.TagStabilizer; the
    reported score is the K-frame mean); `events` yields only the frames whose tag set changed, with what was
    added and removed (and frames that failed). `threshold` and `top_k` apply after smoothing.
    """

    tagger: Any
    reader: FrameReader
    threshold: float | None = None
    top_k: int | None = None
    max_frames: int | None = None
    smooth: int = 1
    hysteresis: float = 0.0
    events: bool = False
    stop_event: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        # Bad options fail here, when the stream is made, not at its first frame.
        self._labels = self.tagger.labels if self.threshold is None else self.tagger.labels.with_threshold(self.threshold)
        stabilizer = TagStabilizer(self._labels.thresholds, smooth=self.smooth, hysteresis=self.hysteresis)
        self.stabilizer: TagStabilizer | None = stabilizer if stabilizer.active else None

    @property
    def stats(self) -> StreamStats:
        """Frames read, tagged, skipped, dropped; errors and reconnects."""
        return self.reader.stats

    def stop(self) -> None:
        """End the iteration after the frame in progress (safe from a signal handler or another thread)."""
        self.stop_event.set()
        self.reader._stop.set()

    def _tag(self, image: np.ndarray) -> Any:
        """The TagResult of one BGR frame, steadied by the stabilizer when there is one."""
        from .tagger import Tag, TagResult

        results, probs = self.tagger.tag_many([image], channels="bgr", threshold=self.threshold, top_k=self.top_k)
        result = results[0]
        result.image = None
        if self.stabilizer is None or not result.ok:
            return result
        labels = self._labels
        fired = self.stabilizer.update(probs[0]).fired(self.top_k)
        return TagResult(None, [Tag(labels.tags[i], p, labels.zh_name(i) if labels.tags_zh else None) for i, p in fired])

    def __iter__(self) -> Iterator[StreamResult]:
        started = self.reader._thread is not None
        if not started:
            self.reader.start()
        shown: list[str] = []  # the tag set of the last frame, for events
        try:
            for frame in self.reader.frames():
                if self.stop_event.is_set():
                    break
                result = self._tag(frame.image)
                item = StreamResult(frame.index, frame.time, result)
                if result.ok:
                    self.stats.tagged += 1
                else:
                    self.stats.errors += 1
                if self.events and result.ok:
                    names = [t.tag for t in result.tags]
                    item.added = [n for n in names if n not in shown]
                    item.removed = [n for n in shown if n not in names]
                    shown = names
                if not self.events or not result.ok or item.added or item.removed:
                    yield item
                if self.max_frames is not None and self.stats.tagged + self.stats.errors >= self.max_frames:
                    break
        finally:
            self.reader.stop()
