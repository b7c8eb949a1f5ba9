"""TEST DOUBLE of TensorRT's Python API (8.5, 8.6, 10.x and the versions around them), for CPU-only machines.

Not TensorRT: it lets the tests drive ram-edge's engine builder and `trt` runtime where the real
library cannot be installed. Only the calls ram-edge makes exist, with TensorRT's names and
signatures (the real calls are checked against NVIDIA's stubs by ../shared/tools/trt_api_check.py).
The "network" is the ONNX graph's nodes as layers; the "engine" is a header plus the ONNX bytes;
executing it enqueues an onnxruntime run on the CPU onto the fake GPU's stream (tests/cuda_double.py),
reading and writing device memory by address.

It is at least as strict as TensorRT where ram-edge's bugs would hide:
- the ONNX parser applies onnx-tensorrt's rule for Q/DQ: zero points int8 and all zero (symmetric);
- 8.x networks parse ONNX only when created with the EXPLICIT_BATCH flag;
- each pose has the flags and classes of its version (11 has no FP16 / INT8 / OBEY_PRECISION_CONSTRAINTS,
  8.x no IProgressMonitor), and objects refuse attributes they do not have (pybind11 does);
- `execute_async_v3` takes an int that is a live stream's handle, and every I/O tensor needs a shape
  and a device address large enough for it;
- a DLA engine needs a static profile (min = opt = max): with dynamic shapes and GPU_FALLBACK every
  layer runs on the GPU, without GPU_FALLBACK the build fails; the inspector names what runs where;
- a timing cache from another TensorRT or GPU is refused by `set_timing_cache(ignore_mismatch=False)`.
"""

from __future__ import annotations

import enum
import importlib
import importlib.machinery
import json
import sys
import types
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np

import cuda_double

VERSION = "10.99.0.double"
#: The versions the double poses as (JetPack 5.1, JetPack 6.0, JetPack 6.1/6.2, a newer desktop wheel, and
#: the versions just outside the supported range).
POSES = {"8.4": "8.4.3.1", "8.5": "8.5.2.2", "8.6": "8.6.2.3", "10.3": "10.3.0.30", "10.x": VERSION, "11": "11.0.0.double"}
MAGIC = b"RAM-EDGE TEST DOUBLE ENGINE\n"
GPU_NAME, CAPABILITY = cuda_double.NAME, "8.7"


def _major(version: str) -> int:
    return int(version.split(".")[0])


class _Strict:
    """pybind11 objects: setting an attribute the class does not have raises AttributeError."""

    _attributes: frozenset[str] = frozenset()

    def __setattr__(self, name: str, value: Any) -> None:
        if not name.startswith("_") and name not in self._attributes:
            raise AttributeError(f"'tensorrt.{type(self).__name__}' object has no attribute '{name}'")
        object.__setattr__(self, name, value)


class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    INT64 = 4


class LayerType(enum.Enum):
    NORMALIZATION = 1
    SOFTMAX = 2
    REDUCE = 3
    ACTIVATION = 4
    ELEMENTWISE = 5
    QUANTIZE = 6
    DEQUANTIZE = 7
    OTHER = 8


class TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


MemoryPoolType = enum.Enum("MemoryPoolType", "WORKSPACE")
DeviceType = enum.Enum("DeviceType", "GPU DLA")
ProfilingVerbosity = enum.Enum("ProfilingVerbosity", "NONE LAYER_NAMES_ONLY DETAILED")
LayerInformationFormat = enum.Enum("LayerInformationFormat", "ONELINE JSON")
_OP_LAYER = {"LayerNormalization": LayerType.NORMALIZATION, "Softmax": LayerType.SOFTMAX, "ReduceMean": LayerType.REDUCE,
             "Sigmoid": LayerType.ACTIVATION, "Relu": LayerType.ACTIVATION, "Add": LayerType.ELEMENTWISE, "Mul": LayerType.ELEMENTWISE,
             "QuantizeLinear": LayerType.QUANTIZE, "DequantizeLinear": LayerType.DEQUANTIZE}
