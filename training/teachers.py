"""Frozen models that compute training targets on the fly: a CLIP image tower (the distillation
teacher of RAM / RAM++) and a text encoder for caption embeddings (RAM++'s image-text alignment).

They are held by the Trainer, not by the model, so their weights never enter a checkpoint, the
optimizer or DDP. The official recipe runs CLIP ViT-B/16: `encode_image` on a 224-px copy of the
batch (the L1 target of the pooled image token) and `encode_text` on one caption per image,
L2-normalised (the alignment queries).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ram_edge.config import PreprocessConfig
from ram_edge.errors import ConfigError
from ram_edge.models.queries.vocab import clip_tower_config

from ram_edge.models.queries.space import center_embeddings

# OpenAI CLIP normalisation, used when the directory has no preprocessor_config.json.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_PREFIX = "clip:"


def _clip_dir(spec: str, what: str) -> Path:
    path = Path(spec[len(CLIP_PREFIX):]).expanduser()
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"{what} {spec!r}: {path} is not a Hugging Face CLIP directory (no config.json); save one with "
            f"transformers' CLIPModel.save_pretrained (e.g. openai/clip-vit-base-patch16) and point to it"
        )
    return path


def renormalise(images: torch.Tensor, source: PreprocessConfig, size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Model-normalised images (B, 3, S, S) -> the same pixels resized to `size` and normalised with mean/std."""
    src_mean = torch.tensor(source.mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    src_std = torch.tensor(source.std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    pixels = images * src_std + src_mean  # back to [0, 1]
    if pixels.shape[-1] != size or pixels.shape[-2] != size:
        pixels = F.interpolate(pixels, size=(size, size), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    dst_mean = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    dst_std = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (pixels - dst_mean) / dst_std


class ClipImageTeacher:
    """CLIP image embeddings (projected, not normalised: `encode_image`) of the training batch."""

    def __init__(self, spec: str, source: PreprocessConfig, device: torch.device | str = "cpu") -> None:
        path = _clip_dir(spec, "loss.distillation")
        try:
            from transformers import CLIPVisionModelWithProjection
        except ImportError as exc:
            raise ConfigError(f"a CLIP teacher needs transformers ({exc}); install it with: pip install 'ram-edge[train]'") from None
        model_type = json.loads((path / "config.json").read_text(encoding="utf-8")).get("model_type")
        vision_config = None
        if model_type == "clip":
            vision_config = clip_tower_config(path, "vision")
        elif model_type != "clip_vision_model":
            raise ConfigError(f"loss.distillation {spec!r}: {path} holds a {model_type!r} model, not CLIP")
        model = CLIPVisionModelWithProjection.from_pretrained(path, config=vision_config, local_files_only=True)
        self.model = model.to(device).eval().requires_grad_(False)
        self.dim = int(self.model.config.projection_dim)
        self.size = int(self.model.config.image_size)
        self.mean, self.std = CLIP_MEAN, CLIP_STD
        processor = path / "preprocessor_config.json"
        if processor.is_file():
            meta = json.loads(processor.read_text(encoding="utf-8"))
            self.mean = tuple(meta.get("image_mean", self.mean))
            self.std = tuple(meta.get("image_std", self.std))
        self.source = source

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) model-normalised images -> (B, dim) teacher embeddings."""
        pixels = renormalise(images.float(), self.source, self.size, self.mean, self.std)
        return self.model(pixel_values=pixels).image_embeds.float()


class CaptionEmbedder:
    """Unit text embeddings of captions, moved into the label queries' space (same centring and scale)."""

    def __init__(self, kind: str, center: np.ndarray | None, scale: float, device: torch.device | str = "cpu") -> None:
        if kind.startswith(CLIP_PREFIX):
            from ram_edge.models.queries.vocab import ClipTextEncoder

            self.encoder = ClipTextEncoder(_clip_dir(kind, "the alignment text encoder"))
        elif kind == "minilm":
            from ram_edge.models.queries.minilm import MiniLMEncoder

            self.encoder = MiniLMEncoder()
        else:
            raise ConfigError(
                f"loss.alignment needs a text encoder for captions, but {kind!r} cannot embed text; set "
                f"loss.alignment_text_encoder (or text_encoder) to 'clip:<local CLIP dir>' or 'minilm'"
            )
        self.center, self.scale, self.device = center, scale, device

    def __call__(self, captions: Sequence[str]) -> torch.Tensor:
        """(B, D) embeddings of one caption per image."""
        emb = self.encoder.encode(list(captions))
        if self.center is not None:
            emb, _ = center_embeddings(emb, self.center)
        return torch.from_numpy(np.ascontiguousarray(emb * self.scale, dtype=np.float32)).to(self.device)
