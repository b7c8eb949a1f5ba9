"""The training model: RAM's tagging path plus (optionally) the image-tag interaction encoder and
caption decoder of the paper, the asymmetric tagging loss and L1 distillation.

`RAMForTraining` is a `RAM` subclass, so the tagging weights keep their inference names and a
trained model is saved as an ordinary checkpoint directory; `tag_encoder.*` / `text_decoder.*`
go to `captioning.safetensors`.
"""

from __future__ import annotations

from typing import Any

import torch

from ram_edge.config import ModelConfig
from ram_edge.errors import ConfigError
from ram_edge.models.ram import RAM

from .config import LossConfig
from .losses import AsymmetricLoss, distillation_loss


class RAMForTraining(RAM):
    """RAM with training losses; label queries (text embeddings) stay frozen, as in the paper."""

    def __init__(self, config: ModelConfig, loss: LossConfig, caption: dict[str, Any] | None = None, learned_queries: bool = False) -> None:
        super().__init__(config)
        self.loss_cfg = loss
        if loss.distillation not in ("off", "features") and not loss.distillation.startswith("clip:"):
            raise ConfigError(
                f"loss.distillation {loss.distillation!r} is not supported; use 'clip:<local CLIP dir>' (a frozen CLIP "
                f"image tower), 'features' (teacher embeddings stored with each sample as 'teacher') or 'off'"
            )
        self.label_embed.requires_grad_(learned_queries)
        self.asl = AsymmetricLoss(loss.gamma_neg, loss.gamma_pos, loss.clip)
        self.alignment_asl = AsymmetricLoss(loss.alignment_gamma_neg, 0.0, loss.clip)
        self.caption_cfg = None
        self.tokenizer = None
        if loss.captioning:
            self._build_captioning(caption or {})

    def _build_captioning(self, caption: dict[str, Any]) -> None:
        from .captioning import CaptionConfig, CaptionDecoder, CaptionTokenizer, TagEncoder

        options = {k: v for k, v in caption.items() if k not in ("vocab", "tie_tagging_head")}
        if not caption.get("vocab"):
            raise ConfigError("loss.captioning needs caption.vocab: a BERT WordPiece vocab.txt")
        self.tokenizer = CaptionTokenizer(caption["vocab"])
        options.setdefault("vocab_size", len(self.tokenizer))
        options.setdefault("image_width", self.config.embed_dim)
        self.caption_cfg = CaptionConfig(**options)
        self.tag_encoder = TagEncoder(self.caption_cfg)
        self.text_decoder = CaptionDecoder(self.caption_cfg)
        if caption.get("tie_tagging_head", True):
            from .captioning import tie_to_tagging_head

            # As the official model: the interaction encoder's first layers share the tagging head's weights.
            tie_to_tagging_head(self.tag_encoder, self.tagging_head)

    def inference_state_dict(self) -> dict[str, torch.Tensor]:
        """The tagging-path weights under their inference names (what `RAM` loads)."""
        prefixes = ("tag_encoder.", "text_decoder.")
        return {k: v for k, v in self.state_dict().items() if not k.startswith(prefixes)}

    def captioning_state_dict(self) -> dict[str, torch.Tensor]:
        """Captioning-only weights (empty without captioning)."""
        prefixes = ("tag_encoder.", "text_decoder.")
        return {k: v for k, v in self.state_dict().items() if k.startswith(prefixes)}

    def sample_classes(self, targets: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor | None:
        """Class indices for this batch: every positive plus random negatives (None: all classes)."""
        negatives = self.loss_cfg.sampled_negatives
        num = targets.shape[1]
        if not negatives or negatives >= num:
            return None
        positive = targets.amax(0) > 0
        pos_idx = positive.nonzero().flatten()
        neg_pool = (~positive).nonzero().flatten()
        take = min(negatives, neg_pool.numel())
        perm = torch.randperm(neg_pool.numel(), generator=generator, device="cpu")[:take].to(neg_pool.device)
        return torch.sort(torch.cat([pos_idx, neg_pool[perm]])).values

    def forward_train(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Losses for one batch: {'loss', 'tagging', 'captioning', 'distillation'} (absent terms omitted)."""
        images, targets = batch["image"], batch["target"]
        embeds = self.forward_features(images)
        classes = self.sample_classes(targets, generator)
        out: dict[str, torch.Tensor] = {}
        if self.family == "ram_plus":
            queries = self.label_queries(embeds)
            if classes is not None:
                queries = queries[:, classes]
        else:
            label_embed = self.label_embed if classes is None else self.label_embed[classes]
            queries = self.label_queries(label_embed=label_embed)
        logits = self.forward_head(embeds, queries)
        tag_targets = targets if classes is None else targets[:, classes]
        total = torch.zeros((), device=images.device)
        if self.loss_cfg.tagging:
            # Normalised per image so that the learning rate does not depend on the batch size.
            out["tagging"] = self.asl(logits, tag_targets) / images.shape[0]
            if self.loss_cfg.pooled_tagging_weight:
                out["pooled_tagging"] = self.pooled_tagging_loss(embeds, queries, tag_targets)
                total = total + self.loss_cfg.pooled_tagging_weight * out["pooled_tagging"]
        if self.loss_cfg.captioning:
            from .captioning import caption_loss

            tag_strings = [self._tag_string(row) for row in targets]
            out["captioning"] = caption_loss(self.tag_encoder, self.text_decoder, self.tokenizer, embeds, tag_strings,
                                             batch["caption"], self.caption_cfg)
            total = total + out["captioning"]
        if "tagging" in out:
            weight = self.loss_cfg.tagging_weight
            if self.loss_cfg.balance_tagging_to_captioning and "captioning" in out:
                # Official pretraining: loss_t2t + loss_tag / (loss_tag / loss_t2t).detach()
                weight = weight * (out["captioning"] / out["tagging"].clamp(min=1e-8)).detach()
            total = total + weight * out["tagging"]
        if self.loss_cfg.distillation != "off":
            if batch.get("teacher") is None:
                raise ConfigError(
                    f"loss.distillation is {self.loss_cfg.distillation!r} but a batch has samples without 'teacher' embeddings"
                )
            teacher = batch["teacher"]
            if teacher.shape[-1] != embeds.shape[-1]:
                raise ConfigError(
                    f"teacher embeddings are {teacher.shape[-1]}-d but the model's pooled image token is {embeds.shape[-1]}-d; "
                    f"set model.embed_dim to the teacher's width (512 for CLIP ViT-B/16)"
                )
            out["distillation"] = distillation_loss(embeds[:, 0, :], teacher)
            total = total + self.loss_cfg.distillation_weight * out["distillation"]
        if self.loss_cfg.alignment:
            out["alignment"] = self.alignment_loss(embeds, batch.get("text_embed"))
            total = total + self.loss_cfg.alignment_weight * out["alignment"]
        out["loss"] = total
        return out

    def pooled_tagging_logits(self, embeds: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """(B, K) scale * cos(pooled image token, label query) + bias: the auxiliary tagging scores."""
        if embeds.shape[-1] != queries.shape[-1]:
            raise ConfigError(
                f"loss.pooled_tagging_weight needs model.embed_dim ({embeds.shape[-1]}) equal to head.hidden_size "
                f"({queries.shape[-1]}): the pooled token is compared with the label queries"
            )
        pooled = torch.nn.functional.normalize(embeds[:, 0, :], dim=-1)
        q = torch.nn.functional.normalize(queries, dim=-1)
        sim = torch.einsum("bd,bkd->bk", pooled, q.expand(pooled.shape[0], -1, -1))
        return self.loss_cfg.pooled_tagging_scale * sim + self.loss_cfg.pooled_tagging_bias

    def pooled_tagging_loss(self, embeds: torch.Tensor, queries: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Asymmetric loss of the auxiliary pooled-token scores, per image."""
        return self.asl(self.pooled_tagging_logits(embeds, queries), targets) / embeds.shape[0]

    def alignment_loss(self, embeds: torch.Tensor, text_embed: torch.Tensor | None) -> torch.Tensor:
        """RAM++ image-text alignment: caption queries of the whole batch against every image, own caption positive."""
        if text_embed is None:
            raise ConfigError("loss.alignment is on but the batch has no caption embeddings ('text_embed')")
        if text_embed.shape[-1] != self.config.label_embed_dim:
            raise ConfigError(
                f"caption embeddings are {text_embed.shape[-1]}-d but label queries are {self.config.label_embed_dim}-d; "
                f"use the text encoder that made the label queries"
            )
        batch = embeds.shape[0]
        queries = torch.relu(self.wordvec_proj(text_embed.to(embeds.dtype))).unsqueeze(0).expand(batch, -1, -1)
        logits = self.forward_head(embeds, queries)  # (images, captions)
        targets = torch.eye(batch, device=logits.device, dtype=logits.dtype)
        return self.alignment_asl(logits, targets) / batch

    def _tag_string(self, target_row: torch.Tensor) -> str:
        """The tags of one image as the official ' | '-joined string fed to the tag encoder."""
        names = self.tag_names or []
        ids = target_row.nonzero().flatten().tolist()
        return " | ".join(names[i] for i in ids if i < len(names))

    tag_names: list[str] | None = None
    label_embed_center = None  # the mean removed from text-encoder queries (center_label_embed), if any
    query_space = None  # setup_model.LabelQuerySpace: encoder, scale and centre of the label queries

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Probabilities (B, C) over all classes."""
        return torch.sigmoid(self(images))

    @torch.no_grad()
    def caption(self, images: torch.Tensor, tag_strings: list[str], max_length: int = 30) -> list[str]:
        """Greedy captions guided by tags (needs captioning)."""
        from .captioning import generate_captions

        embeds = self.forward_features(images)
        return generate_captions(self.tag_encoder, self.text_decoder, self.tokenizer, embeds, tag_strings, self.caption_cfg, max_length)


class TrainForward(torch.nn.Module):
    """Makes DDP call `forward_train`: DDP synchronises gradients only through `forward`."""

    def __init__(self, model: RAMForTraining) -> None:
        super().__init__()
        self.inner = model

    def forward(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Delegate to forward_train."""
        return self.inner.forward_train(batch, generator)

