"""TEST DOUBLE of TensorRT 10's Python API and of CUDA memory, for CPU-only machines.

Not TensorRT: it lets the tests drive ram-edge's engine builder and `trt` runtime (profiles, shapes,
buffer plans, manifest checks, refusal of foreign engines, errors) where the real libraries cannot be
installed. Only the API calls ram-edge makes exist here, with TensorRT's names and signatures (the
real calls are checked against NVIDIA's stubs by ../shared/tools/trt_api_check.py). The "network" is
the ONNX graph's nodes as layers; the "engine" is a header plus the ONNX bytes; executing it runs
onnxruntime on the CPU, reading and writing the double's fake device memory by address.
"""

from __future__ import annotations

import enum
import importlib.machinery
import itertools
import json
import types
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np

from ram_edge.runtimes.cuda_memory import CudaMemory, DeviceBuffer, GpuInfo

VERSION = "10.99.0.double"
MAGIC = b"RAM-EDGE TEST DOUBLE ENGINE\n"
GPU = GpuInfo(0, "Test Double GPU", "8.7")


# ---- fake CUDA memory ----------------------------------------------------------------------------

class FakeDeviceMemory:
    """Address space of the double's 'device': address -> bytes."""

    def __init__(self) -> None:
        self.blocks: dict[int, np.ndarray] = {}
        self._next = itertools.count(0x10000, 0x10000)
        self.allocations = 0
        self.host_live = 0
        self.streams_live = 0

    def alloc(self, nbytes: int) -> int:
        ptr = next(self._next)
        self.blocks[ptr] = np.zeros(max(nbytes, 1), np.uint8)
        self.allocations += 1
        return ptr

    def view(self, ptr: int, dtype: np.dtype, count: int) -> np.ndarray:
        return self.blocks[ptr][: count * np.dtype(dtype).itemsize].view(dtype)


DEVICE = FakeDeviceMemory()


class DoubleCudaMemory(CudaMemory):
    """CudaMemory over FakeDeviceMemory (registered as the 'double' backend by the tests)."""

    name = "double"

    def __init__(self, device_index: int = 0) -> None:
        super().__init__(device_index)
        if device_index != 0:
            from ram_edge.errors import RuntimeUnavailableError

            raise RuntimeUnavailableError(f"CUDA device {device_index} does not exist (the double has 1)")
        self.active_depth = 0

    def gpu(self) -> GpuInfo:
        return GPU

    def device_count(self) -> int:
        return 1

    @contextmanager
    def active(self) -> Iterator[None]:
        self.active_depth += 1
        try:
            yield
        finally:
            self.active_depth -= 1

    def create_stream(self) -> Any:
        DEVICE.streams_live += 1
        return object()

    def stream_handle(self, stream: Any) -> int:
        return id(stream)

    def synchronize(self, stream: Any) -> None:
        pass

    def destroy_stream(self, stream: Any) -> None:
        DEVICE.streams_live -= 1

    def alloc_device(self, nbytes: int) -> DeviceBuffer:
        return DeviceBuffer(DEVICE.alloc(nbytes), nbytes)

    def free_device(self, buffer: DeviceBuffer) -> None:
        del DEVICE.blocks[buffer.ptr]

    def alloc_host(self, count: int, dtype: np.dtype) -> np.ndarray:
        DEVICE.host_live += 1
        return np.zeros(max(count, 1), dtype)

    def free_host(self, array: np.ndarray) -> None:
        DEVICE.host_live -= 1

    def copy_to_device(self, dst: DeviceBuffer, src: np.ndarray, stream: Any) -> None:
        assert self.active_depth > 0, "CUDA call outside the device's context"
        DEVICE.blocks[dst.ptr][: src.nbytes] = src.view(np.uint8).ravel()

    def copy_to_host(self, dst: np.ndarray, src: DeviceBuffer, stream: Any) -> None:
        assert self.active_depth > 0, "CUDA call outside the device's context"
        dst.view(np.uint8)[:] = DEVICE.blocks[src.ptr][: dst.nbytes]


# ---- fake tensorrt -------------------------------------------------------------------------------

class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT64 = 3


