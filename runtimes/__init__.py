"""Runtime backends behind one interface: torch, onnxruntime, OpenVINO, TensorRT."""

from .base import Runtime
from .registry import get_runtime_class, register, resolve_runtime, runtime_names

__all__ = ["Runtime", "get_runtime_class", "register", "resolve_runtime", "runtime_names"]
