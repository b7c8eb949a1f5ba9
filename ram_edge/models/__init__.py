"""Torch model definitions (RAM, RAM++, Swin), checkpoint conversion, the tagging graph, quantized checkpoints,
and the text side of the label queries (`queries`); torch is imported only by the modules that need it."""

from __future__ import annotations

from typing import Any

__all__ = ["RAM", "build_model"]


def __getattr__(name: str) -> Any:
    # Lazy: importing ram_edge.models.queries (numpy only) must not import torch through this package.
    if name in __all__:
        from . import ram

        return getattr(ram, name)
    raise AttributeError(f"module 'ram_edge.models' has no attribute {name!r}")
