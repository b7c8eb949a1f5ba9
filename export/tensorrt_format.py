"""ONNX bundle -> TensorRT engine bundle, built on the device that will run it (TensorRT 8.5 to 10.x).

fp16: the fp32 ONNX with TensorRT's FP16 flag, the layers fp16 hurts (normalisations, softmax, the
reductions and the layer that writes the probabilities) constrained to fp32. int8: explicit
quantization from the Q/DQ ONNX of `ram-edge quantize` (TensorRT's implicit calibrator is deprecated
in TensorRT 10), with FP16 for the operations that stay float; TensorRT quantizes symmetrically only,
so an ONNX with asymmetric activations is converted first (export/tensorrt_qdq.py) and checked
against the original. One optimization profile over the batch (a static one on the DLA). The bundle
keeps the ONNX it was built from, so an engine is rebuilt on another GPU or TensorRT version from the
bundle alone. Torch-free: a Jetson needs only TensorRT, onnxruntime and, for INT8, onnx.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ram_edge.bundle import Bundle, read_bundle, write_manifest
from ram_edge.errors import ExportError, RamEdgeWarning
from ram_edge.fileio import atomic_dir, atomic_file, refuse_existing
from ram_edge.runtimes.tensorrt_version import tensorrt_api

from .onnx_file import data_file

if TYPE_CHECKING:
    import tensorrt as trt

ENGINE_FILE, ONNX_FILE, LAYERS_FILE = "model.engine", "model.onnx", "engine_layers.json"
ENGINE_PRECISIONS = ("fp32", "fp16", "int8")
#: Max |difference| of probabilities against onnxruntime on the CPU running the same ONNX.
TOLERANCES = {"fp32": 1e-3, "fp16": 2e-2, "int8": 0.15}
TIMING_CACHE_ENV = "RAM_EDGE_TRT_TIMING_CACHE"


@dataclass
class TrtBuildOptions:
    """How to build an engine: `ram-edge export --format trt` options."""

    precision: str = "fp16"
    max_batch: int = 8
    opt_batch: int = 1
    workspace_mb: int | None = None  # None: TensorRT's default (the device's memory)
    dla_core: int | None = None
    timing_cache: str | None = None  # None: the per-user cache for this TensorRT and GPU; "" disables it

    def check(self) -> None:
        """Raise ExportError for an impossible combination."""
        if self.precision not in ENGINE_PRECISIONS:
            raise ExportError(f"TensorRT precision {self.precision!r} is not supported; use one of {', '.join(ENGINE_PRECISIONS)}")
        if self.max_batch < 1 or not 1 <= self.opt_batch <= self.max_batch:
            raise ExportError(f"--opt-batch {self.opt_batch} must lie in 1..--max-batch {self.max_batch}")
        if self.dla_core is not None and self.precision == "fp32":
            raise ExportError("the DLA runs fp16 and int8 only: use --precision fp16 or int8 with --dla-core")
        if self.dla_core is not None and self.opt_batch != self.max_batch:
            raise ExportError(f"--dla-core: the DLA runs static shapes only, so the engine takes batch --max-batch "
                              f"{self.max_batch} (smaller batches are padded); --opt-batch {self.opt_batch} must equal it or be left out")
        if self.workspace_mb is not None and self.workspace_mb < 1:
            raise ExportError(f"--workspace {self.workspace_mb}: give the builder's workspace in MB (>= 1)")


def profile_shapes(image_size: int, opt_batch: int, max_batch: int, *, static: bool = False) -> dict[str, list[int]]:
    """The optimization profile of the image input: batch 1 .. max, tuned at opt; `static`: max only (the DLA)."""
    low = max_batch if static else 1
    return {name: [batch, 3, image_size, image_size] for name, batch in (("min", low), ("opt", opt_batch), ("max", max_batch))}


def source_onnx(bundle: Bundle, precision: str) -> tuple[Path, dict[str, Any]]:
    """The ONNX file of `bundle` to build a `precision` engine from, and what it is (refusing a wrong pairing)."""
    if bundle.format == "trt":
        origin = dict(bundle.manifest.get("source_bundle") or {})
        path = bundle.file("onnx")
    elif bundle.format == "onnx":
        origin = {"precision": bundle.precision, "quantization": bundle.manifest.get("quantization"),
                  "validation": bundle.manifest.get("validation"), "compute_precision": bundle.manifest.get("compute_precision")}
        path = bundle.file("model")
    else:
        raise ExportError(f"{bundle.path} is an {bundle.format} bundle; TensorRT engines are built from an ONNX bundle "
                          f"(`ram-edge export CHECKPOINT --format onnx`) or from the checkpoint directory itself")
    stored = origin.get("precision")
    method = (origin.get("quantization") or {}).get("method")
    if precision == "int8":
        if stored != "int8" or method == "weights":
            raise ExportError(
                f"{bundle.path}: an int8 engine is built from an INT8 Q/DQ ONNX bundle (quantized activations), but this one is "
                f"{stored}{' with 8-bit weights only' if method == 'weights' else ''}; make one with `ram-edge quantize FLOAT -o Q "
                f"--calib PHOTOS/` and `ram-edge export Q -o Q_ONNX`, or build --precision fp16 from the fp32 bundle"
            )
    elif stored != "fp32":
        raise ExportError(
            f"{bundle.path}: a {precision} engine is built from the fp32 ONNX bundle (TensorRT picks fp16 per layer itself), "
            f"but this one is {stored}; export the float checkpoint with `ram-edge export CHECKPOINT -o FP32_BUNDLE`"
        )
    return path, origin


def tensorrt_ready_onnx(onnx_path: Path, precision: str, workdir: Path) -> tuple[Path, dict[str, Any] | None]:
    """The ONNX TensorRT's parser accepts for a `precision` engine: `onnx_path` itself, or for an INT8 ONNX with
    asymmetric quantizers its symmetric int8 conversion written into `workdir`; and the conversion's record."""
    if precision != "int8":
        return onnx_path, None
    from .tensorrt_qdq import check_file, convert_file

    problems = check_file(onnx_path)
    if not problems:
        return onnx_path, {"rule": "TensorRT: int8 zero points, all zero", "converted": False}
    target = Path(workdir) / ONNX_FILE
    report = convert_file(onnx_path, target)
    return target, {**report.as_dict(), "converted": True, "quantizers_outside_rule_before": len(problems)}


