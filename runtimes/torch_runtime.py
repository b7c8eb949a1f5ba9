"""The torch backend: runs a ram-edge checkpoint directory with the reference model code."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import ClassVar

import numpy as np

from ram_edge.errors import RuntimeUnavailableError

from .base import Runtime, normalize_compute_precision


class TorchRuntime(Runtime):
    """Eager PyTorch on CPU or CUDA."""

    name: ClassVar[str] = "torch"
    formats: ClassVar[tuple[str, ...]] = ("checkpoint",)

    @classmethod
    def is_installed(cls) -> bool:
        """True when torch and safetensors import."""
        return all(importlib.util.find_spec(m) is not None for m in ("torch", "safetensors"))

    @classmethod
    def available_devices(cls) -> list[str]:
        """'cpu', plus 'cuda' / 'cuda:N' when a GPU is visible."""
        import torch

        devices = ["cpu"]
        if torch.cuda.is_available():
            devices += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        return devices

    def __init__(self, path: str | Path, *, device: str | None = None, threads: int | None = None,
                 compute_precision: str | None = None) -> None:
        import torch

        from ram_edge.models.checkpoint import load_checkpoint

        device = device or "cpu"
        if device not in self.available_devices():
            raise RuntimeUnavailableError(
                f"device {device!r} is not available to the torch runtime; available: {', '.join(self.available_devices())}"
            )
        precision = normalize_compute_precision(compute_precision) or "fp32"
        if precision != "fp32":
            # The reference model stays the reference: lower precisions are the exported bundles' job.
            raise RuntimeUnavailableError(
                f"the torch runtime computes in fp32 only (asked: {precision}); export a bundle "
                f"(`ram-edge export`) and run it with --runtime openvino or ort for {precision}"
            )
        if threads:
            torch.set_num_threads(int(threads))
        self._torch = torch
        self._device = device
        from ram_edge.checkpoint_dir import is_quantized, read_checkpoint_dir

        # A quantized checkpoint runs as its quantized tagging graph, which gives probabilities, not logits.
        self._gives_probs = is_quantized(read_checkpoint_dir(path))
        if self._gives_probs:
            from ram_edge.models.quantized import load_quantized

            model, self.info = load_quantized(path)
        else:
            model, self.info = load_checkpoint(path)
        self.model = model.to(device).eval()

    @property
    def device(self) -> str:
        """The torch device in use."""
        return self._device

    @property
    def compute_precision(self) -> str:
        """Always fp32: the reference model in float32."""
        return "fp32"

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities (N, C) for a preprocessed batch."""
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self._device)
            out = self.model(x)
            return (out if self._gives_probs else torch.sigmoid(out)).float().cpu().numpy()
