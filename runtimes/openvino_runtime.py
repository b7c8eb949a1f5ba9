"""OpenVINO backend: OpenVINO IR (or ONNX) bundles on CPU, GPU, NPU or AUTO; compiled on first use."""

from __future__ import annotations

import importlib.util
import os
import threading
import warnings
from pathlib import Path
from typing import ClassVar

import numpy as np

from ram_edge.bundle import read_bundle
from ram_edge.cpu import x86_avx2_only
from ram_edge.errors import BundleError, RamEdgeWarning, RuntimeUnavailableError

from .base import Runtime, auto_on_off, normalize_compute_precision
from .heap import release_free_heap

CACHE_ENV = "RAM_EDGE_OV_CACHE"
# ram-edge's compute precision -> OpenVINO's INFERENCE_PRECISION_HINT value, and the CPU capability it needs.
OV_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
CPU_CAPABILITY = {"fp32": "FP32", "bf16": "BF16", "fp16": "FP16"}
_FROM_OV = {"f32": "fp32", "float32": "fp32", "bf16": "bf16", "bfloat16": "bf16", "f16": "fp16", "float16": "fp16"}
# Whether an INT8 bundle runs on OpenVINO's int8 CPU kernels: auto (unless the CPU has AVX2 only), on, off.
INT8_KERNELS_ENV = "RAM_EDGE_OV_INT8_KERNELS"
# How far an image's probabilities may move with the number of images in the call (the fp32 bundles and INT8
# bundles without an 8-bit reduction move by 0.0 on CPUs).
BATCH_TOLERANCE = 1e-4


def int8_kernels_wanted() -> bool:
    """Whether an INT8 bundle should compile to int8 kernels on this CPU: $RAM_EDGE_OV_INT8_KERNELS on / off, or auto
    (the default): everywhere but on x86 CPUs known to have AVX2 only (no VNNI, AMX or AVX-512)."""
    # Off only where they were measured slow: AVX2 (Zen 3). With oneDNN capped at AVX-512 without VNNI (Skylake-SP)
    # they ran Swin-B at 1.82x of fp32 but lost tag agreement (0.976 against 0.987,
    # benchmarks/results/emulated_cpus/emulated_cpus_avx512_core.md): kept there for the speed; off is the exact choice.
    return auto_on_off(INT8_KERNELS_ENV, lambda: not x86_avx2_only(),
                       "int8 kernels unless the CPU has AVX2 only, without VNNI, AMX or AVX-512")


def _default_cache_dir() -> Path:
    base = os.environ.get(CACHE_ENV) or os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "ram-edge", "openvino")
    return Path(base)