def default_timing_cache(trt_version: str, gpu_name: str, compute_capability: str) -> Path:
    """~/.cache/ram-edge/tensorrt/timing-<version>-<gpu>-sm<cc>.cache ($RAM_EDGE_TRT_TIMING_CACHE overrides)."""
    if os.environ.get(TIMING_CACHE_ENV):
        return Path(os.environ[TIMING_CACHE_ENV])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ram-edge" / "tensorrt"
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", gpu_name).strip("-").lower()
    return base / f"timing-{trt_version}-{gpu}-sm{compute_capability.replace('.', '')}.cache"


def _progress_monitor() -> "trt.IProgressMonitor":
    """A TensorRT progress monitor drawing one tqdm bar per builder phase on stderr."""
    import tensorrt as trt
    from tqdm import tqdm

    class BuildProgress(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._bars: dict[str, Any] = {}
            self._lock = threading.Lock()

        def phase_start(self, phase_name: str, parent_phase: str, num_steps: int) -> None:
            with self._lock:
                depth = len(self._bars)
                self._bars[phase_name] = tqdm(total=num_steps, desc=f"{'  ' * depth}TensorRT: {phase_name}", position=depth,
                                              leave=depth == 0, file=sys.stderr, dynamic_ncols=True)

        def step_complete(self, phase_name: str, step: int) -> bool:
            with self._lock:
                bar = self._bars.get(phase_name)
                if bar is not None:
                    bar.n = step + 1
                    bar.refresh()
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            with self._lock:
                bar = self._bars.pop(phase_name, None)
                if bar is not None:
                    bar.close()

    return BuildProgress()


def keep_fp32_layers(network: "trt.INetworkDefinition") -> list[str]:
    """Constrain normalisations, softmax, reductions and the output layer to fp32; returns their names."""
    import tensorrt as trt

    kept = []
    outputs = {network.get_output(i).name for i in range(network.num_outputs)}
    float_types = (trt.float32, trt.float16)
    sensitive = (trt.LayerType.NORMALIZATION, trt.LayerType.SOFTMAX, trt.LayerType.REDUCE)
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        writes_output = any(layer.get_output(j).name in outputs for j in range(layer.num_outputs))
        if layer.type not in sensitive and not writes_output:
            continue
        if not all(layer.get_output(j).dtype in float_types for j in range(layer.num_outputs)):
            continue
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            layer.set_output_type(j, trt.float32)
        kept.append(layer.name)
    return kept


def _parse_onnx(builder: "trt.Builder", logger: "trt.ILogger", onnx_path: Path) -> "tuple[trt.INetworkDefinition, trt.OnnxParser]":
    import tensorrt as trt

    network = builder.create_network(tensorrt_api(trt).network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT could not parse {onnx_path}: {errors or 'no parser message'}")
    # The network refers to weights the parser owns: the caller keeps the parser alive until the build ends.
    return network, parser


def build_engine(onnx_path: Path, options: TrtBuildOptions, input_name: str, image_size: int, gpu_name: str,
                 compute_capability: str, *, progress: bool = True) -> tuple[bytes, dict[str, Any]]:
    """Build and serialize an engine from `onnx_path`; returns (engine bytes, build record for the manifest)."""
    import tensorrt as trt

    options.check()
    api = tensorrt_api(trt)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, parser = _parse_onnx(builder, logger, onnx_path)
    config = builder.create_builder_config()
    flags = []
    if options.precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
        flags.append("FP16")
    if options.precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)  # explicit quantization: the scales are the ONNX's Q/DQ nodes
        flags.append("INT8")
    if options.precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)  # fp32 means fp32: TF32 matmuls would differ by ~1e-3
    kept = keep_fp32_layers(network)
    if kept:
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        flags.append("OBEY_PRECISION_CONSTRAINTS")
    if options.workspace_mb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_mb) << 20)
    # The DLA runs static shapes only: with a 1..max profile and GPU fallback every layer would quietly run on the GPU.
    shapes = profile_shapes(image_size, options.opt_batch, options.max_batch, static=options.dla_core is not None)
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, trt.Dims(shapes["min"]), trt.Dims(shapes["opt"]), trt.Dims(shapes["max"]))
    config.add_optimization_profile(profile)
    dla = None
    if options.dla_core is not None:
        if builder.num_DLA_cores <= options.dla_core:
            raise ExportError(f"--dla-core {options.dla_core}: this device has {builder.num_DLA_cores} DLA core(s)"
                              + (" (DLA cores exist on Jetson AGX/NX modules only)" if builder.num_DLA_cores == 0 else ""))
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(options.dla_core)
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
        flags.append("GPU_FALLBACK")
        capable = sum(1 for i in range(network.num_layers) if config.can_run_on_DLA(network.get_layer(i)))
        dla = {"core": int(options.dla_core), "network_layers": network.num_layers, "network_layers_dla_capable": capable}
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer names and tactics for engine_layers.json
    cache_path = None
    if options.timing_cache != "":
        cache_path = Path(options.timing_cache) if options.timing_cache else default_timing_cache(trt.__version__, gpu_name, compute_capability)
        cache_bytes = cache_path.read_bytes() if cache_path.is_file() else b""
        if not config.set_timing_cache(config.create_timing_cache(cache_bytes), ignore_mismatch=False):
            # A cache from another TensorRT or GPU: start a fresh one, which replaces it after the build.
            warnings.warn(f"timing cache {cache_path} was made by another TensorRT version or GPU; starting a new one there",
                          RamEdgeWarning, stacklevel=2)
            config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    if progress and api.progress_monitor:
        config.progress_monitor = _progress_monitor()
    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT could not build an engine from {onnx_path} (its messages above say why); "
                          f"try --workspace with more MB or another --precision")
    engine_bytes = bytes(serialized)
    seconds = time.perf_counter() - started
    cache = config.get_timing_cache() if cache_path is not None else None
    if cache is not None and cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(cache_path, "wb") as fh:
            fh.write(bytes(cache.serialize()))
    del parser
    record = {
        "version": trt.__version__,
        "api": api.path,
        "gpu": {"name": gpu_name, "compute_capability": compute_capability},
        "precision": options.precision,
        "profile": {"input": input_name, **shapes},
        "flags": flags,
        "fp32_layers": len(kept),
        "workspace_mb": options.workspace_mb,
        "dla_core": options.dla_core,
        "dla": dla,
        "build_seconds": round(seconds, 1),
        "timing_cache": str(cache_path) if cache is not None else None,
    }
    return engine_bytes, record


