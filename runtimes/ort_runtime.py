"""onnxruntime backend: ONNX bundles on CPU, CUDA or TensorRT execution providers."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from typing import ClassVar

import numpy as np

from ram_edge.bundle import read_bundle
from ram_edge.cpu import x86_int8_dot_product
from ram_edge.errors import BundleError, RamEdgeWarning, RuntimeUnavailableError

from .base import Runtime, auto_on_off, normalize_compute_precision
from .heap import release_free_heap

# --device value -> execution provider; the CPU provider is appended as onnxruntime's own
# fallback only for nodes the chosen provider cannot run, never as a silent replacement.
DEVICE_PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}

# Whether an INT8 bundle's int8 products run on onnxruntime's U8U8 kernels on the CPU: auto (on x86 CPUs without
# VNNI or AMX), on, off.
INT8_U8U8_ENV = "RAM_EDGE_ORT_INT8_U8U8"
# What onnxruntime says when a bundle written before ram-edge unshared its weights' zero points meets the U8U8 rewrite.
_SHARED_ZERO_POINT = "Attempt to replace the existing tensor"


def int8_u8u8_wanted() -> bool:
    """Whether onnxruntime should compute an INT8 bundle with U8U8 kernels: $RAM_EDGE_ORT_INT8_U8U8 on / off, or auto
    (the default): on x86 CPUs known to lack VNNI and AMX."""
    return auto_on_off(INT8_U8U8_ENV, lambda: x86_int8_dot_product() is False,
                       "U8U8 on x86 CPUs without VNNI or AMX, where the faster U8S8 kernels can saturate")


def session_options(threads: int | None = None):
    """The onnxruntime SessionOptions every `ort` session starts from (the benchmarks time with the same)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    # onnxruntime's memory pattern plans one block for every intermediate tensor from the first run's shapes;
    # it overshoots badly on Q/DQ graphs (Swin-L/384 INT8 at batch 8: peak 3466 MB with it, 2199 without;
    # fp32 3306 -> 3191; batch 1 INT8 815 -> 669) and bought no speed on any bundle measured (full-size or
    # the 2.5 ms default model): allocations come from the arena either way.
    options.enable_mem_pattern = False
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    return options


