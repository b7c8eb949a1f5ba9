"""The ram-edge checkpoint directory (config.json + model.safetensors + label files), torch-free part.

Layout:
    config.json            {"format": "ram-edge-checkpoint", "format_version": 1, "model": {...}, ...}
    model.safetensors      tagging-path weights (strictly the keys of `RAM.state_dict()`)
    captioning.safetensors optional: captioning-only weights of an official RAM file, kept for training
    tags.txt, tags_zh.txt (optional), thresholds.txt
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .bundle import MANIFEST
from .config import ModelConfig
from .errors import CheckpointError, ConfigError
from .fileio import atomic_file, read_versioned_json
from .labels import LabelSet

FORMAT = "ram-edge-checkpoint"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CAPTIONING_FILE = "captioning.safetensors"


@dataclass
class CheckpointInfo:
    """What a checkpoint directory holds, read without torch."""

    path: Path
    config: ModelConfig
    labels: LabelSet
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def weights_path(self) -> Path:
        """The tagging weights file."""
        return self.path / WEIGHTS_FILE

    @property
    def captioning_path(self) -> Path | None:
        """The captioning-only weights file, when kept."""
        path = self.path / CAPTIONING_FILE
        return path if path.is_file() else None


def is_quantized(info: CheckpointInfo) -> bool:
    """True for a quantized checkpoint directory (`ram-edge quantize`): run it with ram_edge.quantize, not RAM."""
    return isinstance((info.source or {}).get("quantization"), dict)


def is_checkpoint_dir(path: str | Path) -> bool:
    """True when `path` looks like a ram-edge checkpoint directory."""
    config = Path(path) / CONFIG_FILE
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def read_checkpoint_dir(path: str | Path) -> CheckpointInfo:
    """Read config and labels of a checkpoint directory, checking that they agree."""
    path = Path(path)
    config_path = path / CONFIG_FILE
    if not config_path.is_file() and (path / MANIFEST).is_file():
        raise CheckpointError(f"{path}: an exported bundle, not a checkpoint directory; give the checkpoint "
                              "directory it was exported from (export, quantize and train read checkpoints)")
    data = read_versioned_json(config_path, fmt=FORMAT, version=FORMAT_VERSION, error=CheckpointError,
                               what="ram-edge checkpoint", create_hint="create one with `ram-edge convert`",
                               fix="re-convert the checkpoint")
    try:
        config = ModelConfig.from_dict(data.get("model", {}))
    except ConfigError as exc:
        raise CheckpointError(f"{config_path}: {exc}") from None
    if not (path / WEIGHTS_FILE).is_file():
        raise CheckpointError(f"{path}: {WEIGHTS_FILE} is missing; re-run `ram-edge convert`")
    labels = LabelSet.load_dir(path, num_classes=config.num_classes)
    return CheckpointInfo(path=path, config=config, labels=labels, source=data.get("source", {}))


def write_checkpoint_config(directory: str | Path, config: ModelConfig, source: dict[str, Any] | None = None) -> None:
    """Write config.json of a checkpoint directory."""
    from . import __version__

    data = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "ram_edge_version": __version__,
        "model": config.to_dict(),
        "source": source or {},
    }
    with atomic_file(Path(directory) / CONFIG_FILE, "w") as fh:
        json.dump(data, fh, indent=2, ensure_ascii=False)
        fh.write("\n")
