"""Named architecture configs shipped as JSON (`configs/<name>.json`)."""

from __future__ import annotations

from importlib import resources

from ..config import ModelConfig
from ..errors import ConfigError


def preset_names() -> list[str]:
    """Names of the shipped architecture configs."""
    folder = resources.files(__package__) / "configs"
    return sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))


def load_preset(name: str) -> ModelConfig:
    """The architecture config called `name` (e.g. 'ram_swin_large_384')."""
    if name not in preset_names():
        raise ConfigError(f"unknown model preset {name!r}; available: {', '.join(preset_names())}")
    text = (resources.files(__package__) / "configs" / f"{name}.json").read_text(encoding="utf-8")
    import json

    return ModelConfig.from_dict(json.loads(text))