# Ops the double's "DLA" cannot run (the real DLA has a list of its own).
_NOT_ON_DLA = {"LayerNormalization", "Softmax", "Erf", "Gather", "Shape"}
# ONNX TensorProto element types
_ONNX_UINT8, _ONNX_INT8 = 2, 3


def nptype(dtype: DataType) -> type:
    return {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8, DataType.INT32: np.int32,
            DataType.INT64: np.int64}[dtype]


class Logger:
    ERROR = 1
    WARNING = 2
    INFO = 3

    def __init__(self, min_severity: int = 2) -> None:
        self.min_severity = min_severity
        self.messages: list[str] = []

    def log(self, severity: int, msg: str) -> None:
        self.messages.append(msg)
        if severity <= self.min_severity:
            print(f"[TRT] {msg}", file=sys.stderr)


class Dims(tuple):
    def __new__(cls, shape=()):
        return super().__new__(cls, [int(d) for d in shape])


class Tensor:
    def __init__(self, name: str, dtype: DataType = DataType.FLOAT) -> None:
        self.name = name
        self.dtype = dtype


class Layer(_Strict):
    _attributes = frozenset({"precision", "name"})

    def __init__(self, node) -> None:
        self.name = node.name or f"{node.op_type}_{id(node)}"
        self._op_type = node.op_type
        self._type = _OP_LAYER.get(node.op_type, LayerType.OTHER)
        dtype = DataType.INT64 if node.op_type in ("Shape", "Gather", "Concat", "Unsqueeze") else DataType.FLOAT
        self._outputs = [Tensor(name, dtype) for name in node.output]
        self.precision: Any = None
        self._output_types: dict[int, Any] = {}

    @property
    def type(self) -> LayerType:
        return self._type

    @property
    def op_type(self) -> str:
        return self._op_type

    @property
    def num_outputs(self) -> int:
        return len(self._outputs)

    def get_output(self, index: int) -> Tensor:
        return self._outputs[index]

    def set_output_type(self, index: int, dtype: Any) -> None:
        self._output_types[index] = dtype


class Network:
    def __init__(self, explicit_batch: bool) -> None:
        self.explicit_batch = explicit_batch
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


_PRIVATE_ONNX: dict[str, Any] = {}


@contextmanager
def _private_onnx() -> Iterator[Any]:
    """onnx for the double's own parser. TensorRT parses ONNX in C++, so where a test hides the onnx package
    (sys.modules["onnx"] = None, to prove ram-edge does not import it) the double borrows a private copy and
    puts the sentinel back after; elsewhere it is an ordinary import. (onnx cannot be imported twice in
    one process: its protobuf descriptors would be registered twice.)"""
    if sys.modules.get("onnx", False) is not None:
        yield importlib.import_module("onnx")
        return
    hidden = {name: sys.modules[name] for name in list(sys.modules) if name == "onnx" or name.startswith("onnx.")}
    for name in hidden:
        del sys.modules[name]
    try:
        if _PRIVATE_ONNX:
            sys.modules.update(_PRIVATE_ONNX)
            yield _PRIVATE_ONNX["onnx"]
        else:
            module = importlib.import_module("onnx")
            _PRIVATE_ONNX.update({n: m for n, m in sys.modules.items() if n == "onnx" or n.startswith("onnx.")})
            yield module
    finally:
        for name in [n for n in sys.modules if n == "onnx" or n.startswith("onnx.")]:
            del sys.modules[name]
        sys.modules.update(hidden)