class OpenVINORuntime(Runtime):
    """OpenVINO Core over a bundle's model.xml (or model.onnx)."""

    name: ClassVar[str] = "openvino"
    formats: ClassVar[tuple[str, ...]] = ("openvino", "onnx")
    thread_safe: ClassVar[bool] = False

    @classmethod
    def is_installed(cls) -> bool:
        """True when openvino imports."""
        return importlib.util.find_spec("openvino") is not None

    @classmethod
    def available_devices(cls) -> list[str]:
        """Devices OpenVINO sees (CPU, GPU, GPU.0, NPU, ...) plus AUTO."""
        import openvino as ov

        return [*ov.Core().available_devices, "AUTO"]

    def __init__(self, path: str | Path, *, device: str | None = None, threads: int | None = None,
                 compute_precision: str | None = None, cache_dir: str | Path | None = None) -> None:
        import openvino as ov

        self.bundle = read_bundle(path)
        self._core = ov.Core()
        device = (device or "CPU").upper()
        available = self.available_devices()
        base = device.split(":")[-1].split(",")[0] if device.startswith(("AUTO", "MULTI", "HETERO")) else device
        if base not in available and base.split(".")[0] not in available:
            raise RuntimeUnavailableError(
                f"OpenVINO device {device!r} is not available on this machine; available: {', '.join(available)}"
            )
        self._device = device
        self._config: dict[str, object] = {}
        if threads and device == "CPU":
            self._config["INFERENCE_NUM_THREADS"] = int(threads)
        precision = normalize_compute_precision(compute_precision)
        if device.startswith("CPU"):
            # ram-edge chooses the CPU's compute precision, never the plugin: its default is bf16 on CPUs
            # with AVX512_BF16 or AMX, so the same bundle would tag differently on two servers.
            precision = precision or "fp32"
            capabilities = self._core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
            if CPU_CAPABILITY[precision] not in capabilities:
                raise RuntimeUnavailableError(
                    f"this CPU cannot compute in {precision} (OpenVINO reports: {', '.join(capabilities)}); "
                    f"leave the compute precision at fp32"
                )
        if precision is not None:
            self._config["INFERENCE_PRECISION_HINT"] = OV_HINTS[precision]
        if device.startswith("CPU") and self.bundle.precision == "int8":
            self.int8_kernels = int8_kernels_wanted()
            if not self.int8_kernels:
                # With AVX2 only, OpenVINO's int8 FullyConnected falls back to oneDNN's gemm-based int8 kernel
                # (`jit_gemm_i8`): 0.5x of fp32 on an AVX2-only Zen 3. Without its low-precision transformations
                # the same IR sends its int8 weights to the weights-compressed kernel that 8-bit-weights bundles
                # use (0.95x of fp32 there) and applies its activation quantizers as float ops; weights stay 8-bit.
                self._config["LP_TRANSFORMS_MODE"] = False
        self._asked_precision = precision or "device default"
        #: Whether `run` sends one image per inference because this compiled model answers differently in a batch.
        self.one_image_per_inference = False
        if not device.startswith("CPU"):
            # GPU/NPU compilation takes tens of seconds; cache the compiled blob per model.
            self._config["CACHE_DIR"] = str(cache_dir or _default_cache_dir())
        model_role = "model"
        self._model_path = self.bundle.file(model_role)
        self._compiled = None
        self._request = None
        self._lock = threading.Lock()

    def _compile(self) -> None:
        # Lazy: compilation is the slow part and only happens on first use.
        with self._lock:
            if self._compiled is None:
                try:
                    model = self._core.read_model(str(self._model_path))
                    self._compiled = self._core.compile_model(model, self._device, self._config)
                    self._request = self._compiled.create_infer_request()
                    self._output = self._compiled.output(self.bundle.output_name)
                    del model
                    release_free_heap()  # what compiling freed (Swin-L/384 INT8 IR: 792 -> 758 MB resident)
                except Exception as exc:  # OpenVINO raises RuntimeError with its C++ trace for a damaged model
                    self._compiled = None
                    raise BundleError(f"{self._model_path}: OpenVINO cannot load the model on {self._device} "
                                      f"({_first_line(exc)}); re-export the bundle") from None
                if self.int8_kernels and _int8_reductions(self._compiled) and self._answers_depend_on_batch():
                    self.one_image_per_inference = True
                    warnings.warn(
                        f"{self._model_path}: OpenVINO computes an average of this INT8 bundle in int8, and that "
                        f"kernel is wrong past the first image of a batch, so the images of a call run one at a time "
                        f"(same answers, less throughput). Re-export the bundle with this version of ram-edge "
                        f"(`ram-edge export`), whose graph keeps that average in float", RamEdgeWarning, stacklevel=4)

    def _answers_depend_on_batch(self) -> bool:
        """Whether the compiled model gives an image other probabilities beside a copy of itself than alone."""
        # Two copies of one image catch a kernel that treats the images after the first differently (OpenVINO
        # 2026.4's int8 mean over a middle axis returns 0 there: 0.018-0.022 in probability on the default model).
        size = int(self.bundle.preprocess.image_size)
        image = np.random.default_rng(0).standard_normal((1, 3, size, size), dtype=np.float32)
        alone = self._request.infer({self.bundle.input_name: image})[self._output].copy()
        pair = self._request.infer({self.bundle.input_name: np.concatenate([image, image])})[self._output]
        return float(np.abs(pair - alone).max()) > BATCH_TOLERANCE

    @property
    def device(self) -> str:
        """The OpenVINO device string in use."""
        return self._device

    @property
    def compute_precision(self) -> str:
        """What the products compute in (compiles on first call): int8 for an INT8 bundle on OpenVINO's int8 CPU
        kernels, as onnxruntime reports it, otherwise the inference precision (fp32 / bf16 / fp16)."""
        # Not the manifest's compute_precision: an OpenVINO INT8 bundle records the fp32 it was validated in.
        weights_only = (self.bundle.manifest.get("quantization") or {}).get("method") == "weights"
        if self.bundle.precision == "int8" and not weights_only and self.int8_kernels:
            if self._compiled is None:
                self._compile()
            return "int8"
        return self.inference_precision

    @property
    def inference_precision(self) -> str:
        """The compiled model's INFERENCE_PRECISION_HINT (compiles on first call), as fp32 / bf16 / fp16: what the
        float layers compute in, the layers around the int8 products of an INT8 bundle among them."""
        if self._compiled is None:
            self._compile()
        try:
            value = self._compiled.get_property("INFERENCE_PRECISION_HINT")
        except RuntimeError:  # AUTO / MULTI compiled models do not expose the hint
            return self._asked_precision
        hint = value.get_type_name() if hasattr(value, "get_type_name") else str(value).lower()
        return _FROM_OV.get(hint, hint)

    def matmul_kernels(self) -> dict[str, int]:
        """The compiled model's matrix-product layers (compiles on first call): "layer kernel weights" -> count,
        e.g. "FullyConnected jit_gemm_i8 i8". The kernel's name ends in what it computes in (`brgemm_avx512_I8`,
        `brgemm_avx2_f32`); the last word is the weights' type, i8 for the weights-compressed float kernels too."""
        if self._compiled is None:
            self._compile()
        counts: dict[str, int] = {}
        for op in self._compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            layer = str(info["layerType"].astype(str))
            if layer in ("FullyConnected", "MatMul", "Convolution"):
                key = f"{layer} {info['primitiveType'].astype(str)} {info['runtimePrecision'].astype(str)}"
                counts[key] = counts.get(key, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities (N, C) for a preprocessed batch."""
        if self._compiled is None:
            self._compile()
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if self.one_image_per_inference and len(batch) > 1:
            return np.concatenate([self._infer(batch[i:i + 1]) for i in range(len(batch))])
        return self._infer(batch)

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        try:
            result = self._request.infer({self.bundle.input_name: batch})
        except Exception as exc:
            raise RuntimeUnavailableError(f"OpenVINO failed on a batch of shape {batch.shape} with {self.bundle.path} "
                                          f"({_first_line(exc)})") from None
        return np.array(result[self._output], dtype=np.float32, copy=True)


def _int8_reductions(compiled) -> bool:
    """Whether a compiled CPU model computes a reduction (a mean, sum or max) on 8-bit values."""
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if str(info["layerType"].astype(str)) == "Reduce" and str(info["runtimePrecision"].astype(str)) in ("u8", "i8"):
            return True
    return False


def _first_line(exc: BaseException) -> str:
    """The meaningful line of an OpenVINO error (its message starts with C++ source locations)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Exception from", "Check '"))] or lines or [""]
    return f"{type(exc).__name__}: {useful[-1][:300]}"
