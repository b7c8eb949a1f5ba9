"""Swin transformer image encoder, numerically identical to the one inside official RAM / RAM++.

Reads top to bottom: window helpers -> relative position index -> attention -> block ->
patch merging -> stage -> encoder. Derived buffers (relative position index, shift mask) are
rebuilt from the config and not stored in checkpoints (`persistent=False`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import SwinConfig


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * nW, window, window, C), windows row-major per image."""
    _, height, width, channels = x.shape
    x = x.view(-1, height // window, window, width // window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, window, window, channels)


def window_reverse(windows: torch.Tensor, window: int, height: int, width: int) -> torch.Tensor:
    """Inverse of `window_partition`: (B * nW, window, window, C) -> (B, H, W, C)."""
    channels = windows.shape[-1]
    x = windows.view(-1, height // window, width // window, window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, height, width, channels)


def relative_position_index(window: int) -> torch.Tensor:
    """(w*w, w*w) index into the (2w-1)^2-row bias table for every token pair of a window."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij"))
    coords = coords.flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
    rel[:, :, 0] += window - 1
    rel[:, :, 1] += window - 1
    rel[:, :, 0] *= 2 * window - 1
    return rel.sum(-1)


def shift_attention_mask(height: int, width: int, window: int, shift: int) -> torch.Tensor:
    """(nW, w*w, w*w) mask: 0 inside a region, -100 across the regions a cyclic shift joins."""
    labels = torch.zeros((1, height, width, 1))
    cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    region = 0
    for rows in cuts:
        for cols in cuts:
            labels[:, rows, cols, :] = region
            region += 1
    windows = window_partition(labels, window).view(-1, window * window)
    mask = windows.unsqueeze(1) - windows.unsqueeze(2)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside a window with a learned relative position bias."""

    def __init__(self, dim: int, window: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.dim, self.window, self.num_heads = dim, window, num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=False)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B * nW, N, C); mask: (nW, N, N) or None."""
        _, tokens, channels = x.shape
        qkv = self.qkv(x).reshape(-1, tokens, 3, self.num_heads, channels // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        q = q * self.scale  # the official order: scale q before the product
        attn = q @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(tokens, tokens, -1).permute(2, 0, 1).contiguous()
        attn = attn + bias.unsqueeze(0)
        if mask is not None:
            num_windows = mask.shape[0]
            attn = attn.view(-1, num_windows, self.num_heads, tokens, tokens) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, tokens, tokens)
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(-1, tokens, channels)
        return self.proj(x)


class Mlp(nn.Module):
    """Linear -> exact GELU -> Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the MLP."""
        return self.fc2(F.gelu(self.fc1(x)))


class SwinBlock(nn.Module):
    """Pre-norm (shifted) window attention block followed by an MLP."""

    def __init__(self, dim: int, resolution: int, num_heads: int, window: int, shift: int, cfg: SwinConfig) -> None:
        super().__init__()
        if resolution <= window:  # the stage fits in one window: no shift, window = stage
            window, shift = resolution, 0
        self.dim, self.resolution, self.window, self.shift = dim, resolution, window, shift
        self.norm1 = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)
        self.attn = WindowAttention(dim, window, num_heads, cfg.qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio))
        mask = shift_attention_mask(resolution, resolution, window, shift) if shift else None
        self.register_buffer("attn_mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H*W, C)."""
        res, window, channels = self.resolution, self.window, self.dim
        shortcut = x
        x = self.norm1(x).view(-1, res, res, channels)
        if self.shift:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        windows = window_partition(x, window).view(-1, window * window, channels)
        windows = self.attn(windows, mask=self.attn_mask).view(-1, window, window, channels)
        x = window_reverse(windows, window, res, res)
        if self.shift:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
        x = shortcut + x.reshape(-1, res * res, channels)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """2x2 neighbour concat -> LayerNorm(4C) -> Linear(4C -> 2C, no bias)."""

    def __init__(self, dim: int, resolution: int, eps: float) -> None:
        super().__init__()
        self.resolution = resolution
        self.norm = nn.LayerNorm(4 * dim, eps=eps)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H*W, C) -> (B, H*W/4, 2C)."""
        res = self.resolution
        x = x.view(-1, res, res, x.shape[-1])
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        x = x.view(-1, (res // 2) * (res // 2), x.shape[-1])
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    """A stack of blocks alternating unshifted / shifted windows, then optional patch merging."""

    def __init__(self, stage: int, resolution: int, cfg: SwinConfig, last: bool) -> None:
        super().__init__()
        dim = cfg.embed_dim * 2**stage
        heads = cfg.num_heads[stage]
        self.blocks = nn.ModuleList(
            SwinBlock(dim, resolution, heads, cfg.window_size, 0 if i % 2 == 0 else cfg.window_size // 2, cfg)
            for i in range(cfg.depths[stage])
        )
        self.downsample = None if last else PatchMerging(dim, resolution, cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the blocks, then merge patches."""
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class ConvStem(nn.Sequential):
    """3x3 stride-2 convolutions (BatchNorm-free: GELU between) down to the patch stride."""

    def __init__(self, cfg: SwinConfig) -> None:
        layers: list[nn.Module] = []
        width, channels = cfg.embed_dim // 2, cfg.in_chans
        steps = cfg.patch_size.bit_length() - 1
        for i in range(steps):
            out = cfg.embed_dim if i == steps - 1 else width
            layers.append(nn.Conv2d(channels, out, kernel_size=3, stride=2, padding=1))
            if i < steps - 1:
                layers.append(nn.GELU())
            channels = out
        super().__init__(*layers)