def _qdq_errors(proto) -> list[str]:
    """onnx-tensorrt's rule for QuantizeLinear / DequantizeLinear: zero points int8 and all zero."""
    from onnx import numpy_helper

    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}

    def constant(name: str):
        for _ in range(64):
            if name in inits:
                return inits[name]
            node = producer.get(name)
            if node is None:
                return None
            if node.op_type == "Identity":
                name = node.input[0]
            elif node.op_type == "Constant":
                return next((a.t for a in node.attribute if a.name == "value"), None)
            else:
                return None
        return None

    errors = []
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if node.op_type == "DequantizeLinear":
            x = constant(node.input[0])
            if x is not None and x.data_type == _ONNX_UINT8:
                errors.append(f"{node.name}: UINT8 quantized weights are not supported")
        if len(node.input) < 3 or not node.input[2]:
            continue
        zero_point = constant(node.input[2])
        if zero_point is None:
            errors.append(f"{node.name}: the zero point must be an initializer")
        elif zero_point.data_type != _ONNX_INT8:
            errors.append(f"{node.name}: zero point of type {zero_point.data_type} is not supported; TensorRT quantizes to INT8")
        elif np.any(numpy_helper.to_array(zero_point) != 0):
            errors.append(f"{node.name}: TensorRT only supports symmetric quantization. The zero point for the "
                          f"QuantizeLinear/DequantizeLinear operator must be all zeros.")
    return errors


class OnnxParser:
    def __init__(self, network: Network, logger: Logger) -> None:
        self.network = network
        self.errors: list[str] = []

    def parse_from_file(self, model: str) -> bool:
        with _private_onnx() as onnx:
            try:
                proto = onnx.load(model)
            except Exception as exc:  # what the real parser reports as a parse error
                self.errors.append(f"ERROR: {model}: {exc}")
                return False
            if not self.network.explicit_batch:
                self.errors.append("ModelImporter: the ONNX parser needs an explicit-batch network: create it with "
                                   "1 << int(NetworkDefinitionCreationFlag.EXPLICIT_BATCH)")
                return False
            self.errors.extend(f"ModelImporter: {e}" for e in _qdq_errors(proto))
            if self.errors:
                return False
            self.network.onnx_bytes = proto.SerializeToString()
            self.network.layers = [Layer(node) for node in proto.graph.node if node.op_type != "Constant"]
            initializers = {t.name for t in proto.graph.initializer}

            def dims(value) -> list[int]:
                return [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]

            self.network.inputs = [(v.name, dims(v)) for v in proto.graph.input if v.name not in initializers]
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
    def __init__(self, data: bytes, origin: str) -> None:
        stored = json.loads(data.decode()) if data else {"origin": origin, "entries": {}}
        self.origin = stored.get("origin")
        self.entries: dict[str, str] = stored.get("entries", {})

    def serialize(self) -> memoryview:
        return memoryview(json.dumps({"origin": self.origin, "entries": self.entries}).encode())


class OptimizationProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[Dims, Dims, Dims]] = {}

    def set_shape(self, input: str, min: Dims, opt: Dims, max: Dims) -> None:
        if not (all(a <= b <= c for a, b, c in zip(min, opt, max)) and len(min) == len(opt) == len(max)):
            raise ValueError(f"inconsistent profile for {input}: {min} {opt} {max}")
        self.shapes[input] = (Dims(min), Dims(opt), Dims(max))


class BuilderConfig(_Strict):
    _attributes = frozenset({"default_device_type", "DLA_core", "profiling_verbosity"})

    def __init__(self, trt: types.ModuleType) -> None:
        self._trt = trt
        if hasattr(trt, "IProgressMonitor"):
            object.__setattr__(self, "_attributes", self._attributes | {"progress_monitor"})
            self.progress_monitor = None
        self._flags = {trt.BuilderFlag.TF32}
        self._pools: dict[Any, int] = {}
        self._profiles: list[OptimizationProfile] = []
        self._timing_cache: TimingCache | None = None
        self.default_device_type = DeviceType.GPU
        self.DLA_core = -1
        self.profiling_verbosity = ProfilingVerbosity.LAYER_NAMES_ONLY

    def _check_flag(self, flag) -> None:
        if not isinstance(flag, self._trt.BuilderFlag):
            raise TypeError(f"set_flag(): incompatible function arguments: {flag!r} is not a tensorrt.BuilderFlag of this version")

    def set_flag(self, flag) -> None:
        self._check_flag(flag)
        self._flags.add(flag)

    def clear_flag(self, flag) -> None:
        self._check_flag(flag)
        self._flags.discard(flag)

    def get_flag(self, flag) -> bool:
        return flag in self._flags

    def set_memory_pool_limit(self, pool, pool_size: int) -> None:
        self._pools[pool] = pool_size

    def add_optimization_profile(self, profile: OptimizationProfile) -> int:
        self._profiles.append(profile)
        return len(self._profiles) - 1

    def create_timing_cache(self, serialized_timing_cache: bytes) -> TimingCache:
        return TimingCache(bytes(serialized_timing_cache), _origin(self._trt))

    def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
        if cache.origin != _origin(self._trt) and not ignore_mismatch:
            return False  # TensorRT logs "timing cache mismatch" and keeps no cache
        self._timing_cache = cache
        return True

    def get_timing_cache(self) -> TimingCache | None:
        return self._timing_cache

    def can_run_on_DLA(self, layer: Layer) -> bool:
        return layer.op_type not in _NOT_ON_DLA


