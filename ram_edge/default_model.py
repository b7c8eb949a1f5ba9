"""The model ram-edge ships: a small RAM trained by its own pipeline on rendered emoji scenes
(recipes/default_model). `ram-edge tag IMAGE` without --model uses its ONNX bundle (no torch)."""

from __future__ import annotations

from pathlib import Path

from .errors import RamEdgeError

PACKAGE_DIR = Path(__file__).resolve().parent / "assets" / "default_model"


KINDS = ("bundle", "bundle_fp32", "checkpoint")


def default_model_path(kind: str = "bundle") -> Path:
    """Path of the shipped model: 'bundle' (the ONNX bundle `tag` uses: INT8 once QAT met its targets),
    'bundle_fp32' (the fp32 ONNX bundle, when the default is INT8) or 'checkpoint' (torch)."""
    if kind not in KINDS:
        raise RamEdgeError(f"unknown default model kind {kind!r}; valid: {', '.join(KINDS)}")
    path = PACKAGE_DIR / kind
    if not (path / ("config.json" if kind == "checkpoint" else "manifest.json")).is_file():
        raise RamEdgeError(
            f"the default model is not installed at {path}; pass --model, or rebuild it with "
            f"`python recipes/default_model/build.py all`"
        )
    return path


def example_images() -> dict[Path, list[str]]:
    """The shipped example images and their true tags (rendered by the scene generator)."""
    import json

    folder = PACKAGE_DIR / "examples"
    truth = json.loads((folder / "examples.json").read_text(encoding="utf-8"))
    return {folder / name: tags for name, tags in truth.items()}
