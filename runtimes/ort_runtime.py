"""onnxruntime backend: ONNX bundles on CPU, CUDA or TensorRT execution providers."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import ClassVar

import numpy as np

from ram_edge.bundle import read_bundle
from ram_edge.errors import RuntimeUnavailableError

from .base import Runtime

# --device value -> execution provider; the CPU provider is appended as onnxruntime's own
# fallback only for nodes the chosen provider cannot run, never as a silent replacement.
DEVICE_PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


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

    def __init__(self, path: str | Path, *, device: str | None = None, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.bundle = read_bundle(path)
        device = (device or "cpu").lower()
        if device not in DEVICE_PROVIDERS:
            raise RuntimeUnavailableError(f"unknown device {device!r} for the ort runtime; valid: {', '.join(DEVICE_PROVIDERS)}")
        available = self.available_devices()
        if device not in available:
            raise RuntimeUnavailableError(
                f"device {device!r} needs {DEVICE_PROVIDERS[device]}, which this onnxruntime does not have; "
                f"available devices: {', '.join(available)} (providers: {', '.join(ort.get_available_providers())})"
            )
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        providers = [DEVICE_PROVIDERS[device]] + (["CPUExecutionProvider"] if device != "cpu" else [])
        self.session = ort.InferenceSession(str(self.bundle.file("model")), options, providers=providers)
        used = self.session.get_providers()
        if used[0] != DEVICE_PROVIDERS[device]:
            raise RuntimeUnavailableError(
                f"onnxruntime could not start {DEVICE_PROVIDERS[device]} (it used {used[0]}); check the CUDA/TensorRT installation"
            )
        self._device = device
        self._input = self.bundle.input_name
        self._output = self.bundle.output_name

    @property
    def device(self) -> str:
        """The device (execution provider) in use."""
        return self._device

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities (N, C) for a preprocessed batch."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        return self.session.run([self._output], {self._input: batch})[0].astype(np.float32, copy=False)
