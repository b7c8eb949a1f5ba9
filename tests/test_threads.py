"""Many threads: `Tagger.tag` from 8 threads equals serial on every CPU runtime; the GIL is released while
a runtime computes; `MicroBatcher` gathers concurrent requests into batches."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ram_edge import Tagger
from ram_edge.batching import MicroBatcher
from ram_edge.default_model import default_model_path

EXAMPLES = Path(__file__).resolve().parents[1] / "ram_edge" / "assets" / "default_model" / "examples"
IMAGES = sorted(EXAMPLES.glob("*.png"))

RUNTIMES = [
    pytest.param("ort", "bundle", marks=pytest.mark.skipif(not __import__("importlib").util.find_spec("onnxruntime"), reason="onnxruntime not installed")),
    pytest.param("openvino", "bundle_fp32", marks=pytest.mark.skipif(not __import__("importlib").util.find_spec("openvino"), reason="openvino not installed")),
    pytest.param("torch", "checkpoint", marks=pytest.mark.skipif(not __import__("importlib").util.find_spec("torch"), reason="torch not installed")),
]


@pytest.mark.slow
@pytest.mark.parametrize("runtime, kind", RUNTIMES)
def test_eight_threads_give_the_serial_results(runtime, kind):
    with Tagger.load(default_model_path(kind), runtime=runtime) as tagger:
        work = [[IMAGES[(i + j) % len(IMAGES)] for j in range(1 + i % 3)] for i in range(32)]
        serial = [[r.to_dict() for r in tagger.tag(images)] for images in work]
        barrier = threading.Barrier(8)

        def call(images):
            try:
                barrier.wait(timeout=5)
            except threading.BrokenBarrierError:
                pass
            return [r.to_dict() for r in tagger.tag(images)]

        with ThreadPoolExecutor(8) as pool:
            parallel = list(pool.map(call, work))
    assert parallel == serial


def test_the_gil_is_released_while_the_runtime_computes():
    with Tagger.load(default_model_path(), runtime="ort") as tagger:
        batch = tagger.load_images(IMAGES * 8)  # 48 images: a few hundred ms of onnxruntime
        tagger.predict(batch[:1])
        counter = {"n": 0, "run": True}

        def spin():
            while counter["run"]:
                counter["n"] += 1

        started = time.perf_counter()
        tagger.predict(batch)
        alone = time.perf_counter() - started
        thread = threading.Thread(target=spin)
        thread.start()
        time.sleep(0.05)
        before = counter["n"]
        tagger.predict(batch)  # a Python thread keeps running only if this call lets go of the GIL
        during = counter["n"] - before
        counter["run"] = False
        thread.join()
    # Holding the GIL for the whole call would leave the spinning thread near zero increments.
    assert alone > 0.05 and during > 1000


def test_micro_batcher_gathers_concurrent_requests():
    with Tagger.load(default_model_path(), runtime="ort") as tagger:
        expected = {str(p): r.to_dict() for p, r in zip(IMAGES, tagger.tag(IMAGES))}
        with MicroBatcher(tagger, max_batch=4, max_wait_ms=50) as batcher:
            barrier = threading.Barrier(12)

            def call(i):
                barrier.wait(timeout=5)
                return batcher.tag(IMAGES[i % len(IMAGES)])

            with ThreadPoolExecutor(12) as pool:
                results = list(pool.map(call, range(12)))
            bad = batcher.tag(EXAMPLES / "examples.json")
        assert [r.to_dict() for r in results] == [expected[str(IMAGES[i % len(IMAGES)])] for i in range(12)]
        assert batcher.stats.requests == 12 and batcher.stats.batches < 12 and batcher.stats.largest_batch <= 4
        assert not bad.ok and "examples.json" in bad.error  # a bad image is its own error; the batcher goes on
        with pytest.raises(Exception, match="closed"):
            batcher.submit(IMAGES[0])


def test_micro_batcher_passes_runtime_errors_to_every_waiter():
    class Broken:
        thread_safe = True

        def run(self, batch):
            raise RuntimeError("device lost")

        def close(self):
            pass

    from ram_edge.artifacts import describe

    tagger = Tagger(describe(default_model_path()), Broken())
    with MicroBatcher(tagger, max_batch=2, max_wait_ms=20) as batcher:
        futures = [batcher.submit(IMAGES[0]), batcher.submit(IMAGES[1])]
        for future in futures:
            with pytest.raises(RuntimeError, match="device lost"):
                future.result(timeout=10)