def dla_placement(layers_json: str) -> dict[str, int]:
    """What the engine inspector says runs on the DLA: its subgraphs (ForeignNodes fed through nvm reformats) and
    the engine layers left on the GPU."""
    try:
        layers = json.loads(layers_json).get("Layers") or []
    except (ValueError, AttributeError):
        return {"dla_subgraphs": 0, "engine_layers_on_gpu": 0}
    names = [str(layer.get("Name", layer) if isinstance(layer, dict) else layer) for layer in layers]
    types = [str(layer.get("LayerType", "")) if isinstance(layer, dict) else "" for layer in layers]
    nvm = any(" to nvm" in name or " from nvm" in name for name in names)
    on_dla = [i for i, (name, kind) in enumerate(zip(names, types))
              if "dla" in kind.lower() or (nvm and name.startswith("{ForeignNode["))]
    reformats = [i for i, name in enumerate(names) if " to nvm" in name or " from nvm" in name]
    return {"dla_subgraphs": len(on_dla), "engine_layers_on_gpu": len(names) - len(on_dla) - len(reformats)}


def engine_layers(engine_bytes: bytes, dla_core: int | None) -> str:
    """The engine inspector's JSON: every fused layer with its precision, tactic and device."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    runtime = trt.Runtime(logger)
    if dla_core is not None:
        runtime.DLA_core = int(dla_core)
    engine = runtime.deserialize_cuda_engine(engine_bytes)
    if engine is None:
        raise ExportError("TensorRT could not deserialize the engine it has just built")
    inspector = engine.create_engine_inspector()
    return inspector.get_engine_information(trt.LayerInformationFormat.JSON)


def validate_engine(bundle_dir: Path, onnx_path: Path, labels, precision: str, image_size: int, max_batch: int,
                    device: str | None) -> dict[str, Any]:
    """Run the new engine (the trt runtime) and onnxruntime on the CPU on the same inputs; raise past the tolerance.

    `onnx_path` is the source bundle's ONNX, so an INT8 conversion for TensorRT is inside what is compared."""
    from ram_edge.labels import tag_set_f1
    from ram_edge.runtimes.tensorrt_runtime import TensorRTRuntime

    try:
        import onnxruntime as ort
    except ImportError:
        return {"runtime": "TensorRT", "skipped": "onnxruntime is not installed: the engine was not compared with the ONNX"}
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    input_name, output_name = session.get_inputs()[0].name, session.get_outputs()[0].name
    with TensorRTRuntime(bundle_dir, device=device) as runtime:
        batch_sizes = sorted({runtime.min_batch, min(max(3, runtime.min_batch), max_batch)})
        rng = np.random.default_rng(0)
        worst, f1s = 0.0, []
        for size in batch_sizes:
            batch = rng.uniform(-2.1, 2.6, size=(size, 3, image_size, image_size)).astype(np.float32)
            expected = session.run([output_name], {input_name: batch})[0]
            got = runtime.run(batch)
            if got.shape != expected.shape or not np.isfinite(got).all():
                raise ExportError(f"the engine's output has shape {got.shape} (finite: {bool(np.isfinite(got).all())}), "
                                  f"expected {expected.shape}; no bundle was written")
            worst = max(worst, float(np.abs(got - expected).max()))
            f1s.extend(tag_set_f1(labels.fired(got), labels.fired(expected)).tolist())
    tolerance = TOLERANCES[precision]
    if worst > tolerance:
        raise ExportError(f"the {precision} engine differs from onnxruntime on the source ONNX by up to {worst:.3g} "
                          f"(tolerance {tolerance:g}); no bundle was written")
    return {"output": output_name, "max_abs_diff": worst, "tolerance": tolerance, "batch_sizes": batch_sizes,
            "runtime": "TensorRT vs onnxruntime CPU (the source bundle's ONNX)", "compute_precision": precision,
            "tag_set_f1": float(np.mean(f1s))}


