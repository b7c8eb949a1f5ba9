"""Random-weight checkpoints of the shipped full-size architectures, and their multiply-accumulates per image.

The suite (`preset:NAME` models) and the GPU checks time full-size models without their trained weights: speed,
memory and numerics depend on the architecture and the tag count, not on what the weights learned. Torch is
imported when a function runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

PRESET = "ram_swin_large_384"


def build_checkpoint(workdir: Path, preset: str = PRESET) -> Path:
    """A random-weight checkpoint directory of `preset` (synthetic tag names) at workdir/ckpt, made once."""
    import torch

    from ram_edge.labels import LabelSet
    from ram_edge.models import build_model
    from ram_edge.models.checkpoint import save_checkpoint
    from ram_edge.models.presets import load_preset

    out = Path(workdir) / "ckpt"
    if out.exists():
        return out
    torch.manual_seed(0)
    config = load_preset(preset)
    model = build_model(config)
    with torch.no_grad():
        model.label_embed.normal_(0, 0.1)
    tags = [f"tag{i:04d}" for i in range(config.num_classes)]
    labels = LabelSet(tags, None, np.full(len(tags), 0.68, np.float32))
    save_checkpoint(model, labels, out, source={"kind": "random", "seed": 0, "preset": preset})
    return out


def count_macs(ckpt: Path, queries: list[int]) -> dict[str, float]:
    """Multiply-accumulates per image: encoder (+image_proj) and decoder at each query count (RAM++: with the
    per-image mixing of the description embeddings, which scales with the tags too)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ram_edge.models.checkpoint import load_checkpoint

    model, _ = load_checkpoint(ckpt)
    size = model.config.preprocess.image_size
    out: dict[str, float] = {}
    with torch.no_grad():
        x = torch.zeros(1, 3, size, size)
        with FlopCounterMode(display=False) as counter:
            embeds = model.forward_features(x)
        out["encoder"] = counter.get_total_flops() / 2
        for n in queries:
            with FlopCounterMode(display=False) as counter:
                model.forward_head(embeds, subset_queries(model, embeds, n))
            out[f"decoder_{n}"] = counter.get_total_flops() / 2
    return out


def subset_queries(model, embeds, n: int):
    """The decoder queries of the first n tags: RAM's are precomputed at export (not counted), RAM++'s are mixed
    per image from the description embeddings (counted: call this inside the timer / MAC counter)."""
    if model.family == "ram_plus":
        return model.label_queries(embeds, model.label_embed[: n * model.config.des_per_class])
    return model.label_queries()[:, :n].contiguous()
