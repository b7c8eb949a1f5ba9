"""Give the C heap's free pages back to the operating system after a model has loaded (glibc only)."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from functools import lru_cache


@lru_cache(maxsize=1)
def _glibc():
    """glibc's handle, or None on other C libraries (musl, macOS, Windows)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.malloc_trim.restype = ctypes.c_int
        return libc
    except (OSError, AttributeError):  # no libc.so.6, or a libc without malloc_trim
        return None


def release_free_heap() -> bool:
    """Return freed heap memory to the OS (glibc `malloc_trim(0)`); True when it ran.

    Loading a model parses the whole file and copies its weights, then frees the parsed copy. glibc keeps
    freed chunks of its heap mapped, so how much of that stays resident depends on the order of the
    frees: the same Swin-L/384 fp32 ONNX held 984 or 1334 MB after loading in alternate runs, 913 MB
    after a trim (INT8: 377-454 -> 323 MB).
    """
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