def _origin(trt: types.ModuleType) -> str:
    return f"{trt.__version__}/{GPU_NAME}/{CAPABILITY}"


class Builder:
    #: Class-level knobs the tests turn.
    num_DLA_cores = 0
    fail_build = False
    builds = 0

    def __init__(self, logger: Logger) -> None:
        self.logger = logger
        self._trt = sys.modules["tensorrt"]

    def create_network(self, flags: int = 0) -> Network:
        if not isinstance(flags, int):
            raise TypeError(f"create_network(): flags must be an int, got {type(flags).__name__}")
        explicit = _major(self._trt.__version__) >= 10
        if not explicit:
            explicit = bool(flags & (1 << int(self._trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)))
        return Network(explicit)

    def create_builder_config(self) -> BuilderConfig:
        return BuilderConfig(self._trt)

    def create_optimization_profile(self) -> OptimizationProfile:
        return OptimizationProfile()

    def build_serialized_network(self, network: Network, config: BuilderConfig) -> bytes | None:
        Builder.builds += 1
        if self.fail_build or len(config._profiles) != 1:
            return None
        monitor = getattr(config, "progress_monitor", None)
        if monitor is not None:
            monitor.phase_start("Building engine", None, 3)
            for step in range(3):
                monitor.step_complete("Building engine", step)
            monitor.phase_finish("Building engine")
        flag_names = sorted(f.name for f in config._flags)
        cache_hit = False
        if config._timing_cache is not None:
            key = f"{len(network.layers)}-{flag_names}"
            cache_hit = key in config._timing_cache.entries
            config._timing_cache.entries[key] = "tactics"
        profile = config._profiles[0]
        dla = config.default_device_type == DeviceType.DLA
        placement = ["GPU"] * len(network.layers)
        if dla:
            static = all(lo == hi for lo, _, hi in profile.shapes.values())
            fallback = self._trt.BuilderFlag.GPU_FALLBACK in config._flags
            if not static and not fallback:
                self.logger.log(Logger.ERROR, "DLA does not support dynamic shapes; build a static profile (min = opt = max)")
                return None
            if static:
                placement = ["DLA" if config.can_run_on_DLA(layer) else "GPU" for layer in network.layers]
                if not fallback and "GPU" in placement:
                    self.logger.log(Logger.ERROR, "a layer cannot run on the DLA and GPU_FALLBACK is not set")
                    return None
            else:
                self.logger.log(Logger.WARNING, "DLA does not support dynamic shapes: every layer falls back to the GPU")
        header = {
            "version": self._trt.__version__,
            "flags": flag_names,
            "profile": {name: [list(d) for d in dims] for name, dims in profile.shapes.items()},
            "fp32_layers": [layer.name for layer in network.layers if layer.precision is not None],
            "layers": [[layer.name, where] for layer, where in zip(network.layers, placement)],
            "inputs": network.inputs, "outputs": network.outputs,
            "dla_core": config.DLA_core if dla else None,
            "timing_cache_hit": cache_hit,
            "precision_constraints": "OBEY_PRECISION_CONSTRAINTS" in flag_names,
        }
        return MAGIC + json.dumps(header).encode() + b"\n" + network.onnx_bytes


