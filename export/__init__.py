"""Model -> bundle: `export` (export/pipeline.py) holds every decision `ram-edge export` makes; the formats'
exporters, the ONNX rewrites and the TensorRT builder are the modules beside it."""

from __future__ import annotations

from typing import Any

__all__ = ["export"]


def __getattr__(name: str) -> Any:
    # Lazy, so that importing one exporter module does not import the pipeline (and its TensorRT options) as well.
    if name == "export":
        from .pipeline import export

        return export
    raise AttributeError(f"module 'ram_edge.export' has no attribute {name!r}")
