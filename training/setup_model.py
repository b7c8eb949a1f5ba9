"""Build the training model from a TrainConfig: architecture, label set, frozen label queries
from a text encoder (or kept from a checkpoint), and initial weights."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from ram_edge.config import ModelConfig
from ram_edge.errors import ConfigError

from ram_edge.models.queries.space import center_embeddings, text_embeddings

from .config import TrainConfig
from .model import RAMForTraining


def resolve_model_config(spec) -> ModelConfig:
    """A ModelConfig from a preset name, a JSON path or an inline dict."""
    if isinstance(spec, dict):
        return ModelConfig.from_dict(spec)
    if isinstance(spec, str) and spec.endswith(".json"):
        return ModelConfig.from_json(spec)
    from ram_edge.models.presets import load_preset

    return load_preset(str(spec))


def load_label_system(cfg: TrainConfig, init_labels=None):
    """The label system of the run: cfg.labels, else the init checkpoint's tags."""
    from .label_system import LabelSystem

    if cfg.labels:
        system = LabelSystem.load(cfg.labels)
        if init_labels is not None:
            _keep_thresholds(system, init_labels)
        return system
    if init_labels is not None:
        return LabelSystem(tags=list(init_labels.tags), synonyms=[[] for _ in init_labels.tags],
                           tags_zh=init_labels.tags_zh, thresholds=init_labels.thresholds)
    raise ConfigError("the training config needs `labels` (a label system file) or `init_from` (a checkpoint with labels)")


def _keep_thresholds(system, init_labels) -> None:
    """Tags kept from the initial checkpoint keep its (tuned) thresholds unless the label file sets one."""
    old = {t: i for i, t in enumerate(init_labels.tags)}
    thresholds = (np.full(len(system.tags), np.nan, np.float32) if system.thresholds is None
                  else np.array(system.thresholds, np.float32))
    for i, tag in enumerate(system.tags):
        if np.isnan(thresholds[i]) and tag in old:
            thresholds[i] = init_labels.thresholds[old[tag]]
    system.thresholds = thresholds


@dataclass
class LabelQuerySpace:
    """How this run turns text embeddings into label queries; recorded in the trained checkpoint."""

    text_encoder: str  # "minilm", "clip:<dir>", "learned", or "checkpoint" (no encoder: every query is kept)
    scale: float = 1.0
    centred: bool = False
    center: np.ndarray | None = None  # the mean removed before scaling; None with centred: the label set's own
    recorded_encoder: str | None = None  # what to record when text_encoder is "checkpoint": the initial one's

    def to_record(self) -> dict:
        """The `source.label_queries` entry of a checkpoint's config.json."""
        return {"text_encoder": self.recorded_encoder or self.text_encoder, "scale": self.scale,
                "center": None if self.center is None else [float(v) for v in np.asarray(self.center).ravel()]}


def resolve_query_space(cfg: TrainConfig, init_info=None) -> LabelQuerySpace:
    """The run's query space: the config's, or with `init_from` the checkpoint's recorded one (contradictions are errors)."""
    if init_info is None:
        return LabelQuerySpace(cfg.text_encoder, 1.0 if cfg.label_embed_scale is None else float(cfg.label_embed_scale),
                               bool(cfg.center_label_embed))
    from ram_edge.models.queries.space import MINILM, encoder_kind, query_space

    recorded = query_space(init_info)
    where = f"init_from {init_info.path}"
    encoder = cfg.text_encoder
    if encoder == "learned":
        # Every query trains from here on: the checkpoint's space no longer describes them.
        return LabelQuerySpace("learned", 1.0, False, None)
    if encoder == "checkpoint" and recorded.text_encoder == MINILM:
        encoder = MINILM  # the recorded encoder is in the package: new tags need nothing else
    if encoder != "checkpoint" and encoder_kind(encoder) != recorded.text_encoder:
        fix = "text_encoder: minilm" if recorded.text_encoder == MINILM else "text_encoder: 'clip:<local CLIP dir>'"
        raise ConfigError(
            f"text_encoder {encoder!r} contradicts {where}, whose label queries are {recorded.text_encoder!r} embeddings; "
            f"new tags must come from the same encoder ({fix}, or leave it at 'checkpoint')"
        )
    if cfg.label_embed_scale is not None and not math.isclose(float(cfg.label_embed_scale), recorded.scale, rel_tol=1e-6):
        raise ConfigError(
            f"label_embed_scale {cfg.label_embed_scale:g} contradicts {where}, whose queries are scaled by {recorded.scale:g}; "
            f"remove label_embed_scale from the config (the checkpoint's is used) or set it to {recorded.scale:g}"
        )
    centred = recorded.center is not None or recorded.recompute_center
    if cfg.center_label_embed is not None and bool(cfg.center_label_embed) != centred:
        raise ConfigError(
            f"center_label_embed {bool(cfg.center_label_embed)} contradicts {where}, whose queries are "
            f"{'centred' if centred else 'not centred'}; remove center_label_embed from the config or set it to {centred}"
        )
    center = recorded.center
    if center is None and recorded.recompute_center and encoder != "checkpoint":
        # Checkpoints from before the centre was recorded: training removed the mean over their own tags.
        tags = list(init_info.labels.tags)
        center = text_embeddings(encoder, tags, init_info.config.family, init_info.config.des_per_class).mean(0)
    return LabelQuerySpace(encoder, recorded.scale, centred, center, recorded.text_encoder if encoder == "checkpoint" else None)


