"""TEST DOUBLE of the two CUDA libraries the trt runtime uses: NVIDIA's cuda-python (`cuda.bindings.runtime`)
and pycuda (`pycuda.driver`), over one fake GPU, for CPU-only machines.

Not CUDA. It stands in for the libraries' Python APIs so that ram-edge's real memory layer
(runtimes/cuda_memory.py: CudaPythonMemory, PyCudaMemory) runs in the tests, and it is at least as
strict as CUDA where a lenient fake would hide a bug users hit:
- streams are queues: an async copy or an engine execution happens only when its stream is
  synchronized, so a host buffer read before `synchronize` holds stale data, as on a GPU;
- a cuda-python `cudaStream_t` is an object whose `int()` is the stream handle and whose `getPtr()`
  is the address where that handle is stored (not the handle), as in cuda-python;
- the functions return `(cudaError_t, value)` tuples and take a stream as None, a `cudaStream_t` or an
  int handle, and nothing else; a freed or unknown pointer, stream or handle is an error;
- pycuda calls other than device queries need a current context (`Context.push`), and a retained
  primary context counts until `detach()`;
- the current device (`cudaSetDevice`) is per thread and process state that callers must restore.
Device memory is a dict of numpy byte blocks at fake addresses; page-locked host memory is real
memory at a real address (ram-edge wraps it with ctypes).
"""

from __future__ import annotations

import ctypes
import enum
import importlib.machinery
import itertools
import threading
import types
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

NAME = "Test Double GPU"
CAPABILITY = (8, 7)


@dataclass
class FakeGpu:
    """The fake GPU's state: device blocks, pinned host blocks, streams and their pending work."""

    blocks: dict[int, np.ndarray] = field(default_factory=dict)
    pinned: dict[int, Any] = field(default_factory=dict)  # host address -> ctypes buffer
    streams: dict[int, list[Callable[[], None]]] = field(default_factory=dict)
    allocations: int = 0
    retained_contexts: int = 0
    device_count: int = 1
    fail_malloc_after: int | None = None  # cudaMalloc fails once this many blocks exist (out of memory)
    current: threading.local = field(default_factory=threading.local)
    _addresses: Any = field(default_factory=lambda: itertools.count(0x7F0000000000, 0x100000))
    _handles: Any = field(default_factory=lambda: itertools.count(0x5A5A0000, 0x40))

    @property
    def host_live(self) -> int:
        """Pinned host allocations not freed."""
        return len(self.pinned)

    @property
    def streams_live(self) -> int:
        """Streams not destroyed."""
        return len(self.streams)

    def malloc(self, nbytes: int) -> int | None:
        if self.fail_malloc_after is not None and len(self.blocks) >= self.fail_malloc_after:
            return None
        ptr = next(self._addresses)
        self.blocks[ptr] = np.zeros(max(int(nbytes), 1), np.uint8)
        self.allocations += 1
        return ptr

    def device_span(self, ptr: int, nbytes: int) -> np.ndarray:
        """The bytes [ptr, ptr + nbytes) of one device block; KeyError-free: raises ValueError when out of bounds."""
        for base, block in self.blocks.items():
            if base <= ptr < base + block.size:
                if ptr + nbytes > base + block.size:
                    raise ValueError(f"device access of {nbytes} bytes at {ptr:#x} runs past its allocation")
                return block[ptr - base: ptr - base + nbytes]
        raise ValueError(f"{ptr:#x} is not device memory (freed, never allocated, or a host pointer)")

    def pinned_host(self, nbytes: int) -> int:
        buffer = (ctypes.c_ubyte * max(int(nbytes), 1))()
        ptr = ctypes.addressof(buffer)
        self.pinned[ptr] = buffer
        return ptr

    def new_stream(self) -> int:
        handle = next(self._handles)
        self.streams[handle] = []
        return handle

    def enqueue(self, handle: int, work: Callable[[], None]) -> None:
        if handle == 0:  # the legacy default stream: synchronous with the host here
            work()
            return
        if handle not in self.streams:
            raise ValueError(f"stream handle {handle:#x} is not a live stream")
        self.streams[handle].append(work)

    def synchronize(self, handle: int) -> None:
        if handle == 0:
            return
        queue = self.streams[handle]
        while queue:
            queue.pop(0)()


GPU = FakeGpu()


def reset() -> FakeGpu:
    """A fresh fake GPU (each test module starts from one)."""
    global GPU
    GPU = FakeGpu()
    _HostAllocation.live = 0
    return GPU


# ---- cuda-python: cuda.bindings.runtime --------------------------------------------------------

