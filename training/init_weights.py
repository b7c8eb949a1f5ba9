"""Initialise the Swin encoder from an ImageNet checkpoint in timm's key layout (pretraining from scratch).

Both timm layouts are accepted: <= 0.6 keeps patch merging at the end of stage i
(`layers.i.downsample`), >= 0.9 at the start of stage i+1 (`layers.{i+1}.downsample`).
Relative position tables of another window size are resized bicubically.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F

from ram_edge.errors import CheckpointError
from ram_edge.models.swin import SwinEncoder


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from .pth/.pt (weights only) or .safetensors, unwrapping 'model'/'state_dict'."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: encoder checkpoint not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path))
        else:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch/safetensors raise many types
        raise CheckpointError(f"{path}: cannot read the encoder checkpoint ({str(exc).splitlines()[0][:200]})") from None
    for key in ("model", "state_dict", "model_ema"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or "patch_embed.proj.weight" not in {k.removeprefix("module.") for k in obj}:
        raise CheckpointError(f"{path}: not a Swin checkpoint in timm's layout (no 'patch_embed.proj.weight')")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def resize_relative_table(table: torch.Tensor, rows: int) -> torch.Tensor:
    """Bicubic resize of a (2w-1)^2 x heads relative position table to `rows` rows."""
    old = int(round(table.shape[0] ** 0.5))
    new = int(round(rows**0.5))
    grid = table.T.reshape(1, table.shape[1], old, old)
    grid = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
    return grid.reshape(table.shape[1], new * new).T.contiguous()


def convert_timm_swin(state: dict[str, torch.Tensor], encoder: SwinEncoder) -> dict[str, torch.Tensor]:
    """Rename/resize timm Swin keys to this encoder's; raise on anything that does not fit."""
    new_layout = "layers.0.downsample.reduction.weight" not in state and "layers.1.downsample.reduction.weight" in state
    own = encoder.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("head") or key.endswith(("relative_position_index", "attn_mask")):
            continue  # classifier and derived buffers
        match = re.match(r"layers\.(\d+)\.downsample\.(.*)", key)
        if match and new_layout:
            key = f"layers.{int(match.group(1)) - 1}.downsample.{match.group(2)}"
        if key not in own:
            raise CheckpointError(f"encoder checkpoint key {key!r} has no place in this Swin (check the model size)")
        if "relative_position_bias_table" in key and value.shape != own[key].shape:
            value = resize_relative_table(value, own[key].shape[0])
        if value.shape != own[key].shape:
            raise CheckpointError(f"encoder checkpoint key {key!r} has shape {tuple(value.shape)}, this Swin needs {tuple(own[key].shape)}")
        out[key] = value
    missing = sorted(set(own) - set(out))
    if missing:
        raise CheckpointError(f"encoder checkpoint lacks {len(missing)} key(s) of this Swin, first: {missing[0]!r}")
    return out


def load_timm_swin(encoder: SwinEncoder, path: str | Path) -> None:
    """Load ImageNet Swin weights (timm layout) into `encoder`, strictly."""
    encoder.load_state_dict(convert_timm_swin(read_state_dict(path), encoder), strict=True)
