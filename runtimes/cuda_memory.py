"""CUDA streams, device buffers and page-locked host buffers for the TensorRT runtime, through pycuda
or, where pycuda is absent, NVIDIA's cuda-python; the rest of ram-edge sees one small interface.

Both work in the device's *primary* context (the one the CUDA runtime, PyTorch and onnxruntime use),
never a context of their own, so a TensorRT engine can share a process with other CUDA users.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from ram_edge.errors import RuntimeUnavailableError

#: Environment variable that forces one library ("pycuda" or "cuda-python").
BACKEND_ENV = "RAM_EDGE_CUDA_BACKEND"
NO_GPU_HINT = ("TensorRT engines are built and run on the NVIDIA GPU that uses them (a Jetson or a GPU machine whose "
               "driver `nvidia-smi` shows); on a CPU-only machine use the ONNX or OpenVINO bundle instead")


@dataclass(frozen=True)
class GpuInfo:
    """The GPU an engine is built for or runs on."""

    index: int
    name: str
    compute_capability: str  # "8.7"


@dataclass
class DeviceBuffer:
    """Device memory: its address (what TensorRT is given) and its size."""

    ptr: int
    nbytes: int
    handle: Any = None  # the library's own object, kept alive until freed


class CudaMemory:
    """What the TensorRT runtime needs from CUDA; one subclass per Python CUDA library."""

    name = ""

    def __init__(self, device_index: int = 0) -> None:
        self.device_index = device_index

    def gpu(self) -> GpuInfo:
        """Name and compute capability of the device in use."""
        raise NotImplementedError

    def device_count(self) -> int:
        """How many CUDA devices are visible."""
        raise NotImplementedError

    @contextmanager
    def active(self) -> Iterator[None]:
        """Make the device's primary context current in this thread for the block."""
        yield

    def create_stream(self) -> Any:
        """A new CUDA stream (the library's object)."""
        raise NotImplementedError

    def stream_handle(self, stream: Any) -> int:
        """The stream's raw handle, as TensorRT's execute_async_v3 takes it."""
        raise NotImplementedError

    def synchronize(self, stream: Any) -> None:
        """Wait for the stream's work to finish."""
        raise NotImplementedError

    def destroy_stream(self, stream: Any) -> None:
        """Release a stream."""

    def close(self) -> None:
        """Release what this object holds of the device (idempotent); buffers and streams are freed before."""

    def alloc_device(self, nbytes: int) -> DeviceBuffer:
        """`nbytes` of device memory."""
        raise NotImplementedError

    def free_device(self, buffer: DeviceBuffer) -> None:
        """Release device memory."""
        raise NotImplementedError

    def alloc_host(self, count: int, dtype: np.dtype) -> np.ndarray:
        """A flat page-locked host array of `count` elements (async copies need page-locked memory)."""
        raise NotImplementedError

    def free_host(self, array: np.ndarray) -> None:
        """Release a page-locked host array."""
        raise NotImplementedError

    def copy_to_device(self, dst: DeviceBuffer, src: np.ndarray, stream: Any) -> None:
        """Enqueue a host-to-device copy of all of `src` (page-locked) onto `stream`."""
        raise NotImplementedError

    def copy_to_host(self, dst: np.ndarray, src: DeviceBuffer, stream: Any) -> None:
        """Enqueue a device-to-host copy filling all of `dst` (page-locked) onto `stream`."""
        raise NotImplementedError


