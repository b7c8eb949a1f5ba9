"""The caption decoder of a checkpoint that kept its captioning weights, for the data engine's generation step."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ram_edge.errors import ConfigError


class Captioner:
    """Greedy tag-guided captions from a ram-edge training checkpoint (tag encoder + text decoder)."""

    def __init__(self, model, max_length: int = 30, device=None) -> None:
        self.model = model
        self.max_length = max_length
        self.device = device

    def caption(self, pixels: np.ndarray, tags: list[list[str]]) -> list[str]:
        """One caption per preprocessed image (N, 3, S, S), guided by each image's tags."""
        import torch

        strings = [" | ".join(t) for t in tags]
        with torch.inference_mode():
            return self.model.caption(torch.from_numpy(pixels).to(self.device or "cpu"), strings, max_length=self.max_length)


def captioning_status(path: str | Path) -> str | None:
    """None when `path` can caption; otherwise why not (a bundle, no captioning weights, no caption config)."""
    from ram_edge.checkpoint_dir import is_checkpoint_dir, read_checkpoint_dir

    if not is_checkpoint_dir(path):
        return f"{path} is a bundle (bundles hold the tagging graph only)"
    info = read_checkpoint_dir(path)
    if info.captioning_path is None:
        return f"{path} has no captioning weights ({Path(path) / 'captioning.safetensors'})"
    caption = ((info.source or {}).get("config") or {}).get("caption") or {}
    if not caption.get("vocab"):
        return f"{path} records no caption settings (a checkpoint trained by `ram-edge train` with loss.captioning has them)"
    return None


def load_captioner(path: str | Path, max_length: int = 30, device: str | None = None) -> Captioner:
    """The captioning model of a checkpoint directory trained with loss.captioning (see `captioning_status`)."""
    from safetensors.torch import load_file

    from ram_edge.checkpoint_dir import read_checkpoint_dir

    from ..config import LossConfig
    from ..model import RAMForTraining

    why = captioning_status(path)
    if why is not None:
        raise ConfigError(f"cannot generate captions: {why}; pass --no-captions to generate tags only")
    info = read_checkpoint_dir(path)
    caption = dict(info.source["config"]["caption"])
    if not Path(caption["vocab"]).is_file():
        raise ConfigError(f"{path}: the caption vocabulary {caption['vocab']} recorded at training is missing; "
                          "restore it or pass --no-captions")
    model = RAMForTraining(info.config, LossConfig(captioning=True), caption)
    weights = load_file(str(info.weights_path))
    captioning = load_file(str(info.captioning_path))
    model.load_state_dict({**captioning, **weights}, strict=False)
    # Tied tag-encoder layers share the tagging head's modules: the head's own weights win, as at training.
    model.load_state_dict({k: v for k, v in weights.items() if k.startswith("tagging_head.")}, strict=False)
    missing = set(model.state_dict()) - set(weights) - set(captioning)
    if missing:
        raise ConfigError(f"{path}: captioning weights do not fit the recorded caption settings (missing e.g. {sorted(missing)[0]})")
    model.tag_names = list(info.labels.tags)
    from .clean import torch_device

    target = torch_device(device)
    return Captioner(model.eval().to(target), max_length, target)