class EngineInspector:
    def __init__(self, engine: "Engine") -> None:
        self.engine = engine

    def get_engine_information(self, format) -> str:
        """Layers as `trtexec --dumpLayerInfo` shows them: DLA subgraphs as ForeignNodes between nvm reformats."""
        header = self.engine.header
        fp32 = set(header["fp32_layers"])
        layers: list[dict[str, Any]] = []
        run: list[str] = []

        def close_run() -> None:
            if run:
                layers.append({"Name": f"{{ForeignNode[{run[0]}...{run[-1]}]}}", "LayerType": "ForeignNode"})
                run.clear()

        for name, where in header["layers"]:
            if where == "DLA":
                if not run:
                    layers.append({"Name": f"{name} input to nvm", "LayerType": "Reformat"})
                run.append(name)
                continue
            if run:
                last = run[-1]
                close_run()
                layers.append({"Name": f"{last} output from nvm", "LayerType": "Reformat"})
            layers.append({"Name": name, "LayerType": "Layer", "Precision": "FP32" if name in fp32 else "FP16"})
        close_run()
        return json.dumps({"Layers": layers, "Bindings": [n for n, _ in header["inputs"] + header["outputs"]]})


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
        self.errors: list[str] = []

    def set_input_shape(self, name: str, shape) -> bool:
        low, _, high = self.engine.header["profile"][name]
        if len(shape) != len(low) or not all(a <= s <= b for a, s, b in zip(low, shape, high)):
            return False
        self.shapes[name] = tuple(int(s) for s in shape)
        return True

    def set_tensor_address(self, name: str, memory: int) -> bool:
        if not isinstance(memory, int):
            raise TypeError(f"set_tensor_address(): memory must be an int, got {type(memory).__name__}")
        self.addresses[name] = int(memory)
        return True

    def _output_shape(self, name: str, batch: int) -> tuple[int, ...]:
        dims = self.engine.get_tensor_shape(name)
        return tuple(batch if d < 0 else d for d in dims)

    def execute_async_v3(self, stream_handle: int) -> bool:
        if not isinstance(stream_handle, int) or isinstance(stream_handle, bool):
            raise TypeError(f"execute_async_v3(): incompatible function arguments: stream_handle must be an int, "
                            f"got {type(stream_handle).__name__}")
        gpu = cuda_double.GPU
        if stream_handle != 0 and stream_handle not in gpu.streams:
            self.errors.append(f"invalid stream handle {stream_handle:#x}")
            return False
        inputs = [(n, d) for n, d in self.engine.header["inputs"]]
        outputs = [(n, d) for n, d in self.engine.header["outputs"]]
        missing_shape = [n for n, _ in inputs if n not in self.shapes]
        missing_address = [n for n, _ in inputs + outputs if n not in self.addresses]
        if missing_shape or missing_address:
            self.errors.append(f"Parameter check failed: shapes of {missing_shape} / addresses of {missing_address} not set")
            return False
        batch = self.shapes[inputs[0][0]][0]
        spans = {}
        try:
            for name, _ in inputs:
                spans[name] = gpu.device_span(self.addresses[name], int(np.prod(self.shapes[name])) * 4)
            for name, _ in outputs:
                spans[name] = gpu.device_span(self.addresses[name], int(np.prod(self._output_shape(name, batch))) * 4)
        except ValueError as exc:
            self.errors.append(str(exc))
            return False
        type(self).executions += 1
        shapes = dict(self.shapes)

        def work() -> None:
            feeds = {name: spans[name].view(np.float32).reshape(shapes[name]).copy() for name, _ in inputs}
            results = self.session.run([n for n, _ in outputs], feeds)
            for (name, _), value in zip(outputs, results):
                spans[name].view(np.float32)[:] = value.astype(np.float32).ravel()

        gpu.enqueue(stream_handle, work)
        return True


