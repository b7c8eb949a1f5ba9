"""Label queries for new tags in the space a checkpoint was trained in: which text encoder made its
queries, how they were scaled, and which mean was removed (`center_label_embed`).

Official checkpoints use CLIP ViT-B/16 prompt-ensemble embeddings as they are. Models trained by
ram-edge record their query space in config.json (`source.label_queries`); older trained
checkpoints are read from the training config kept beside it (`source.config`), the centre then
being recomputed as training did from scratch: the mean of the checkpoint's own tags' embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ram_edge.checkpoint_dir import CheckpointInfo
from ram_edge.errors import ConfigError, ExportError

MINILM = "minilm"


@dataclass
class QuerySpace:
    """How text embeddings became this checkpoint's label queries."""

    text_encoder: str  # "clip" (official / clip:<dir>) or "minilm"
    scale: float = 1.0
    center: np.ndarray | None = None
    recompute_center: bool = False  # centred, but the mean was not recorded


def query_space(info: CheckpointInfo) -> QuerySpace:
    """The query space of a checkpoint directory (official ones: plain CLIP)."""
    source = info.source or {}
    recorded = source.get("label_queries")
    if isinstance(recorded, dict):
        center = recorded.get("center")
        return QuerySpace(encoder_kind(str(recorded.get("text_encoder", "clip"))), float(recorded.get("scale", 1.0)),
                          None if center is None else np.asarray(center, np.float32))
    train = source.get("config") if source.get("kind") == "trained" else None
    if isinstance(train, dict):
        centred = bool(train.get("center_label_embed") or False)
        scale = train.get("label_embed_scale")
        return QuerySpace(encoder_kind(str(train.get("text_encoder", "clip"))), float(1.0 if scale is None else scale),
                          recompute_center=centred)
    return QuerySpace("clip")


def encoder_kind(text_encoder: str) -> str:
    """The family of a text_encoder setting: 'clip', 'minilm', or the setting itself ('learned')."""
    # "checkpoint" keeps the initial checkpoint's queries: official (CLIP) ones, for the fine-tuning ram-edge documents.
    if text_encoder == MINILM:
        return MINILM
    return "clip" if text_encoder.startswith("clip") or text_encoder == "checkpoint" else text_encoder


def minilm_vocab_embeddings(info: CheckpointInfo, names: Sequence[str]) -> np.ndarray:
    """RAM label_embed rows for `names` with all-MiniLM-L6-v2, in the checkpoint's query space."""
    space = query_space(info)
    if space.text_encoder != MINILM:
        raise ExportError(
            f"{info.path}'s label queries come from a {space.text_encoder!r} text encoder, not MiniLM; "
            f"pass --text-encoder <local CLIP text model directory>"
        )
    if info.config.family != "ram":
        raise ExportError(f"{info.path} is a {info.config.family} model; MiniLM vocabularies are for RAM models")
    from .minilm import MiniLMEncoder, prompt_ensemble

    encoder = MiniLMEncoder()
    embed = prompt_ensemble(encoder, list(names))
    center = space.center
    if center is None and space.recompute_center:
        _, center = center_embeddings(prompt_ensemble(encoder, list(info.labels.tags)))
    if center is not None:
        embed, _ = center_embeddings(embed, center)
    return (embed * space.scale).astype(np.float32)


def check_clip_space(info: CheckpointInfo) -> None:
    """Refuse a CLIP vocabulary for a checkpoint whose queries came from another encoder or were rescaled."""
    space = query_space(info)
    if space.text_encoder != "clip" or space.scale != 1.0 or space.center is not None or space.recompute_center:
        hint = "pass --text-encoder minilm" if space.text_encoder == MINILM else "use the text encoder it was trained with"
        raise ExportError(
            f"{info.path}'s label queries are {space.text_encoder!r} embeddings (scale {space.scale:g}"
            f"{', centred' if space.center is not None or space.recompute_center else ''}); plain CLIP embeddings "
            f"would not match them: {hint}"
        )


def text_embeddings(kind: str, names: list[str], family: str, des_per_class: int) -> np.ndarray:
    """Label embeddings (rows per class = des_per_class) from the configured text encoder."""
    if kind.startswith("clip:"):
        from .vocab import ClipTextEncoder, tag_embeddings

        embed = tag_embeddings(ClipTextEncoder(kind[len("clip:"):]), names)
    elif kind == "minilm":
        from .minilm import MiniLMEncoder, prompt_ensemble

        embed = prompt_ensemble(MiniLMEncoder(), names)
    else:
        raise ConfigError(f"text_encoder {kind!r} cannot embed tags; use 'clip:<local dir>' or 'minilm'")
    embed = np.asarray(embed, np.float32)
    # RAM++ keeps des_per_class rows per class; a prompt ensemble repeats, which the per-image mixing returns unchanged.
    return np.repeat(embed, des_per_class, axis=0) if family == "ram_plus" else embed


def center_embeddings(embed: np.ndarray, mean: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(unit rows of embed - mean, mean); the mean defaults to the rows' own mean."""
    mean = embed.mean(0) if mean is None else mean
    centred = embed - mean
    return centred / np.linalg.norm(centred, axis=-1, keepdims=True), mean