class ConvBNStem(nn.Sequential):
    """A ResNet-style stem: 3x3 conv + BatchNorm + ReLU layers down to the patch stride.

    Widths start at 32 (one extra stride-1 layer there) and double with each stride-2 layer up to
    embed_dim, so that a long stem (patch 16) stays cheap at full resolution.
    """

    def __init__(self, cfg: SwinConfig) -> None:
        layers: list[nn.Module] = []
        steps = cfg.patch_size.bit_length() - 1
        width = min(32, cfg.embed_dim)
        plan = [(2, width), (1, width)]
        for _ in range(steps - 1):
            width = min(width * 2, cfg.embed_dim)
            plan.append((2, width))
        plan[-1] = (plan[-1][0], cfg.embed_dim)
        channels = cfg.in_chans
        for i, (stride, out) in enumerate(plan):
            last = i == len(plan) - 1
            # The last conv feeds the LayerNorm of PatchEmbed directly, as the patch projection does.
            layers.append(nn.Conv2d(channels, out, kernel_size=3, stride=stride, padding=1, bias=last))
            if not last:
                layers += [nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            channels = out
        super().__init__(*layers)


STEM_BUILDERS = {
    "patch": lambda cfg: nn.Conv2d(cfg.in_chans, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.patch_size),
    "conv": ConvStem,
    "conv_bn": ConvBNStem,
}


class PatchEmbed(nn.Module):
    """Patch projection (one conv, or a conv stem) followed by LayerNorm."""

    def __init__(self, cfg: SwinConfig) -> None:
        super().__init__()
        self.proj = STEM_BUILDERS[cfg.stem](cfg)
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, (S/p)^2, C), tokens row-major."""
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class SwinEncoder(nn.Module):
    """Swin encoder returning the mean-pooled token followed by the last stage's tokens."""

    def __init__(self, cfg: SwinConfig) -> None:
        super().__init__()
        self.config = cfg
        self.patch_embed = PatchEmbed(cfg)
        resolution = cfg.image_size // cfg.patch_size
        stages = []
        for stage in range(len(cfg.depths)):
            last = stage == len(cfg.depths) - 1
            stages.append(SwinStage(stage, resolution, cfg, last))
            if not last:
                resolution //= 2
        self.layers = nn.ModuleList(stages)
        self.norm = nn.LayerNorm(cfg.num_features, eps=cfg.layer_norm_eps)
        self.avgpool = nn.AdaptiveAvgPool1d(1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, 1 + L, num_features)."""
        x = self.patch_embed(images)
        for layer in self.layers:
            x = layer(x)
        x = self.norm(x)
        pooled = self.avgpool(x.transpose(1, 2)).transpose(1, 2)
        return torch.cat([pooled, x], dim=1)
