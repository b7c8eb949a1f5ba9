"""TensorRT backend: a bundle's serialized engine on an NVIDIA GPU (desktop or Jetson), TensorRT 8.5 to 10.x.

TensorRT's name-based tensor API (`set_input_shape`, `set_tensor_address`, `execute_async_v3`) on
one CUDA stream; page-locked host and device buffers sized for the largest batch seen, reused across
calls, freed on `close()`. Device memory comes from pycuda or cuda-python (`cuda_memory`), both in
the device's primary context. An engine only runs on the GPU model and TensorRT version it was built
with: anything else is refused with the command that rebuilds it from the ONNX kept in the bundle.
"""

from __future__ import annotations

import importlib.util
import shlex
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ram_edge.bundle import Bundle, read_bundle
from ram_edge.errors import BundleError, RuntimeUnavailableError

from .base import Runtime, normalize_compute_precision
from .cuda_memory import INSTALL_HINT, CudaMemory, DeviceBuffer, GpuInfo, installed_backends, open_cuda
from .tensorrt_version import version_problem

TENSORRT_INSTALL_HINT = (
    "TensorRT's Python package `tensorrt` is missing: on a desktop or server GPU install it with "
    "`pip install 'ram-edge[trt]'` (the tensorrt wheels, which pip fetches from NVIDIA's index); on a Jetson it comes "
    "with JetPack (`sudo apt install python3-libnvinfer`, then use a venv made with --system-site-packages)"
)


def tensorrt_import_error() -> str | None:
    """Why `import tensorrt` fails here (None when it works)."""
    if importlib.util.find_spec("tensorrt") is None:
        return TENSORRT_INSTALL_HINT
    try:
        import tensorrt
    except Exception as exc:  # the bindings import but their libraries do not load: OSError, ImportError
        return (f"TensorRT's Python bindings are installed but do not load ({type(exc).__name__}: {exc}); install the TensorRT "
                f"libraries that match them (`pip install 'ram-edge[trt]'` on a desktop, JetPack on a Jetson)")
    if not hasattr(tensorrt, "Runtime"):
        # A folder of type stubs (tensorrt-stubs) imports as an empty namespace package.
        where = ", ".join(getattr(tensorrt, "__path__", [])) or "?"
        return (f"`import tensorrt` finds {where}, which is not TensorRT (type stubs only?); " + TENSORRT_INSTALL_HINT)
    return version_problem(str(getattr(tensorrt, "__version__", "0")))


def parse_device(device: str | None) -> int:
    """CUDA device index from 'cuda', 'cuda:N', 'gpu' or None."""
    value = (device or "cuda").strip().lower()
    if value in ("cuda", "gpu"):
        return 0
    head, _, tail = value.partition(":")
    if head in ("cuda", "gpu") and tail.isdigit():
        return int(tail)
    raise RuntimeUnavailableError(f"unknown device {device!r} for the trt runtime; valid: cuda, cuda:N (N = GPU index)")


def rebuild_command(bundle_path: str | Path, record: dict[str, Any]) -> str:
    """The `ram-edge export` command that rebuilds this bundle's engine on the current device, in place."""
    path = shlex.quote(str(bundle_path))
    args = [f"ram-edge export {path} --format trt -o {path} --overwrite --precision {record.get('precision', 'fp16')}"]
    profile = record.get("profile") or {}
    if profile.get("max"):
        args.append(f"--max-batch {profile['max'][0]} --opt-batch {profile['opt'][0]}")
    if record.get("workspace_mb"):
        args.append(f"--workspace {record['workspace_mb']}")
    if record.get("dla_core") is not None:
        args.append(f"--dla-core {record['dla_core']}")
    return " ".join(args)


def engine_mismatch(record: dict[str, Any], trt_version: str, gpu: GpuInfo) -> str | None:
    """Why an engine built as `record` says cannot run with this TensorRT on this GPU (None when it can)."""
    built_version = str(record.get("version", "?"))
    built_gpu = record.get("gpu") or {}
    reasons = []
    if built_version != trt_version:
        reasons.append(f"it was built with TensorRT {built_version}, this is TensorRT {trt_version}")
    if str(built_gpu.get("compute_capability")) != gpu.compute_capability or built_gpu.get("name") != gpu.name:
        reasons.append(f"it was built on {built_gpu.get('name', '?')} (compute capability {built_gpu.get('compute_capability', '?')}), "
                       f"this is {gpu.name} (compute capability {gpu.compute_capability})")
    return "; ".join(reasons) or None


def _per_image(shape: Any) -> int:
    """Elements per image of an engine tensor of `shape` (batch first)."""
    return int(np.prod([int(shape[i]) for i in range(1, len(shape))] or [1]))