class Runtime(_Strict):
    _attributes = frozenset({"DLA_core"})

    def __init__(self, logger: Logger) -> None:
        self._logger = logger
        self.DLA_core = -1
        self._trt = sys.modules["tensorrt"]

    def deserialize_cuda_engine(self, serialized_engine: bytes) -> Engine | None:
        data = bytes(serialized_engine)
        if not data.startswith(MAGIC):
            return None
        header_line, onnx_bytes = data[len(MAGIC):].split(b"\n", 1)
        header = json.loads(header_line)
        if header["version"] != self._trt.__version__:
            return None
        if header["dla_core"] is not None and self.DLA_core != header["dla_core"]:
            return None  # a DLA engine needs its core set on the runtime first
        return Engine(header, onnx_bytes)


def module(version: str = VERSION) -> types.ModuleType:
    """The double as a module object to put at sys.modules['tensorrt'], posing as TensorRT `version`."""
    major = _major(version)
    mod = types.ModuleType("tensorrt", f"TEST DOUBLE of TensorRT {version} (tests/trt_double.py), not TensorRT")
    mod.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    flags = ["FP16", "INT8", "TF32", "OBEY_PRECISION_CONSTRAINTS", "GPU_FALLBACK"]
    if major >= 11:  # strongly typed networks only: the per-layer precision flags are gone
        flags = ["TF32", "GPU_FALLBACK"]
    creation = ["EXPLICIT_BATCH"] if major < 10 else ["EXPLICIT_BATCH", "STRONGLY_TYPED"] if major == 10 else ["STRONGLY_TYPED"]
    members: dict[str, Any] = {
        "__version__": version, "Logger": Logger, "ILogger": Logger, "Builder": Builder, "OnnxParser": OnnxParser,
        "Runtime": Runtime, "Dims": Dims, "DataType": DataType, "LayerType": LayerType,
        "TensorIOMode": TensorIOMode, "BuilderFlag": enum.Enum("BuilderFlag", " ".join(flags)),
        "NetworkDefinitionCreationFlag": enum.IntEnum("NetworkDefinitionCreationFlag", {n: i for i, n in enumerate(creation)}),
        "MemoryPoolType": MemoryPoolType, "DeviceType": DeviceType, "ProfilingVerbosity": ProfilingVerbosity,
        "LayerInformationFormat": LayerInformationFormat, "nptype": nptype, "float32": DataType.FLOAT, "float16": DataType.HALF,
    }
    if major >= 10:
        members["IProgressMonitor"] = IProgressMonitor
    for name, value in members.items():
        setattr(mod, name, value)
    return mod


def install(mp, cache_dir, *, version: str = VERSION, cuda: str = "cuda-python") -> None:
    """Put the double in place of TensorRT and `cuda` ('cuda-python' or 'pycuda') with `mp` (a pytest
    MonkeyPatch); a fresh fake GPU; the timing cache under `cache_dir`."""
    from ram_edge.runtimes import cuda_memory

    cuda_double.reset()
    mp.setitem(sys.modules, "tensorrt", module(version))
    for name, mod in cuda_double.modules(cuda).items():
        mp.setitem(sys.modules, name, mod)
    mp.setenv(cuda_memory.BACKEND_ENV, cuda)
    mp.setenv("XDG_CACHE_HOME", str(cache_dir))
    mp.delenv("RAM_EDGE_TRT_TIMING_CACHE", raising=False)


def install_in_process(cache_dir: str, *, version: str = VERSION, cuda: str = "cuda-python") -> None:
    """`install` for a child process that has no pytest (sys.modules and the environment set directly)."""
    import os

    from ram_edge.runtimes import cuda_memory

    sys.modules["tensorrt"] = module(version)
    sys.modules.update(cuda_double.modules(cuda))
    os.environ[cuda_memory.BACKEND_ENV] = cuda
    os.environ["XDG_CACHE_HOME"] = cache_dir
