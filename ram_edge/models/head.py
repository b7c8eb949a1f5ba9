"""The recognition decoder: BERT-style layers with cross-attention only (classes never attend
to each other). Attribute names follow the official `tagging_head.encoder.layer.N....` keys.

The attention, output and feed-forward blocks are also the building blocks of the training-time caption
branch (`ram_edge.training.captioning`: its tag encoder and text decoder are med-BERT layers with the same key
names); that is why they take an optional additive mask and read dropout rates from the config when it has them
(a HeadConfig has none: inference never drops out, and the exported graphs hold no dropout nodes)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import HeadConfig


def _dropout(cfg: Any, name: str) -> nn.Module:
    """Dropout at the config's rate, or nothing (an inference head has no rates)."""
    rate = float(getattr(cfg, name, 0.0) or 0.0)
    return nn.Dropout(rate) if rate > 0 else nn.Identity()


class CrossAttentionCore(nn.Module):
    """Multi-head attention from queries (label queries, or text tokens) to a context (`*.self.*` keys)."""

    def __init__(self, cfg: HeadConfig | Any, kv_width: int) -> None:
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(kv_width, cfg.hidden_size)
        self.value = nn.Linear(kv_width, cfg.hidden_size)
        self.dropout = _dropout(cfg, "attention_probs_dropout_prob")

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.num_heads, self.head_dim).permute(0, 2, 1, 3)

    def forward(self, queries: torch.Tensor, image_embeds: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """queries (B or 1, C, H), image_embeds (B, T, E) -> (B, C, H); mask is additive, broadcastable to (B, h, C, T)."""
        q = self._split(self.query(queries))
        k = self._split(self.key(image_embeds))
        v = self._split(self.value(image_embeds))
        # Official order: divide by sqrt(head_dim) after the product, then add the mask. The tagging head's
        # all-zero encoder mask of the official code adds nothing and is left out.
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        if mask is not None:
            scores = scores + mask
        context = torch.matmul(self.dropout(scores.softmax(dim=-1)), v).permute(0, 2, 1, 3).contiguous()
        return context.view(context.shape[0], context.shape[1], -1)


class ResidualOutput(nn.Module):
    """dense -> (dropout) -> LayerNorm(that + residual): BERT's post-LN output block."""

    def __init__(self, in_width: int, cfg: HeadConfig | Any) -> None:
        super().__init__()
        self.dense = nn.Linear(in_width, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = _dropout(cfg, "hidden_dropout_prob")

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """Project and add the residual."""
        return self.LayerNorm(self.dropout(self.dense(hidden)) + residual)


class CrossAttention(nn.Module):
    """Attention + output block (`crossattention.self` / `crossattention.output`; `attention.*` in med BERT)."""

    def __init__(self, cfg: HeadConfig | Any, kv_width: int) -> None:
        super().__init__()
        self.self = CrossAttentionCore(cfg, kv_width)
        self.output = ResidualOutput(cfg.hidden_size, cfg)

    def forward(self, queries: torch.Tensor, image_embeds: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attend, then residual + LayerNorm."""
        return self.output(self.self(queries, image_embeds, mask), queries)


class Intermediate(nn.Module):
    """Linear -> exact erf GELU."""

    def __init__(self, cfg: HeadConfig | Any) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Expand and activate."""
        return F.gelu(self.dense(x))


class DecoderLayer(nn.Module):
    """Cross-attention then feed-forward, both post-LN."""

    def __init__(self, cfg: HeadConfig, kv_width: int) -> None:
        super().__init__()
        self.crossattention = CrossAttention(cfg, kv_width)
        self.intermediate = Intermediate(cfg)
        self.output = ResidualOutput(cfg.intermediate_size, cfg)

    def forward(self, queries: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        """One decoder layer."""
        x = self.crossattention(queries, image_embeds)
        return self.output(self.intermediate(x), x)


class LayerStack(nn.Module):
    """Holds `layer.N` so that keys read `tagging_head.encoder.layer.N...`."""

    def __init__(self, cfg: HeadConfig, kv_width: int) -> None:
        super().__init__()
        self.layer = nn.ModuleList(DecoderLayer(cfg, kv_width) for _ in range(cfg.num_hidden_layers))


class TaggingHead(nn.Module):
    """The recognition decoder: label queries attend to image tokens, layer after layer."""

    def __init__(self, cfg: HeadConfig, kv_width: int) -> None:
        super().__init__()
        self.encoder = LayerStack(cfg, kv_width)

    def forward(self, queries: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        """queries (B or 1, C, H), image_embeds (B, T, E) -> (B, C, H)."""
        x = queries
        for layer in self.encoder.layer:
            x = layer(x, image_embeds)
        return x