def build_training_model(cfg: TrainConfig) -> tuple[RAMForTraining, object]:
    """(model, label system) ready to train."""
    init_model, init_info = None, None
    if cfg.init_from:
        from ram_edge.models.checkpoint import load_checkpoint

        init_model, init_info = load_checkpoint(cfg.init_from)
        base_config = init_info.config
    else:
        base_config = resolve_model_config(cfg.model)
    space = resolve_query_space(cfg, init_info)
    labels = load_label_system(cfg, init_info.labels if init_info else None)
    config = replace(base_config, num_classes=len(labels.tags))
    learned = cfg.text_encoder == "learned"
    model = RAMForTraining(config, cfg.loss, cfg.caption, learned_queries=learned)
    model.tag_names = list(labels.tags)
    des = config.des_per_class

    embed = model.label_embed.detach().clone().view(config.num_classes, des, -1)
    missing = list(range(config.num_classes))
    if init_model is not None:
        state = {k: v for k, v in init_model.state_dict().items() if k != "label_embed"}
        model.load_state_dict(state, strict=False)
        old = {t: i for i, t in enumerate(init_info.labels.tags)}
        old_embed = init_model.label_embed.detach().view(init_info.config.num_classes, des, -1)
        missing = []
        for i, tag in enumerate(labels.tags):
            if tag in old:
                embed[i] = old_embed[old[tag]]  # old tags keep their queries
            else:
                missing.append(i)
        _load_captioning(model, init_info)
        # Tied tag_encoder copies were just loaded over the tagging head; the head's own weights win,
        # as in the official loader (tagging_head.* is copied last).
        model.load_state_dict({k: v for k, v in state.items() if k.startswith("tagging_head.")}, strict=False)
    if missing:
        if learned:
            embed[missing] = torch.randn(embed[missing].shape)  # distinct unit-scale queries to start from
        elif space.text_encoder == "checkpoint":
            names = [labels.tags[i] for i in missing[:5]]
            raise ConfigError(
                f"{len(missing)} tag(s) have no label query in the checkpoint (e.g. {names}); "
                f"set text_encoder to 'clip:<local CLIP dir>' or 'minilm' to compute them"
            )
        else:
            new = text_embeddings(space.text_encoder, [labels.tags[i] for i in missing], config.family, des)
            if new.shape[-1] != config.label_embed_dim:
                raise ConfigError(
                    f"text encoder {space.text_encoder!r} gives {new.shape[-1]}-d embeddings but the model's "
                    f"label_embed_dim is {config.label_embed_dim}; set model.label_embed_dim accordingly"
                )
            if space.centred:
                # From scratch: the label set's own mean; fine-tuning: the initial checkpoint's.
                new, space.center = center_embeddings(new, space.center)
            embed[missing] = torch.from_numpy(new).view(len(missing), des, -1) * space.scale
    with torch.no_grad():
        model.label_embed.copy_(embed.view(-1, embed.shape[-1]))
    model.query_space = space
    model.label_embed_center = space.center  # caption embeddings (alignment) are centred the same way
    if cfg.init_encoder_from:
        from .init_weights import load_timm_swin

        load_timm_swin(model.visual_encoder, cfg.init_encoder_from)
    return model, labels


def _load_captioning(model: RAMForTraining, info) -> None:
    """Captioning weights kept by `ram-edge convert` / a previous run, when both sides have them."""
    if not hasattr(model, "tag_encoder") or info.captioning_path is None:
        return
    from safetensors.torch import load_file

    state = load_file(str(info.captioning_path))
    own = model.captioning_state_dict()
    mismatched = [k for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if mismatched:
        raise ConfigError(
            f"{info.captioning_path}: captioning weights do not fit the caption config "
            f"(e.g. {mismatched[0]}); make `caption` match the checkpoint (hidden size, layers, vocab)"
        )
    model.load_state_dict(state, strict=False)


def describe_model(model: RAMForTraining) -> str:
    """One line: parameters (trainable / total)."""
    total = sum(p.numel() for p in model.parameters())
    train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return json.dumps({"parameters": total, "trainable": train, "family": model.family,
                       "classes": model.config.num_classes})


