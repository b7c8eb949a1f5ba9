"""Recognise what a model path is (checkpoint directory or exported bundle) without loading it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import PreprocessConfig
from .errors import RamEdgeError
from .labels import LabelSet


@dataclass
class ArtifactInfo:
    """What `Tagger` needs to know about a model before choosing a runtime."""

    path: Path
    format: str  # "checkpoint" or a bundle format: "onnx", "openvino", "trt"
    family: str
    preprocess: PreprocessConfig
    labels: LabelSet


def describe(path: str | Path) -> ArtifactInfo:
    """Read the metadata of a checkpoint directory or bundle at `path`."""
    from . import checkpoint_dir

    path = Path(path)
    if not path.exists():
        raise RamEdgeError(f"model {path} does not exist; pass a checkpoint directory (ram-edge convert) or a bundle (ram-edge export)")
    if not path.is_dir():
        raise RamEdgeError(
            f"model {path} is a file; pass a checkpoint directory or bundle directory "
            f"(an official .pth must first be converted with `ram-edge convert`)"
        )
    if (path / "manifest.json").is_file():
        from .bundle import read_bundle

        # The runtime verifies the files' sha256 when it loads them; hashing twice costs seconds.
        bundle = read_bundle(path, verify=False)
        return ArtifactInfo(path, bundle.format, bundle.family, bundle.preprocess, bundle.labels)
    if checkpoint_dir.is_checkpoint_dir(path):
        info = checkpoint_dir.read_checkpoint_dir(path)
        return ArtifactInfo(path, "checkpoint", info.config.family, info.config.preprocess, info.labels)
    raise RamEdgeError(
        f"model {path} is neither a ram-edge checkpoint directory (config.json) nor a bundle (manifest.json)"
    )
