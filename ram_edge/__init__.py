"""ram-edge: Recognize Anything (RAM, RAM++) image tagging on edge devices.

Importing this package imports neither torch nor onnx; heavy backends load on first use.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["Tagger", "TagResult", "Tag", "__version__"]


def __getattr__(name: str):
    # Lazy so that `import ram_edge` stays light for embedders that only need the CLI or labels.
    if name in ("Tagger", "TagResult", "Tag"):
        from . import tagger

        return getattr(tagger, name)
    raise AttributeError(f"module 'ram_edge' has no attribute {name!r}")
