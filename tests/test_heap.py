"""runtimes/heap.py: freed heap pages go back to the operating system after a model loads (glibc)."""

from __future__ import annotations

import ctypes
import sys

import pytest

from ram_edge.benchmarks.harness import _current_rss_mb
from ram_edge.runtimes.heap import _glibc, release_free_heap

BLOCK, COUNT = 64 << 10, 1600  # 64 KB blocks: under glibc's mmap threshold, so they live on the heap


@pytest.mark.skipif(not sys.platform.startswith("linux") or _glibc() is None, reason="malloc_trim is glibc's (Linux)")
def test_release_free_heap_returns_freed_pages():
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = [libc.malloc(BLOCK) for _ in range(COUNT)]
    assert all(blocks)
    for block in blocks:
        ctypes.memset(block, 1, BLOCK)  # touched: resident
    # The last block stays allocated at the top of the heap, so glibc cannot shrink the heap by itself.
    for block in blocks[:-1]:
        libc.free(block)
    before = _current_rss_mb()
    assert release_free_heap()
    after = _current_rss_mb()
    libc.free(blocks[-1])
    assert before - after > 0.5 * COUNT * BLOCK / 2**20, (before, after)


def test_release_free_heap_is_harmless_elsewhere(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    _glibc.cache_clear()
    try:
        assert release_free_heap() is False
    finally:
        monkeypatch.undo()
        _glibc.cache_clear()