class OrtRuntime(Runtime):
    """onnxruntime InferenceSession over a bundle's model.onnx."""

    name: ClassVar[str] = "ort"
    formats: ClassVar[tuple[str, ...]] = ("onnx",)
    thread_safe: ClassVar[bool] = True  # InferenceSession.run is documented thread-safe

    @classmethod
    def is_installed(cls) -> bool:
        """True when onnxruntime imports."""
        return importlib.util.find_spec("onnxruntime") is not None

    @classmethod
    def available_devices(cls) -> list[str]:
        """Devices whose execution provider this onnxruntime build has."""
        import onnxruntime as ort

        providers = set(ort.get_available_providers())
        order = ["tensorrt", "cuda", "cpu"]
        return [d for d in order if DEVICE_PROVIDERS[d] in providers]

    def __init__(self, path: str | Path, *, device: str | None = None, threads: int | None = None,
                 compute_precision: str | None = None) -> None:
        import onnxruntime as ort

        self.bundle = read_bundle(path)
        # onnxruntime computes in the graph's own types (an fp16 graph in fp16 where the provider has
        # fp16 kernels, casting around the others); it has no switch to choose another.
        # An int8 bundle with 8-bit weights only computes in float: the manifest records what export validated in.
        graph_precision = self.bundle.manifest.get("compute_precision") or self.bundle.precision
        asked = normalize_compute_precision(compute_precision)
        if asked is not None and asked != graph_precision:
            raise RuntimeUnavailableError(
                f"onnxruntime computes a {self.bundle.precision} bundle in {graph_precision}, not {asked}; "
                f"export a {asked} bundle or use --runtime openvino, which can choose the compute precision"
            )
        self._compute_precision = graph_precision
        device = (device or "cpu").lower()
        if device not in DEVICE_PROVIDERS:
            raise RuntimeUnavailableError(f"unknown device {device!r} for the ort runtime; valid: {', '.join(DEVICE_PROVIDERS)}")
        available = self.available_devices()
        if device not in available:
            raise RuntimeUnavailableError(
                f"device {device!r} needs {DEVICE_PROVIDERS[device]}, which this onnxruntime does not have; "
                f"available devices: {', '.join(available)} (providers: {', '.join(ort.get_available_providers())})"
            )
        weights_only = (self.bundle.manifest.get("quantization") or {}).get("method") == "weights"
        if device == "cpu" and graph_precision == "int8" and not weights_only:
            self.int8_u8u8 = int8_u8u8_wanted()
        providers = [DEVICE_PROVIDERS[device]] + (["CPUExecutionProvider"] if device != "cpu" else [])
        self.session = self._session(ort, threads, weights_only, providers)
        # The parsed model and the copies made while loading are freed now; give their pages back.
        release_free_heap()
        used = self.session.get_providers()
        if used[0] != DEVICE_PROVIDERS[device]:
            raise RuntimeUnavailableError(
                f"onnxruntime could not start {DEVICE_PROVIDERS[device]} (it used {used[0]}); check the CUDA/TensorRT installation"
            )
        self._device = device
        self._input = self.bundle.input_name
        self._output = self.bundle.output_name

    def _session(self, ort, threads: int | None, weights_only: bool, providers: list[str]):
        """The InferenceSession; an INT8 bundle whose weights share zero points (exported before ram-edge unshared
        them) cannot take the U8U8 rewrite and loads with the U8S8 kernels, with a warning."""
        model = str(self.bundle.file("model"))
        options = session_options(threads)
        if weights_only:
            # 8-bit weights, float activations: without this, onnxruntime keeps every DequantizeLinear of a weight
            # for QDQ fusion that never comes and runs the convolutions without their packed kernels (default
            # model: 38 against 18.6 ms/image for fp32); with it the weights are dequantized once, at load.
            options.add_session_config_entry("session.disable_quant_qdq", "1")
        if self.int8_u8u8:
            # Without VNNI, onnxruntime's U8S8 kernels multiply-add pairs of u8 x s8 products into 16 bits
            # (vpmaddubsw), which saturates: on an emulated Zen 3 the default model's tag-set agreement with fp32
            # fell from 0.987 (a VNNI CPU's exact int32 products) to 0.971 on 60 scenes (benchmarks/results/emulated_cpus/emulated_cpus.md).
            # The U8U8 kernels (weights shifted to uint8 at load, pairs summed in 32 bits) gave the VNNI CPU's tags.
            options.add_session_config_entry("session.x64quantprecision", "1")
            options.log_severity_level = 4  # an old bundle's refusal below is handled, not an error to print
        try:
            return ort.InferenceSession(model, options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own types (InvalidProtobuf, Fail, InvalidGraph, ...)
            if not (self.int8_u8u8 and _SHARED_ZERO_POINT in str(exc)):
                raise BundleError(f"{model}: onnxruntime cannot load the model ({type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0][:300]}); re-export the bundle") from None
        warnings.warn(f"{model}: this INT8 bundle cannot use onnxruntime's exact U8U8 kernels (its weights share zero "
                      f"points), so on CPUs without VNNI its int8 products may saturate. Re-export it with this "
                      f"version of ram-edge to fix that", RamEdgeWarning, stacklevel=3)
        self.int8_u8u8 = False
        return self._session(ort, threads, weights_only, providers)

    @property
    def device(self) -> str:
        """The device (execution provider) in use."""
        return self._device

    @property
    def compute_precision(self) -> str:
        """The graph's own arithmetic precision (onnxruntime has no precision hint)."""
        return self._compute_precision

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities (N, C) for a preprocessed batch."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        try:
            return self.session.run([self._output], {self._input: batch})[0].astype(np.float32, copy=False)
        except Exception as exc:  # a graph that loads but cannot run (a damaged constant, a wrong input shape)
            raise RuntimeUnavailableError(f"onnxruntime failed on a batch of shape {batch.shape} with {self.bundle.path} "
                                          f"({type(exc).__name__}: {str(exc).splitlines()[0][:300]})") from None