def build_trt_bundle(source: str | Path, out_dir: str | Path, options: TrtBuildOptions, *, device: str | None = None,
                     overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Build a TensorRT bundle from an ONNX (or TensorRT) bundle at `source`; returns the manifest."""

    from ram_edge.runtimes.cuda_memory import open_cuda
    from ram_edge.runtimes.tensorrt_runtime import parse_device, tensorrt_import_error

    problem = tensorrt_import_error()
    if problem:
        raise ExportError(problem)
    import tensorrt as trt

    options.check()
    bundle = read_bundle(source)
    source_path, origin = source_onnx(bundle, options.precision)
    refuse_existing(out_dir, overwrite)
    size = bundle.preprocess.image_size
    with tempfile.TemporaryDirectory(prefix="ram-edge-trt-onnx-") as work:
        onnx_path, qdq = tensorrt_ready_onnx(source_path, options.precision, Path(work))
        if qdq is not None and not qdq["converted"] and bundle.format == "trt":
            qdq = (bundle.manifest.get("tensorrt") or {}).get("qdq") or qdq  # a rebuild keeps the record of its conversion
        memory = open_cuda(parse_device(device))
        try:
            gpu = memory.gpu()
            with memory.active():
                engine_bytes, record = build_engine(onnx_path, options, bundle.input_name, size, gpu.name,
                                                    gpu.compute_capability, progress=progress)
                layers = engine_layers(engine_bytes, options.dla_core)
        finally:
            memory.close()
        if qdq is not None:
            record["qdq"] = qdq
        if record.get("dla"):
            record["dla"].update({**dla_placement(layers), "source": "engine inspector"})
            if not record["dla"]["dla_subgraphs"]:
                warnings.warn(f"--dla-core {options.dla_core}: the engine inspector shows no layer on the DLA; the engine runs "
                              f"on the GPU", RamEdgeWarning, stacklevel=2)
        with atomic_dir(out_dir, overwrite=overwrite) as tmp:
            shutil.copyfile(onnx_path, tmp / ONNX_FILE)
            onnx_weights = data_file(onnx_path)
            copied = {"onnx_weights": onnx_weights.name} if onnx_weights.exists() else {}
            if copied:  # the graph names its weights file: it keeps that name beside the copy
                shutil.copyfile(onnx_weights, tmp / onnx_weights.name)
            (tmp / ENGINE_FILE).write_bytes(engine_bytes)
            (tmp / LAYERS_FILE).write_text(layers, encoding="utf-8")
            manifest = {key: value for key, value in bundle.manifest.items() if key not in ("sha256", "source_bundle", "tensorrt")}
            manifest.update({
                "model_format": "trt",
                "precision": options.precision,
                "compute_precision": options.precision,
                "files": {"model": ENGINE_FILE, "onnx": ONNX_FILE, "layers": LAYERS_FILE, **copied},
                "tensorrt": record,
                "source_bundle": {**origin, "path": origin.get("path") or str(Path(source))},
            })
            manifest["tools"] = {**(manifest.get("tools") or {}), "tensorrt": trt.__version__, "cuda_memory": memory.name}
            write_manifest(tmp, manifest)  # the runtime below reads the bundle as users will
            manifest["validation"] = validate_engine(tmp, source_path, bundle.labels, options.precision, size,
                                                     options.max_batch, device)
            manifest = write_manifest(tmp, manifest)
    return manifest


def summary(manifest: dict[str, Any]) -> str:
    """One line for the CLI: what was built, on what, how it validated."""
    record = manifest["tensorrt"]
    val = manifest.get("validation") or {}
    checked = (f"max |diff| {val['max_abs_diff']:.2e} vs onnxruntime (tolerance {val['tolerance']:g}), tag-set F1 {val['tag_set_f1']:.3f}"
               if "max_abs_diff" in val else val.get("skipped", "not validated"))
    dla = record.get("dla")
    where = f"{record['gpu']['name']} (sm {record['gpu']['compute_capability']})"
    if dla:
        where += (f", DLA core {dla['core']}: {dla.get('dla_subgraphs', 0)} DLA subgraph(s), "
                  f"{dla.get('engine_layers_on_gpu', '?')} engine layers on the GPU")
    qdq = record.get("qdq") or {}
    if qdq.get("converted"):
        where += f"; {qdq['activation_quantizers_converted']} asymmetric quantizers made symmetric for TensorRT"
    return (f"TensorRT {record['version']} {record['precision']} engine for {where}, batch 1..{record['profile']['max'][0]} "
            f"(opt {record['profile']['opt'][0]}), {record['fp32_layers']} layers kept in fp32, built in {record['build_seconds']} s; {checked}")
