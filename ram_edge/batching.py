"""Micro-batching: gather tag requests from many threads into one batched inference.

A server or camera host with several threads calling `Tagger.tag` one image at a time runs one
inference per image. `MicroBatcher` lets each thread decode its own image (in parallel), then a
single worker runs whatever has arrived, up to `max_batch` images, waiting at most `max_wait_ms`
after the first request for others to join. Results come back as futures.

    batcher = MicroBatcher(tagger, max_batch=8, max_wait_ms=5)
    result = batcher.tag("photo.jpg")          # from any thread; blocks until its batch ran
    future = batcher.submit(frame, channels="bgr")
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import RamEdgeError


@dataclass
class BatcherStats:
    """How requests were grouped."""

    requests: int = 0
    batches: int = 0
    largest_batch: int = 0


class MicroBatcher:
    """Batch concurrent requests to one `Tagger` (see module docstring); use as a context manager or call close()."""

    def __init__(self, tagger: Any, *, max_batch: int = 8, max_wait_ms: float = 5.0, threshold: float | None = None,
                 top_k: int | None = None) -> None:
        if max_batch < 1 or max_wait_ms < 0:
            raise RamEdgeError(f"max_batch must be >= 1 and max_wait_ms >= 0 (got {max_batch}, {max_wait_ms})")
        self.tagger, self.max_batch, self.max_wait = tagger, int(max_batch), max_wait_ms / 1000.0
        self.threshold, self.top_k = threshold, top_k
        self.stats = BatcherStats()
        self._queue: queue.Queue = queue.Queue()
        self._closed = threading.Event()
        self._worker = threading.Thread(target=self._run, name="ram-edge-micro-batcher", daemon=True)
        self._worker.start()

    def submit(self, image: Any, *, channels: str = "rgb") -> "Future[Any]":
        """Queue one image (decoded here, in the caller's thread); the future gives its TagResult.

        A bad image gives a TagResult with `error` set, as `Tagger.tag_many` does; the batch goes on.
        """
        from .preprocess import load_image, preprocess
        from .tagger import TagResult, _image_name

        if self._closed.is_set():
            raise RamEdgeError("this MicroBatcher is closed")
        future: Future = Future()
        try:
            pixels = load_image(image, exif_transpose=self.tagger.exif_transpose, max_pixels=self.tagger.max_pixels,
                                channels=channels)
            tensor = preprocess(pixels, self.tagger.info.preprocess)
        except RamEdgeError as exc:
            future.set_result(TagResult(_image_name(image), error=str(exc)))
            return future
        self._queue.put((image, tensor, future))
        return future

    def tag(self, image: Any, *, channels: str = "rgb", timeout: float | None = None) -> Any:
        """submit() and wait for the TagResult."""
        return self.submit(image, channels=channels).result(timeout)

    def _collect(self) -> list[tuple[Any, np.ndarray, Future]]:
        first = self._queue.get()
        if first is None:
            return []
        batch = [first]
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)  # let the loop see the close after this batch
                break
            batch.append(item)
        return batch

    def _run(self) -> None:
        while True:
            batch = self._collect()
            if not batch:
                self._fail_leftovers()
                return
            self.stats.requests += len(batch)
            self.stats.batches += 1
            self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
            try:
                probs = self.tagger.predict(np.stack([tensor for _, tensor, _ in batch]))
                results = self.tagger.decode(probs, [image for image, _, _ in batch], threshold=self.threshold, top_k=self.top_k)
            except BaseException as exc:  # noqa: BLE001 - every waiting caller gets the runtime's error
                for _, _, future in batch:
                    future.set_exception(exc)
                continue
            for (_, _, future), result in zip(batch, results):
                future.set_result(result)

    def _fail_leftovers(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                item[2].set_exception(RamEdgeError("the MicroBatcher was closed before this request ran"))

    def close(self) -> None:
        """Finish the queued requests and stop the worker."""
        if not self._closed.is_set():
            self._closed.set()
            self._queue.put(None)
            self._worker.join()

    def __enter__(self) -> "MicroBatcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
