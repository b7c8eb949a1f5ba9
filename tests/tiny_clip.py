"""Tiny random CLIP models saved in a temp folder, for tests: no download, no network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable character table (what CLIP's vocab.json is written in)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def need_transformers():
    """transformers (and torch), or skip the test with the install line."""
    pytest.importorskip("torch", reason="the torch extra is needed: pip install 'ram-edge[torch]'")
    return pytest.importorskip(
        "transformers", reason="computing tag embeddings needs transformers: pip install 'transformers>=4.40,<5'"
    )


def tiny_text_config(path):
    """Write a CLIPTokenizer (every byte a token, no merges) into `path`; return text-config kwargs."""
    transformers = need_transformers()
    chars = list(_bytes_to_unicode().values())
    vocab = {tok: i for i, tok in enumerate(chars + [c + "</w>" for c in chars])}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (path / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    tokenizer = transformers.CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"))
    tokenizer.save_pretrained(path)
    return dict(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
        max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def save_tiny_clip(path: Path, projection_dim: int, image_size: int = 32, seed: int = 0) -> Path:
    """A full CLIPModel (text + vision towers, projections) with a byte-level tokenizer and a preprocessor config."""
    transformers = need_transformers()
    import torch

    path.mkdir(parents=True, exist_ok=True)
    text = tiny_text_config(path)
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2, image_size=image_size, patch_size=8)
    config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)
    torch.manual_seed(seed)
    transformers.CLIPModel(config).eval().save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps({
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "crop_size": {"height": image_size, "width": image_size},
    }))
    return path
