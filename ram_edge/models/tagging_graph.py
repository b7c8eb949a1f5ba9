"""The exported graph: image -> probabilities, with the label queries precomputed.

RAM: queries relu(wordvec_proj(label_embed)) are image-independent and folded in as one constant
(C, H); no text encoder and no wordvec_proj at run time. RAM++: the description embeddings are
constants and only the per-image softmax mixing and wordvec_proj stay in the graph.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ram_edge.models.ram import RAM


def select_label_embed(model: RAM, indices: np.ndarray | None = None, new_embed: np.ndarray | None = None) -> torch.Tensor:
    """The label-embedding rows the bundle keeps: a subset by class index, or new (open-set) rows."""
    if new_embed is not None:
        return torch.as_tensor(np.asarray(new_embed, dtype=np.float32))
    embed = model.label_embed.detach()
    if indices is None:
        return embed
    des = model.config.des_per_class
    per_class = embed.view(model.config.num_classes, des, -1)
    return per_class[torch.as_tensor(indices, dtype=torch.long)].reshape(-1, embed.shape[-1]).contiguous()


class TaggingGraph(nn.Module):
    """Export wrapper: (B, 3, S, S) -> (B, C) probabilities with precomputed label queries."""

    def __init__(self, model: RAM, label_embed: torch.Tensor) -> None:
        super().__init__()
        self.model = model.eval()
        self.family = model.config.family
        with torch.no_grad():
            if self.family == "ram":
                self.register_buffer("queries", model.label_queries(label_embed=label_embed).contiguous())
            else:
                self.register_buffer("label_embed", label_embed.contiguous())

    @property
    def num_classes(self) -> int:
        """Classes the graph scores."""
        if self.family == "ram":
            return self.queries.shape[1]
        return self.label_embed.shape[0] // self.model.config.des_per_class

    # Quantization-aware training sets this to get the logits before the final sigmoid (stable losses);
    # export and inference never do.
    emit_logits = False

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Probabilities (logits while `emit_logits` is set) for a batch of preprocessed images."""
        embeds = self.model.forward_features(images)
        if self.family == "ram":
            queries = self.queries
        else:
            queries = F.relu(self.model.wordvec_proj(self.model.label_mixture(embeds, self.label_embed)))
        logits = self.model.forward_head(embeds, queries)
        return logits if self.emit_logits else torch.sigmoid(logits)