class LayerType(enum.Enum):
    NORMALIZATION = 1
    SOFTMAX = 2
    REDUCE = 3
    ACTIVATION = 4
    ELEMENTWISE = 5
    OTHER = 6


class TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


BuilderFlag = enum.Enum("BuilderFlag", "FP16 INT8 TF32 OBEY_PRECISION_CONSTRAINTS GPU_FALLBACK")
MemoryPoolType = enum.Enum("MemoryPoolType", "WORKSPACE")
DeviceType = enum.Enum("DeviceType", "GPU DLA")
ProfilingVerbosity = enum.Enum("ProfilingVerbosity", "NONE LAYER_NAMES_ONLY DETAILED")
LayerInformationFormat = enum.Enum("LayerInformationFormat", "ONELINE JSON")
_OP_LAYER = {"LayerNormalization": LayerType.NORMALIZATION, "Softmax": LayerType.SOFTMAX, "ReduceMean": LayerType.REDUCE,
             "Sigmoid": LayerType.ACTIVATION, "Relu": LayerType.ACTIVATION, "Add": LayerType.ELEMENTWISE, "Mul": LayerType.ELEMENTWISE}
# Ops the double's "DLA" cannot run (the real DLA has a list of its own).
_NOT_ON_DLA = {"LayerNormalization", "Softmax", "Erf", "Gather", "Shape"}


def nptype(dtype: DataType) -> type:
    return {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8, DataType.INT64: np.int64}[dtype]


class Logger:
    WARNING = 2
    INFO = 3

    def __init__(self, min_severity: int = 2) -> None:
        self.min_severity = min_severity


class Dims(tuple):
    def __new__(cls, shape=()):
        return super().__new__(cls, [int(d) for d in shape])


class Tensor:
    def __init__(self, name: str, dtype: DataType = DataType.FLOAT) -> None:
        self.name = name
        self.dtype = dtype


class Layer:
    def __init__(self, node) -> None:
        self.name = node.name or f"{node.op_type}_{id(node)}"
        self.op_type = node.op_type
        self.type = _OP_LAYER.get(node.op_type, LayerType.OTHER)
        dtype = DataType.INT64 if node.op_type in ("Shape", "Gather", "Concat", "Unsqueeze") else DataType.FLOAT
        self._outputs = [Tensor(name, dtype) for name in node.output]
        self.precision: Any = None
        self.output_types: dict[int, Any] = {}

    @property
    def num_outputs(self) -> int:
        return len(self._outputs)

    def get_output(self, index: int) -> Tensor:
        return self._outputs[index]

    def set_output_type(self, index: int, dtype: Any) -> None:
        self.output_types[index] = dtype


class Network:
    def __init__(self) -> None:
        self.layers: list[Layer] = []
        self.onnx_bytes = b""
        self.inputs: list[tuple[str, list[int]]] = []
        self.outputs: list[tuple[str, list[int]]] = []

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def get_layer(self, index: int) -> Layer:
        return self.layers[index]

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    def get_output(self, index: int) -> Tensor:
        return Tensor(self.outputs[index][0])


class OnnxParser:
    def __init__(self, network: Network, logger: Logger) -> None:
        self.network = network
        self.errors: list[str] = []

    def parse_from_file(self, model: str) -> bool:
        import onnx

        try:
            proto = onnx.load(model)
        except Exception as exc:  # what the real parser reports as a parse error
            self.errors.append(f"ERROR: {model}: {exc}")
            return False
        self.network.onnx_bytes = proto.SerializeToString()
        self.network.layers = [Layer(node) for node in proto.graph.node if node.op_type != "Constant"]

        def dims(value) -> list[int]:
            return [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]

        self.network.inputs = [(v.name, dims(v)) for v in proto.graph.input]
        self.network.outputs = [(v.name, dims(v)) for v in proto.graph.output]
        return True

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, index: int) -> str:
        return self.errors[index]


class IProgressMonitor:
    def __init__(self) -> None:
        pass


class TimingCache:
    def __init__(self, data: bytes) -> None:
        self.entries = json.loads(data.decode()) if data else {}

    def serialize(self) -> memoryview:
        return memoryview(json.dumps(self.entries).encode())


class OptimizationProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[Dims, Dims, Dims]] = {}

    def set_shape(self, input: str, min: Dims, opt: Dims, max: Dims) -> None:
        if not (all(a <= b <= c for a, b, c in zip(min, opt, max)) and len(min) == len(opt) == len(max)):
            raise ValueError(f"inconsistent profile for {input}: {min} {opt} {max}")
        self.shapes[input] = (min, opt, max)


class BuilderConfig:
    def __init__(self) -> None:
        self.flags = {BuilderFlag.TF32}
        self.pools: dict[Any, int] = {}
        self.profiles: list[OptimizationProfile] = []
        self.timing_cache: TimingCache | None = None
        self.default_device_type = DeviceType.GPU
        self.DLA_core = -1
        self.profiling_verbosity = ProfilingVerbosity.LAYER_NAMES_ONLY
        self.progress_monitor: Any = None

    def set_flag(self, flag) -> None:
        self.flags.add(flag)

    def clear_flag(self, flag) -> None:
        self.flags.discard(flag)

    def get_flag(self, flag) -> bool:
        return flag in self.flags

    def set_memory_pool_limit(self, pool, pool_size: int) -> None:
        self.pools[pool] = pool_size

    def add_optimization_profile(self, profile: OptimizationProfile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, serialized_timing_cache: bytes) -> TimingCache:
        return TimingCache(bytes(serialized_timing_cache))

    def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
        self.timing_cache = cache
        return True

    def get_timing_cache(self) -> TimingCache:
        assert self.timing_cache is not None
        return self.timing_cache

    def can_run_on_DLA(self, layer: Layer) -> bool:
        return layer.op_type not in _NOT_ON_DLA


class Builder:
    #: Class-level knobs the tests turn.
    num_DLA_cores = 0
    fail_build = False
    builds = 0

    def __init__(self, logger: Logger) -> None:
        self.logger = logger

    def create_network(self, flags: int = 0) -> Network:
        return Network()

    def create_builder_config(self) -> BuilderConfig:
        return BuilderConfig()

    def create_optimization_profile(self) -> OptimizationProfile:
        return OptimizationProfile()

    def build_serialized_network(self, network: Network, config: BuilderConfig) -> bytes | None:
        type(self).builds += 1
        if self.fail_build:
            return None
        if len(config.profiles) != 1:
            return None
        monitor = config.progress_monitor
        if monitor is not None:
            monitor.phase_start("Building engine", None, 3)
            for step in range(3):
                monitor.step_complete("Building engine", step)
            monitor.phase_finish("Building engine")
        cache_hit = False
        if config.timing_cache is not None:
            key = f"{len(network.layers)}-{sorted(f.name for f in config.flags)}"
            cache_hit = key in config.timing_cache.entries
            config.timing_cache.entries[key] = "tactics"
        profile = config.profiles[0]
        header = {
            "version": VERSION,
            "flags": sorted(f.name for f in config.flags),
            "profile": {name: [list(d) for d in dims] for name, dims in profile.shapes.items()},
            "fp32_layers": [l.name for l in network.layers if l.precision is not None],
            "inputs": network.inputs, "outputs": network.outputs,
            "dla_core": config.DLA_core if config.default_device_type == DeviceType.DLA else None,
            "timing_cache_hit": cache_hit,
            "precision_constraints": BuilderFlag.OBEY_PRECISION_CONSTRAINTS in config.flags,
        }
        return MAGIC + json.dumps(header).encode() + b"\n" + network.onnx_bytes


class EngineInspector:
    def __init__(self, engine: "Engine") -> None:
        self.engine = engine

    def get_engine_information(self, format) -> str:
        return json.dumps({"Layers": [{"Name": name, "Precision": "FP32"} for name in self.engine.header["fp32_layers"]],
                           "double": True})