class TensorRTRuntime(Runtime):
    """A TensorRT engine on one CUDA device and one stream (one run at a time: `Tagger` serialises calls)."""

    name: ClassVar[str] = "trt"
    formats: ClassVar[tuple[str, ...]] = ("trt",)
    thread_safe: ClassVar[bool] = False

    @classmethod
    def is_installed(cls) -> bool:
        """True when tensorrt imports and pycuda or cuda-python is present."""
        return tensorrt_import_error() is None and bool(installed_backends())

    @classmethod
    def install_hint(cls) -> str:
        """What is missing and how to install it (desktop wheel or JetPack)."""
        missing = [m for m in (tensorrt_import_error(),) if m]
        if not installed_backends():
            missing.append(f"the trt runtime also needs pycuda or cuda-python for device memory: {INSTALL_HINT}")
        return "; ".join(missing) or "the trt runtime is installed"

    @classmethod
    def available_devices(cls) -> list[str]:
        """'cuda' and 'cuda:N' for every visible GPU (empty without a working driver)."""
        try:
            memory = open_cuda(0)
        except RuntimeUnavailableError:
            return []
        count = memory.device_count()
        return ["cuda"] + [f"cuda:{i}" for i in range(count)]

    def __init__(self, path: str | Path, *, device: str | None = None, threads: int | None = None,
                 compute_precision: str | None = None) -> None:
        import tensorrt as trt

        self._buffers: dict[str, tuple[np.ndarray, DeviceBuffer]] = {}
        self._capacity = 0
        self._stream: Any = None
        self._closed = False
        self.bundle: Bundle = read_bundle(path)
        if self.bundle.format != "trt":
            raise RuntimeUnavailableError(
                f"{path} is a {self.bundle.format!r} bundle; the trt runtime runs TensorRT bundles: build one with "
                f"`ram-edge export {path} --format trt -o ENGINE_BUNDLE`"
            )
        record = dict(self.bundle.manifest.get("tensorrt") or {})
        if not record:
            raise BundleError(f"{path}: a trt bundle without its 'tensorrt' build record; rebuild it with `ram-edge export --format trt`")
        self.record = record
        asked = normalize_compute_precision(compute_precision)
        if asked is not None and asked != self.bundle.precision:
            raise RuntimeUnavailableError(
                f"this engine was built for {self.bundle.precision} and computes in it, not {asked}; "
                f"build another with `ram-edge export {path} --format trt --precision {asked} -o OTHER`"
            )
        self._memory: CudaMemory = open_cuda(parse_device(device))
        gpu = self._memory.gpu()
        problem = engine_mismatch(record, trt.__version__, gpu)
        if problem:
            raise BundleError(f"{path}: this TensorRT engine cannot run here ({problem}); rebuild it on this device from the "
                              f"ONNX kept in the bundle: {rebuild_command(path, record)}")
        self._gpu = gpu
        self._logger = trt.Logger(trt.Logger.WARNING)
        with self._memory.active():
            self._trt_runtime = trt.Runtime(self._logger)
            if record.get("dla_core") is not None:
                self._trt_runtime.DLA_core = int(record["dla_core"])
            engine = self._trt_runtime.deserialize_cuda_engine(self.bundle.file("model").read_bytes())
            if engine is None:
                raise BundleError(f"{path}: TensorRT could not deserialize the engine (see its message above); "
                                  f"rebuild it with: {rebuild_command(path, record)}")
            self._engine = engine
            context = engine.create_execution_context()
            if context is None:
                raise RuntimeUnavailableError(f"{path}: TensorRT could not create an execution context (out of GPU memory?)")
            self._context = context
            self._stream = self._memory.create_stream()
        self._input, self._output = self.bundle.input_name, self.bundle.output_name
        self._check_io()
        min_shape, _, max_shape = engine.get_tensor_profile_shape(self._input, 0)
        self._min_batch, self._max_batch = int(min_shape[0]), int(max_shape[0])
        self._image_shape = tuple(int(d) for d in max_shape[1:])
        self._num_classes = int(engine.get_tensor_shape(self._output)[1])
        self._per_image = {name: _per_image(engine.get_tensor_shape(name)) for name in self._io_names}
        self._per_image[self._input] = int(np.prod(self._image_shape))

    def _check_io(self) -> None:
        import tensorrt as trt

        names = {self._engine.get_tensor_name(i): self._engine.get_tensor_mode(self._engine.get_tensor_name(i))
                 for i in range(self._engine.num_io_tensors)}
        for name, mode in ((self._input, trt.TensorIOMode.INPUT), (self._output, trt.TensorIOMode.OUTPUT)):
            if names.get(name) != mode:
                raise BundleError(f"{self.bundle.path}: the engine has no {mode.name.lower()} tensor {name!r} "
                                  f"(it has {', '.join(names)}); rebuild it with: {rebuild_command(self.bundle.path, self.record)}")
        other_inputs = [n for n, mode in names.items() if mode == trt.TensorIOMode.INPUT and n != self._input]
        if other_inputs:
            raise BundleError(f"{self.bundle.path}: the engine takes inputs besides the image ({', '.join(other_inputs)}); "
                              f"a ram-edge engine has one: rebuild it with: {rebuild_command(self.bundle.path, self.record)}")
        # TensorRT needs an address for every I/O tensor: outputs the bundle does not read get buffers too.
        self._io_names = [self._input, self._output] + [n for n in names if n not in (self._input, self._output)]
        self._dtypes = {name: np.dtype(trt.nptype(self._engine.get_tensor_dtype(name))) for name in self._io_names}

    @property
    def device(self) -> str:
        """The CUDA device in use, e.g. 'cuda:0 (NVIDIA Orin)'; DLA engines name the core."""
        dla = self.record.get("dla_core")
        where = f"cuda:{self._gpu.index} ({self._gpu.name})"
        return f"{where}, DLA core {dla}" if dla is not None else where

    @property
    def compute_precision(self) -> str:
        """The precision the engine was built for (fp32, fp16, int8; layers kept in fp32 are in the manifest)."""
        return self.bundle.precision

    @property
    def min_batch(self) -> int:
        """The smallest batch of the engine's profile (a DLA engine's static batch; smaller batches are padded)."""
        return self._min_batch

    @property
    def max_batch(self) -> int:
        """The largest batch of the engine's optimization profile (larger batches run in chunks)."""
        return self._max_batch

    def _ensure_capacity(self, batch: int) -> None:
        """Grow the buffers to `batch` images (never shrink: sized for the largest batch seen)."""
        if batch <= self._capacity:
            return
        self._free_buffers()
        for name in self._io_names:
            host = self._memory.alloc_host(self._per_image[name] * batch, self._dtypes[name])
            try:
                device = self._memory.alloc_device(host.nbytes)
            except BaseException:
                self._memory.free_host(host)  # out of device memory: nothing of this attempt stays pinned
                self._free_buffers()
                raise
            self._buffers[name] = (host, device)
        self._capacity = batch

    def _free_buffers(self) -> None:
        for host, device in self._buffers.values():
            self._memory.free_device(device)
            self._memory.free_host(host)
        self._buffers = {}
        self._capacity = 0

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities (N, C) for a preprocessed batch; batches over the profile's maximum run in chunks."""
        if self._closed:
            raise RuntimeUnavailableError("this trt runtime was closed")
        batch = np.asarray(batch)
        if batch.ndim != 4 or tuple(batch.shape[1:]) != self._image_shape:
            raise RuntimeUnavailableError(f"input batch has shape {batch.shape}; this engine takes (N, {', '.join(map(str, self._image_shape))})")
        outputs = []
        with self._memory.active():
            for start in range(0, len(batch), self._max_batch):
                outputs.append(self._run_chunk(batch[start:start + self._max_batch]))
        if not outputs:
            return np.zeros((0, self._num_classes), np.float32)
        return np.concatenate(outputs).astype(np.float32, copy=False)

    def _run_chunk(self, chunk: np.ndarray) -> np.ndarray:
        n = len(chunk)
        padded = max(n, self._min_batch)
        self._ensure_capacity(padded)
        host_in, device_in = self._buffers[self._input]
        host_out, device_out = self._buffers[self._output]
        count_in = padded * int(np.prod(self._image_shape))
        view_in = host_in[:count_in].reshape(padded, *self._image_shape)
        view_in[:n] = chunk
        view_in[n:] = 0
        count_out = padded * self._num_classes
        self._memory.copy_to_device(device_in, host_in[:count_in], self._stream)
        if not self._context.set_input_shape(self._input, (padded, *self._image_shape)):
            raise RuntimeUnavailableError(f"TensorRT refused input shape {(padded, *self._image_shape)} for {self._input!r} "
                                          f"(profile batch {self._min_batch}..{self._max_batch})")
        for name in self._io_names:
            self._context.set_tensor_address(name, self._buffers[name][1].ptr)
        if not self._context.execute_async_v3(self._memory.stream_handle(self._stream)):
            raise RuntimeUnavailableError("TensorRT execute_async_v3 failed (see the TensorRT message above)")
        self._memory.copy_to_host(host_out[:count_out], device_out, self._stream)
        self._memory.synchronize(self._stream)
        return host_out[:count_out].reshape(padded, self._num_classes)[:n].copy()

    def close(self) -> None:
        """Free the buffers, the stream, the context and the engine (idempotent)."""
        if self._closed:
            return
        self._closed = True
        memory = getattr(self, "_memory", None)
        if memory is None:
            return
        with memory.active():
            self._free_buffers()
            if self._stream is not None:
                memory.destroy_stream(self._stream)
                self._stream = None
            # Context before engine before runtime: TensorRT's required destruction order.
            for attr in ("_context", "_engine", "_trt_runtime"):
                if hasattr(self, attr):
                    delattr(self, attr)
        memory.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
