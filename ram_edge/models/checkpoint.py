"""Save and load ram-edge checkpoint directories with torch (weights in safetensors)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from ..checkpoint_dir import CAPTIONING_FILE, WEIGHTS_FILE, CheckpointInfo, read_checkpoint_dir, write_checkpoint_config
from ..errors import CheckpointError
from ..fileio import atomic_dir
from ..labels import LabelSet
from .ram import RAM, build_model


def save_checkpoint(
    model: RAM,
    labels: LabelSet,
    out_dir: str | Path,
    *,
    source: dict[str, Any] | None = None,
    extra_tensors: Mapping[str, torch.Tensor] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a checkpoint directory atomically (all files or none)."""
    from safetensors.torch import save_file

    if len(labels.tags) != model.config.num_classes:
        raise CheckpointError(f"label set has {len(labels.tags)} tags but the model has {model.config.num_classes} classes")
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        if extra_tensors:
            # safetensors refuses shared storage; the captioning file holds tied duplicates.
            extra = {k: v.detach().clone().contiguous() for k, v in extra_tensors.items()}
            save_file(extra, str(tmp / CAPTIONING_FILE), metadata={"format": "pt"})
        labels.save_dir(tmp)
        write_checkpoint_config(tmp, model.config, source)
    return out_dir


def load_checkpoint(path: str | Path, *, map_location: str = "cpu") -> tuple[RAM, CheckpointInfo]:
    """Load a checkpoint directory into an eval-mode model (strict key match)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    info = read_checkpoint_dir(path)
    model = build_model(info.config)
    try:
        state = load_file(str(info.weights_path), device=map_location)
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{info.weights_path}: unreadable or corrupt safetensors file ({exc})") from None
    missing, unexpected = set(model.state_dict()) - set(state), set(state) - set(model.state_dict())
    if missing or unexpected:
        raise CheckpointError(
            f"{info.weights_path}: weights do not match config.json "
            f"(missing: {sorted(missing)[:5]}, unexpected: {sorted(unexpected)[:5]})"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{info.weights_path}: weights do not match config.json ({exc})") from None
    return model.eval(), info