class PyCudaMemory(CudaMemory):
    """pycuda (what JetPack tutorials use), in the device's retained primary context."""

    name = "pycuda"

    def __init__(self, device_index: int = 0) -> None:
        super().__init__(device_index)
        import pycuda.driver as cuda

        self._cuda = cuda
        try:
            cuda.init()
            count = cuda.Device.count()
        except cuda.Error as exc:
            raise RuntimeUnavailableError(f"no usable NVIDIA GPU here (pycuda could not initialise CUDA: {exc}): {NO_GPU_HINT}") from None
        if device_index >= count:
            raise RuntimeUnavailableError(f"CUDA device {device_index} does not exist (pycuda sees {count} device(s))")
        self._count = count
        self._device = cuda.Device(device_index)
        # The primary context is shared with the CUDA runtime (PyTorch, onnxruntime); pycuda.autoinit would
        # create a separate one. Retained here, made current around every use, released on close.
        self._context: Any = self._device.retain_primary_context()

    def device_count(self) -> int:
        """Devices the driver sees."""
        return self._count

    def gpu(self) -> GpuInfo:
        """Name and compute capability from the driver."""
        major, minor = self._device.compute_capability()
        return GpuInfo(self.device_index, self._device.name(), f"{major}.{minor}")

    def close(self) -> None:
        """Release the retained primary context (the driver destroys it when its last user releases it)."""
        context, self._context = self._context, None
        if context is not None:
            context.detach()

    @contextmanager
    def active(self) -> Iterator[None]:
        """Push the primary context for the block (contexts are per thread in the driver API)."""
        if self._context is None:
            raise RuntimeUnavailableError("this pycuda device memory was closed")
        self._context.push()
        try:
            yield
        finally:
            self._cuda.Context.pop()

    def create_stream(self) -> Any:
        """A pycuda Stream."""
        return self._cuda.Stream()

    def stream_handle(self, stream: Any) -> int:
        """The CUstream address."""
        return int(stream.handle)

    def synchronize(self, stream: Any) -> None:
        """Stream.synchronize."""
        stream.synchronize()

    def alloc_device(self, nbytes: int) -> DeviceBuffer:
        """mem_alloc."""
        allocation = self._cuda.mem_alloc(max(int(nbytes), 1))
        return DeviceBuffer(int(allocation), int(nbytes), allocation)

    def free_device(self, buffer: DeviceBuffer) -> None:
        """DeviceAllocation.free."""
        buffer.handle.free()

    def alloc_host(self, count: int, dtype: np.dtype) -> np.ndarray:
        """pagelocked_empty."""
        return self._cuda.pagelocked_empty(max(int(count), 1), dtype)

    def free_host(self, array: np.ndarray) -> None:
        """Free the page-locked allocation behind the array."""
        allocation: Any = array.base  # pycuda's HostAllocation
        allocation.free()

    def copy_to_device(self, dst: DeviceBuffer, src: np.ndarray, stream: Any) -> None:
        """memcpy_htod_async."""
        self._cuda.memcpy_htod_async(dst.ptr, src, stream)

    def copy_to_host(self, dst: np.ndarray, src: DeviceBuffer, stream: Any) -> None:
        """memcpy_dtoh_async."""
        self._cuda.memcpy_dtoh_async(dst, src.ptr, stream)


