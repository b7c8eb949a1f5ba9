"""Backends register by name; `auto` picks the best installed one for an artifact kind.

Entries are import strings resolved with importlib, so asking for one backend never imports
another (and the core never imports torch).
"""

from __future__ import annotations

import importlib

from ram_edge.errors import RuntimeUnavailableError

from .base import Runtime

# name -> "module:Class"; order is the `auto` preference among those that support a format.
# An ONNX bundle goes to onnxruntime first (its native runtime); OpenVINO IR only to OpenVINO; a
# TensorRT bundle only to TensorRT.
_REGISTRY: dict[str, str] = {
    "trt": "ram_edge.runtimes.tensorrt_runtime:TensorRTRuntime",
    "ort": "ram_edge.runtimes.ort_runtime:OrtRuntime",
    "openvino": "ram_edge.runtimes.openvino_runtime:OpenVINORuntime",
    "torch": "ram_edge.runtimes.torch_runtime:TorchRuntime",
}
# Which formats each backend accepts, known without importing it.
_FORMATS: dict[str, tuple[str, ...]] = {
    "openvino": ("openvino", "onnx"),
    "ort": ("onnx",),
    "torch": ("checkpoint",),
    "trt": ("trt",),
}
# Extra that installs each backend, for error messages.
_EXTRAS = {"openvino": "openvino", "ort": "ort", "torch": "torch", "trt": "trt"}
# The names users type for a backend (package and product names).
ALIASES = {"onnxruntime": "ort", "onnx-runtime": "ort", "tensorrt": "trt", "ov": "openvino", "pytorch": "torch"}


def register(name: str, target: str, formats: tuple[str, ...], extra: str | None = None) -> None:
    """Register a backend as 'module:Class' (used by plugins and tests)."""
    _REGISTRY[name] = target
    _FORMATS[name] = formats
    if extra:
        _EXTRAS[name] = extra


def runtime_names() -> list[str]:
    """All registered backend names."""
    return list(_REGISTRY)


def canonical_runtime(name: str) -> str:
    """The registered backend (or 'auto') that `name` or one of its aliases stands for; unknown names suggest the nearest."""
    import difflib

    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key == "auto" or key in _REGISTRY:
        return key
    known = ["auto", *_REGISTRY, *ALIASES]
    near = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    suggestion = f" (did you mean {near[0]!r}?)" if near else ""
    raise RuntimeUnavailableError(f"unknown runtime {name!r}{suggestion}; available: {', '.join(['auto', *_REGISTRY])} "
                                  f"(also: {', '.join(f'{a} = {n}' for a, n in ALIASES.items())})")


def get_runtime_class(name: str) -> type[Runtime]:
    """Import and return the backend class registered as `name` (or an alias of it)."""
    name = canonical_runtime(name)
    if name == "auto":
        raise RuntimeUnavailableError("'auto' picks a runtime for a model: use resolve_runtime('auto', FORMAT)")
    module_name, cls_name = _REGISTRY[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RuntimeUnavailableError(
            f"runtime {name!r} is not installed ({exc}); install it with: pip install 'ram-edge[{_EXTRAS.get(name, name)}]'"
        ) from None
    cls = getattr(module, cls_name)
    if not cls.is_installed():
        # A backend whose packages do not all come from PyPI (TensorRT on a Jetson) says itself what is missing.
        hint = cls.install_hint()
        raise RuntimeUnavailableError(
            f"runtime {name!r} is not installed; "
            + (hint or f"install it with: pip install 'ram-edge[{_EXTRAS.get(name, name)}]'")
        )
    return cls


def _installed(name: str) -> bool:
    try:
        get_runtime_class(name)
        return True
    except (RuntimeUnavailableError, ImportError):
        return False


def resolve_runtime(name: str, artifact_format: str) -> type[Runtime]:
    """The backend class for `name` (or `auto`, or an alias) that can run an artifact of `artifact_format`."""
    name = canonical_runtime(name)
    if name == "auto":
        candidates = [n for n in _REGISTRY if artifact_format in _FORMATS[n]]
        for candidate in candidates:
            if _installed(candidate):
                return get_runtime_class(candidate)
        if not candidates:
            raise RuntimeUnavailableError(
                f"no runtime of this ram-edge runs {artifact_format!r} models (runtimes: {', '.join(_REGISTRY)}); "
                f"export the model as onnx or openvino with `ram-edge export`"
            )
        if len(candidates) == 1:
            return get_runtime_class(candidates[0])  # raises with that backend's own install hint
        hint = " or ".join(f"pip install 'ram-edge[{_EXTRAS[c]}]'" for c in candidates)
        raise RuntimeUnavailableError(
            f"no installed runtime can run a {artifact_format!r} model; install one with: {hint}"
        )
    cls = get_runtime_class(name)
    if artifact_format not in _FORMATS[name]:
        raise RuntimeUnavailableError(
            f"runtime {name!r} cannot run a {artifact_format!r} model (it runs: {', '.join(_FORMATS[name])}); "
            f"use --runtime auto or export the model for {name!r} with `ram-edge export`"
        )
    return cls