class cudaError_t(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorInvalidDevice = 101
    cudaErrorInvalidResourceHandle = 400


class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3
    cudaMemcpyDefault = 4


class cudaStream_t:
    """cuda-python's stream type: `int(s)` is the handle TensorRT takes; `getPtr()` is where it is stored."""

    def __init__(self, init_value: int = 0) -> None:
        self._storage = ctypes.c_void_p(int(init_value))

    def __int__(self) -> int:
        return int(self._storage.value or 0)

    def getPtr(self) -> int:
        return ctypes.addressof(self._storage)

    def __repr__(self) -> str:
        return f"<cudaStream_t {int(self):#x}>"


class cudaDeviceProp:
    def __init__(self) -> None:
        self.name = NAME.encode() + b"\0" * (256 - len(NAME))
        self.major, self.minor = CAPABILITY


def _stream_value(stream: Any) -> int:
    if stream is None:
        return 0
    if isinstance(stream, cudaStream_t):
        return int(stream)
    if isinstance(stream, int) and not isinstance(stream, bool):
        return stream
    raise TypeError(f"Argument 'stream' is not instance of type (expected <class 'int'>, or cudaStream_t), found {type(stream)}")


def _ok(*values: Any) -> tuple:
    return (cudaError_t.cudaSuccess, *values)


def _device() -> int:
    return getattr(GPU.current, "device", 0)


def cudaGetDeviceCount():
    return _ok(GPU.device_count)


def cudaGetDevice():
    return _ok(_device())


def cudaSetDevice(device: int):
    if not 0 <= int(device) < GPU.device_count:
        return (cudaError_t.cudaErrorInvalidDevice,)
    GPU.current.device = int(device)
    return _ok()


def cudaGetDeviceProperties(device: int):
    if not 0 <= int(device) < GPU.device_count:
        return (cudaError_t.cudaErrorInvalidDevice, None)
    return _ok(cudaDeviceProp())


def cudaStreamCreate():
    return _ok(cudaStream_t(GPU.new_stream()))


def cudaStreamSynchronize(stream):
    value = _stream_value(stream)
    if value and value not in GPU.streams:
        return (cudaError_t.cudaErrorInvalidResourceHandle,)
    GPU.synchronize(value)
    return _ok()


def cudaStreamDestroy(stream):
    value = _stream_value(stream)
    if value not in GPU.streams:
        return (cudaError_t.cudaErrorInvalidResourceHandle,)
    GPU.synchronize(value)  # CUDA finishes the stream's work, then releases it
    del GPU.streams[value]
    return _ok()


def cudaMalloc(size: int):
    ptr = GPU.malloc(size)
    if ptr is None:
        return (cudaError_t.cudaErrorMemoryAllocation, 0)
    return _ok(ptr)


def cudaFree(ptr: int):
    if int(ptr) not in GPU.blocks:
        return (cudaError_t.cudaErrorInvalidValue,)
    del GPU.blocks[int(ptr)]
    return _ok()


def cudaMallocHost(size: int):
    return _ok(GPU.pinned_host(size))


def cudaFreeHost(ptr: int):
    if int(ptr) not in GPU.pinned:
        return (cudaError_t.cudaErrorInvalidValue,)
    del GPU.pinned[int(ptr)]
    return _ok()


def cudaMemcpyAsync(dst: int, src: int, count: int, kind: cudaMemcpyKind, stream):
    value = _stream_value(stream)
    dst, src, count = int(dst), int(src), int(count)
    try:
        if kind == cudaMemcpyKind.cudaMemcpyHostToDevice:
            target = GPU.device_span(dst, count)

            def work() -> None:
                target[:] = np.frombuffer(ctypes.string_at(src, count), np.uint8)
        elif kind == cudaMemcpyKind.cudaMemcpyDeviceToHost:
            source = GPU.device_span(src, count)
            if dst in GPU.blocks:
                raise ValueError("device-to-host copy into device memory")

            def work() -> None:
                ctypes.memmove(dst, source.tobytes(), count)
        else:
            return (cudaError_t.cudaErrorInvalidValue,)
        GPU.enqueue(value, work)
    except ValueError:
        return (cudaError_t.cudaErrorInvalidValue,)
    return _ok()


def cuda_python_modules() -> dict[str, types.ModuleType]:
    """sys.modules entries that make `from cuda.bindings import runtime` import the double."""
    runtime = types.ModuleType("cuda.bindings.runtime", "TEST DOUBLE of cuda-python's runtime API (tests/cuda_double.py)")
    for name, value in dict(globals()).items():
        if name.startswith("cuda") and name not in ("cuda_python_modules",):
            setattr(runtime, name, value)
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = runtime  # type: ignore[attr-defined]
    cuda = types.ModuleType("cuda")
    cuda.bindings = bindings  # type: ignore[attr-defined]
    for module in (cuda, bindings, runtime):
        module.__spec__ = importlib.machinery.ModuleSpec(module.__name__, None, is_package=module is not runtime)
        if module is not runtime:
            module.__path__ = []  # type: ignore[attr-defined]
    return {"cuda": cuda, "cuda.bindings": bindings, "cuda.bindings.runtime": runtime}


# ---- pycuda: pycuda.driver ---------------------------------------------------------------------

class _PyCudaError(Exception):
    pass


class _LogicError(_PyCudaError):
    pass


class _MemoryError(_PyCudaError):
    pass


_context_stack = threading.local()


def _require_context(what: str) -> None:
    if not getattr(_context_stack, "items", None):
        raise _LogicError(f"{what} failed: invalid device context")


class _Context:
    def __init__(self, device: int) -> None:
        self.device = device
        self.detached = False
        GPU.retained_contexts += 1

    def push(self) -> None:
        if self.detached:
            raise _LogicError("cuCtxPushCurrent failed: context was detached")
        _context_stack.items = [*getattr(_context_stack, "items", []), self]

    def detach(self) -> None:
        if not self.detached:
            self.detached = True
            GPU.retained_contexts -= 1

    @staticmethod
    def pop() -> None:
        items = getattr(_context_stack, "items", [])
        if not items:
            raise _LogicError("cuCtxPopCurrent failed: no current context")
        items.pop()


class _Device:
    @staticmethod
    def count() -> int:
        return GPU.device_count

    def __init__(self, index: int) -> None:
        if not 0 <= index < GPU.device_count:
            raise _LogicError(f"cuDeviceGet failed: invalid device ordinal {index}")
        self.index = index

    def name(self) -> str:
        return NAME

    def compute_capability(self) -> tuple[int, int]:
        return CAPABILITY

    def retain_primary_context(self) -> _Context:
        return _Context(self.index)


class _Stream:
    def __init__(self) -> None:
        _require_context("cuStreamCreate")
        self.handle = GPU.new_stream()

    def synchronize(self) -> None:
        _require_context("cuStreamSynchronize")
        GPU.synchronize(self.handle)

    def __del__(self) -> None:  # pycuda destroys a stream when its object goes
        if self.handle in GPU.streams:
            GPU.synchronize(self.handle)
            del GPU.streams[self.handle]


class _DeviceAllocation:
    def __init__(self, ptr: int) -> None:
        self.ptr = ptr

    def __int__(self) -> int:
        return self.ptr

    def free(self) -> None:
        _require_context("cuMemFree")
        del GPU.blocks[self.ptr]


class _HostAllocation(np.ndarray):
    """The base of a pagelocked_empty array (pycuda's HostAllocation)."""

    live = 0

    def free(self) -> None:
        _HostAllocation.live -= 1


def _init() -> None:
    pass


def _mem_alloc(nbytes: int) -> _DeviceAllocation:
    _require_context("cuMemAlloc")
    ptr = GPU.malloc(nbytes)
    if ptr is None:
        raise _MemoryError("cuMemAlloc failed: out of memory")
    return _DeviceAllocation(ptr)


def _pagelocked_empty(shape: Any, dtype: Any) -> np.ndarray:
    _require_context("cuMemHostAlloc")
    dtype = np.dtype(dtype)
    count = int(np.prod(shape))
    allocation = _HostAllocation(max(count * dtype.itemsize, 1), np.uint8)  # owns its memory, so views name it as base
    allocation[:] = 0
    _HostAllocation.live += 1
    array = allocation.view(dtype=dtype, type=np.ndarray)  # its .base is the allocation, as in pycuda
    return array if np.ndim(shape) == 0 else array.reshape(shape)


def _memcpy_htod_async(dest: int, src: np.ndarray, stream: _Stream) -> None:
    _require_context("cuMemcpyHtoDAsync")
    target = GPU.device_span(int(dest), src.nbytes)
    GPU.enqueue(stream.handle, lambda: target.__setitem__(slice(None), np.frombuffer(src.tobytes(), np.uint8)))


def _memcpy_dtoh_async(dest: np.ndarray, src: int, stream: _Stream) -> None:
    _require_context("cuMemcpyDtoHAsync")
    source = GPU.device_span(int(src), dest.nbytes)
    GPU.enqueue(stream.handle, lambda: dest.reshape(-1).view(np.uint8).__setitem__(slice(None), source))


def pycuda_modules() -> dict[str, types.ModuleType]:
    """sys.modules entries that make `import pycuda.driver` import the double."""
    driver = types.ModuleType("pycuda.driver", "TEST DOUBLE of pycuda.driver (tests/cuda_double.py)")
    for name, value in {"init": _init, "Device": _Device, "Context": _Context, "Stream": _Stream, "mem_alloc": _mem_alloc,
                        "pagelocked_empty": _pagelocked_empty, "memcpy_htod_async": _memcpy_htod_async,
                        "memcpy_dtoh_async": _memcpy_dtoh_async, "Error": _PyCudaError, "LogicError": _LogicError,
                        "MemoryError": _MemoryError, "DeviceAllocation": _DeviceAllocation}.items():
        setattr(driver, name, value)
    pycuda = types.ModuleType("pycuda")
    pycuda.driver = driver  # type: ignore[attr-defined]
    pycuda.__path__ = []  # type: ignore[attr-defined]
    pycuda.__spec__ = importlib.machinery.ModuleSpec("pycuda", None, is_package=True)
    driver.__spec__ = importlib.machinery.ModuleSpec("pycuda.driver", None)
    return {"pycuda": pycuda, "pycuda.driver": driver}


def modules(library: str) -> dict[str, types.ModuleType]:
    """The sys.modules entries for `library` ('cuda-python' or 'pycuda')."""
    return {"cuda-python": cuda_python_modules, "pycuda": pycuda_modules}[library]()