class Engine:
    def __init__(self, header: dict, onnx_bytes: bytes) -> None:
        self.header = header
        self.onnx_bytes = onnx_bytes
        self._io = [(name, TensorIOMode.INPUT, dims) for name, dims in header["inputs"]] + \
                   [(name, TensorIOMode.OUTPUT, dims) for name, dims in header["outputs"]]

    @property
    def num_io_tensors(self) -> int:
        return len(self._io)

    def get_tensor_name(self, index: int) -> str:
        return self._io[index][0]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return next((mode for n, mode, _ in self._io if n == name), TensorIOMode.NONE)

    def get_tensor_dtype(self, name: str) -> DataType:
        return DataType.FLOAT

    def get_tensor_shape(self, name: str) -> Dims:
        return Dims(next(dims for n, _, dims in self._io if n == name))

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[Dims]:
        return [Dims(d) for d in self.header["profile"][name]]

    def create_execution_context(self) -> "ExecutionContext":
        return ExecutionContext(self)

    def create_engine_inspector(self) -> EngineInspector:
        return EngineInspector(self)


class ExecutionContext:
    executions = 0

    def __init__(self, engine: Engine) -> None:
        import onnxruntime as ort

        self.engine = engine
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(engine.onnx_bytes, options, providers=["CPUExecutionProvider"])
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}

    def set_input_shape(self, name: str, shape) -> bool:
        low, _, high = self.engine.header["profile"][name]
        if len(shape) != len(low) or not all(a <= s <= b for a, s, b in zip(low, shape, high)):
            return False
        self.shapes[name] = tuple(int(s) for s in shape)
        return True

    def set_tensor_address(self, name: str, memory: int) -> bool:
        self.addresses[name] = int(memory)
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        type(self).executions += 1
        (in_name, _), (out_name, out_dims) = self.engine.header["inputs"][0], self.engine.header["outputs"][0]
        shape = self.shapes[in_name]
        batch = DEVICE.view(self.addresses[in_name], np.float32, int(np.prod(shape))).reshape(shape)
        probs = self.session.run([out_name], {in_name: batch.copy()})[0].astype(np.float32)
        DEVICE.view(self.addresses[out_name], np.float32, probs.size)[:] = probs.ravel()
        return True


class Runtime:
    def __init__(self, logger: Logger) -> None:
        self.logger = logger
        self.DLA_core = -1

    def deserialize_cuda_engine(self, serialized_engine: bytes) -> Engine | None:
        data = bytes(serialized_engine)
        if not data.startswith(MAGIC):
            return None
        header_line, onnx_bytes = data[len(MAGIC):].split(b"\n", 1)
        header = json.loads(header_line)
        if header["version"] != VERSION:
            return None
        if header["dla_core"] is not None and self.DLA_core != header["dla_core"]:
            return None  # a DLA engine needs its core set on the runtime first
        return Engine(header, onnx_bytes)


def install(mp, cache_dir) -> None:
    """Put the double in place of TensorRT and CUDA memory with `mp` (a pytest MonkeyPatch); timing cache under `cache_dir`."""
    import sys

    from ram_edge.runtimes import cuda_memory

    mp.setitem(sys.modules, "tensorrt", module())
    mp.setitem(cuda_memory.BACKENDS, "double", (lambda: True, DoubleCudaMemory))
    mp.setenv(cuda_memory.BACKEND_ENV, "double")
    mp.setenv("XDG_CACHE_HOME", str(cache_dir))
    mp.delenv("RAM_EDGE_TRT_TIMING_CACHE", raising=False)


def module() -> types.ModuleType:
    """The double as a module object to put at sys.modules['tensorrt']."""
    mod = types.ModuleType("tensorrt", "TEST DOUBLE of TensorRT (tests/trt_double.py), not TensorRT")
    mod.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    for name, value in {
        "__version__": VERSION, "Logger": Logger, "ILogger": Logger, "Builder": Builder, "OnnxParser": OnnxParser,
        "Runtime": Runtime, "IProgressMonitor": IProgressMonitor, "Dims": Dims, "DataType": DataType, "LayerType": LayerType,
        "TensorIOMode": TensorIOMode, "BuilderFlag": BuilderFlag, "MemoryPoolType": MemoryPoolType, "DeviceType": DeviceType,
        "ProfilingVerbosity": ProfilingVerbosity, "LayerInformationFormat": LayerInformationFormat, "nptype": nptype,
        "float32": DataType.FLOAT, "float16": DataType.HALF,
    }.items():
        setattr(mod, name, value)
    return mod
