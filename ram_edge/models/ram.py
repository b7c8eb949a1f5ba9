"""RAM and RAM++ tagging models (inference path), built from a `ModelConfig`.

forward(images) = forward_head(forward_features(images)): the split the exporter uses to fold
precomputed label queries into the graph.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .head import TaggingHead
from .swin import SwinEncoder


class RAM(nn.Module):
    """Recognize Anything Model: Swin -> image_proj -> label-query decoder -> per-class logit.

    For family "ram_plus" `label_embed` holds `des_per_class` description embeddings per class
    (class-major), mixed per image by a softmax over their similarity to the pooled token.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.visual_encoder = SwinEncoder(config.swin)
        self.image_proj = nn.Linear(config.swin.num_features, config.embed_dim)
        rows = config.num_classes * config.des_per_class
        self.label_embed = nn.Parameter(torch.zeros(rows, config.label_embed_dim))
        self.wordvec_proj = nn.Linear(config.label_embed_dim, config.head.hidden_size)
        self.tagging_head = TaggingHead(config.head, config.embed_dim)
        self.fc = nn.Linear(config.head.hidden_size, 1)
        if config.family == "ram_plus":
            self.reweight_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07), dtype=torch.float32))

    @property
    def family(self) -> str:
        """'ram' or 'ram_plus'."""
        return self.config.family

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> projected image tokens (B, 1 + L, embed_dim), pooled token first."""
        return self.image_proj(self.visual_encoder(images))

    def label_mixture(self, image_embeds: torch.Tensor, label_embed: torch.Tensor | None = None) -> torch.Tensor:
        """RAM++: per-image class embeddings (B, C, D) mixed from the description embeddings."""
        label_embed = self.label_embed if label_embed is None else label_embed
        des = self.config.des_per_class
        pooled = image_embeds[:, 0, :]
        pooled = pooled / pooled.norm(dim=-1, keepdim=True)
        # Both products read the same (C, des, D) view of the description embeddings: an exported graph
        # then holds them once (a transposed copy for the similarities doubled the ONNX file: 479 MB at full size).
        per_class = label_embed.view(-1, des, label_embed.shape[-1])
        logits = torch.matmul(per_class, (self.reweight_scale.exp() * pooled).t())  # (C, des, B)
        weights = F.softmax(logits.permute(2, 0, 1), dim=2)
        # A batched product instead of the official elementwise product + sum (479 MB per image
        # at full size); equal up to summation order.
        return torch.matmul(weights.unsqueeze(-2), per_class).squeeze(-2)

    def label_queries(self, image_embeds: torch.Tensor | None = None, label_embed: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder queries: (1, C, H) for RAM (image-independent), (B, C, H) for RAM++."""
        label_embed = self.label_embed if label_embed is None else label_embed
        if self.family == "ram_plus":
            if image_embeds is None:
                raise ValueError("RAM++ label queries depend on the image: pass image_embeds")
            return F.relu(self.wordvec_proj(self.label_mixture(image_embeds, label_embed)))
        return F.relu(self.wordvec_proj(label_embed)).unsqueeze(0)

    def forward_head(self, image_embeds: torch.Tensor, queries: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, C) from projected image tokens and (optionally precomputed) queries."""
        if queries is None:
            queries = self.label_queries(image_embeds)
        return self.fc(self.tagging_head(queries, image_embeds)).squeeze(-1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised images -> logits (B, C)."""
        return self.forward_head(self.forward_features(images))


def build_model(config: ModelConfig) -> RAM:
    """Construct a RAM / RAM++ model (random init) from its config, in eval mode."""
    return RAM(config).eval()
