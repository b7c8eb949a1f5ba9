"""Torch model definitions (RAM, RAM++, Swin) and checkpoint conversion; imported only when used."""

from .ram import RAM, build_model

__all__ = ["RAM", "build_model"]