def _cudart() -> Any:
    """cuda-python's runtime module: `cuda.bindings.runtime` (12.6 and later) or `cuda.cudart` (older)."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        from cuda import cudart as runtime  # type: ignore[no-redef]
    return runtime


class CudaPythonMemory(CudaMemory):
    """NVIDIA's cuda-python (a wheel, no compiler needed); the CUDA runtime API always uses the primary context."""

    name = "cuda-python"

    def __init__(self, device_index: int = 0) -> None:
        super().__init__(device_index)
        self._rt = _cudart()
        count = self._call(self._rt.cudaGetDeviceCount(), "cudaGetDeviceCount")
        if device_index >= count:
            raise RuntimeUnavailableError(f"CUDA device {device_index} does not exist (cuda-python sees {count} device(s))")
        self._count = int(count)
        self._host: dict[int, int] = {}  # id(array) -> host pointer

    def _call(self, result: Any, what: str) -> Any:
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            name = getattr(err, "name", str(err))
            if "Driver" in name or "NoDevice" in name:
                raise RuntimeUnavailableError(f"no usable NVIDIA GPU here (CUDA call {what} failed: {name}): {NO_GPU_HINT}")
            raise RuntimeUnavailableError(f"CUDA call {what} failed: {name}")
        if not rest:
            return None
        return rest[0] if len(rest) == 1 else tuple(rest)

    def device_count(self) -> int:
        """Devices the CUDA runtime sees."""
        return self._count

    def gpu(self) -> GpuInfo:
        """Name and compute capability from cudaGetDeviceProperties."""
        props = self._call(self._rt.cudaGetDeviceProperties(self.device_index), "cudaGetDeviceProperties")
        name = props.name
        name = name.split(b"\0", 1)[0].decode() if isinstance(name, bytes) else str(name)
        return GpuInfo(self.device_index, name, f"{props.major}.{props.minor}")

    @contextmanager
    def active(self) -> Iterator[None]:
        """This device current in this thread for the block (the runtime API then uses its primary context),
        and the caller's device current again after it: the host program may be using another GPU."""
        previous = self._call(self._rt.cudaGetDevice(), "cudaGetDevice")
        self._call(self._rt.cudaSetDevice(self.device_index), "cudaSetDevice")
        try:
            yield
        finally:
            if int(previous) != self.device_index:
                self._call(self._rt.cudaSetDevice(int(previous)), "cudaSetDevice")

    def create_stream(self) -> Any:
        """cudaStreamCreate."""
        return self._call(self._rt.cudaStreamCreate(), "cudaStreamCreate")

    def stream_handle(self, stream: Any) -> int:
        """The cudaStream_t value itself: `int(stream)` (`getPtr()` is where cuda-python stores it, not the stream)."""
        return int(stream)

    def synchronize(self, stream: Any) -> None:
        """cudaStreamSynchronize."""
        self._call(self._rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def destroy_stream(self, stream: Any) -> None:
        """cudaStreamDestroy."""
        self._call(self._rt.cudaStreamDestroy(stream), "cudaStreamDestroy")

    def alloc_device(self, nbytes: int) -> DeviceBuffer:
        """cudaMalloc."""
        ptr = self._call(self._rt.cudaMalloc(max(int(nbytes), 1)), "cudaMalloc")
        return DeviceBuffer(int(ptr), int(nbytes))

    def free_device(self, buffer: DeviceBuffer) -> None:
        """cudaFree."""
        self._call(self._rt.cudaFree(buffer.ptr), "cudaFree")

    def alloc_host(self, count: int, dtype: np.dtype) -> np.ndarray:
        """cudaMallocHost, viewed as a numpy array."""
        dtype = np.dtype(dtype)
        nbytes = max(int(count), 1) * dtype.itemsize
        ptr = int(self._call(self._rt.cudaMallocHost(nbytes), "cudaMallocHost"))
        array = np.frombuffer((ctypes.c_byte * nbytes).from_address(ptr), dtype=dtype)
        self._host[id(array)] = ptr
        return array

    def free_host(self, array: np.ndarray) -> None:
        """cudaFreeHost."""
        ptr = self._host.pop(id(array), None)
        if ptr is not None:
            self._call(self._rt.cudaFreeHost(ptr), "cudaFreeHost")

    def copy_to_device(self, dst: DeviceBuffer, src: np.ndarray, stream: Any) -> None:
        """cudaMemcpyAsync host to device."""
        kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._call(self._rt.cudaMemcpyAsync(dst.ptr, src.ctypes.data, src.nbytes, kind, stream), "cudaMemcpyAsync")

    def copy_to_host(self, dst: np.ndarray, src: DeviceBuffer, stream: Any) -> None:
        """cudaMemcpyAsync device to host."""
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._call(self._rt.cudaMemcpyAsync(dst.ctypes.data, src.ptr, dst.nbytes, kind, stream), "cudaMemcpyAsync")


def _has_cuda_python() -> bool:
    try:
        return importlib.util.find_spec("cuda.bindings") is not None or importlib.util.find_spec("cuda.cudart") is not None
    except (ImportError, ValueError):
        return False


def _has_pycuda() -> bool:
    return importlib.util.find_spec("pycuda") is not None


# name -> (is it importable, constructor); order is the preference: pycuda first (the design card's and
# JetPack's choice), cuda-python where pycuda is absent.
BACKENDS: dict[str, tuple[Callable[[], bool], Callable[[int], CudaMemory]]] = {
    "pycuda": (_has_pycuda, PyCudaMemory),
    "cuda-python": (_has_cuda_python, CudaPythonMemory),
}

INSTALL_HINT = ("install cuda-python (`pip install 'cuda-python>=12.6,<13'`, a wheel that runs on CUDA 12 and 13 drivers) "
                "or pycuda (`pip install pycuda`, which compiles against the local CUDA: on a Jetson put /usr/local/cuda/bin on PATH first)")


def installed_backends() -> list[str]:
    """Names of the CUDA libraries that import here, in preference order."""
    return [name for name, (present, _) in BACKENDS.items() if present()]


def open_cuda(device_index: int = 0, backend: str | None = None) -> CudaMemory:
    """The CUDA memory interface on `device_index`: `backend` (or $RAM_EDGE_CUDA_BACKEND), else the first installed."""
    backend = backend or os.environ.get(BACKEND_ENV) or None
    if backend is not None:
        if backend not in BACKENDS:
            raise RuntimeUnavailableError(f"unknown CUDA library {backend!r} (from {BACKEND_ENV} or the caller); valid: {', '.join(BACKENDS)}")
        present, make = BACKENDS[backend]
        if not present():
            raise RuntimeUnavailableError(f"CUDA library {backend!r} is not installed; {INSTALL_HINT}")
        return make(device_index)
    names = installed_backends()
    if not names:
        raise RuntimeUnavailableError(f"the trt runtime needs pycuda or cuda-python for device memory and neither is installed; {INSTALL_HINT}")
    return BACKENDS[names[0]][1](device_index)
