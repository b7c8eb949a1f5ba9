"""The captioning half of RAM training: the image-tag interaction encoder (`tag_encoder`) and the
image-tag-text decoder (`text_decoder`).

Both are BLIP-style "med" BERT models whose state_dict keys equal the official checkpoint's
`tag_encoder.*` / `text_decoder.*` keys. In training (official `RAM.forward`):

1. The tag string of each image (names joined by ``' | '``) is tokenized to exactly
   `max_tag_tokens` (40) tokens, the leading [CLS] is replaced by [ENC], and `tag_encoder` runs
   bidirectional self-attention over the tag tokens (padding masked) and cross-attention to all
   projected image tokens (512 wide, pooled token included).
2. The caption is tokenized (padded to the longest, truncated at 40), the leading [CLS] is replaced
   by [DEC] (bos); labels are the ids with padding and the first `prompt_length` positions set to
   -100. `text_decoder` runs causal self-attention and cross-attention to *every* tag_encoder
   output position (the official call passes no encoder mask, so padded tag positions are attended
   too), and the loss is next-token cross-entropy with label smoothing 0.1, mean over the
   labelled tokens.

Greedy generation starts from "[DEC] a picture of" and stops at [SEP] or `max_length` tokens
(prompt included, as Hugging Face's `max_length`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ram_edge.errors import ConfigError
from ram_edge.models.head import CrossAttention, Intermediate, ResidualOutput

# The med BERT builds its additive masks as (1 - mask) * -10000, not with the dtype minimum.
MASK_VALUE = -10000.0
IGNORE_INDEX = -100


@dataclass
class CaptionConfig:
    """Shape and training settings of the captioning branch (defaults: official med_config.json)."""

    hidden_size: int = 768
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    num_hidden_layers: int = 12  # tag_encoder layers
    decoder_layers: int = 12  # text_decoder layers
    vocab_size: int = 30524  # bert-base-uncased 30522 + [DEC] + [ENC]
    max_position_embeddings: int = 512
    layer_norm_eps: float = 1e-12
    image_width: int = 512  # tag_encoder cross-attention key/value width (image_proj output)
    # text_decoder cross-attention key/value width: med_config's encoder_width, which the official
    # code leaves at 768 for the decoder. It must equal hidden_size for the two to connect.
    decoder_cross_width: int = 768
    prompt: str = "a picture of "
    max_caption_tokens: int = 40
    max_tag_tokens: int = 40
    label_smoothing: float = 0.1
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    initializer_range: float = 0.02
    pad_token_id: int = 0
    # The official RAM pretrain dataset hands captions over WITHOUT the prompt, yet the loss masks
    # the first prompt_length label positions, so the first caption words are never learnt.
    # True puts the prompt in front (BLIP / Tag2Text caption data), so exactly the prompt is masked
    # and training matches how generation is primed; False reproduces the official pretraining.
    prepend_prompt: bool = True

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"caption: hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}"
            )
        for name in ("hidden_size", "intermediate_size", "vocab_size", "max_position_embeddings", "image_width",
                     "decoder_cross_width", "max_caption_tokens", "max_tag_tokens"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"caption: {name} must be positive, got {getattr(self, name)}")
        if self.num_hidden_layers < 0 or self.decoder_layers < 1:
            raise ConfigError("caption: num_hidden_layers must be >= 0 and decoder_layers >= 1")
        if max(self.max_caption_tokens, self.max_tag_tokens) > self.max_position_embeddings:
            raise ConfigError(
                f"caption: max_caption_tokens/max_tag_tokens exceed max_position_embeddings {self.max_position_embeddings}"
            )
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"caption: label_smoothing must be in [0, 1), got {self.label_smoothing}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CaptionConfig":
        """Build from a JSON object, rejecting unknown keys."""
        from ram_edge.config import config_from_dict

        return config_from_dict(cls, data, "caption")

    @classmethod
    def from_med_config(cls, med: dict[str, Any], image_width: int = 512, **overrides: Any) -> "CaptionConfig":
        """Build from an official med_config.json dictionary (as stored in the golden config.json)."""
        values = dict(
            hidden_size=med["hidden_size"],
            num_attention_heads=med["num_attention_heads"],
            intermediate_size=med["intermediate_size"],
            num_hidden_layers=med["num_hidden_layers"],
            decoder_layers=med["num_hidden_layers"],
            vocab_size=med["vocab_size"],
            max_position_embeddings=med.get("max_position_embeddings", 512),
            layer_norm_eps=med.get("layer_norm_eps", 1e-12),
            image_width=image_width,
            decoder_cross_width=med.get("encoder_width", 768),
            hidden_dropout_prob=med.get("hidden_dropout_prob", 0.1),
            attention_probs_dropout_prob=med.get("attention_probs_dropout_prob", 0.1),
            initializer_range=med.get("initializer_range", 0.02),
            pad_token_id=med.get("pad_token_id", 0),
        )
        if med.get("hidden_act", "gelu") != "gelu":
            raise ConfigError(f"caption: only hidden_act 'gelu' is supported, got {med.get('hidden_act')!r}")
        values.update(overrides)
        return cls(**values)


# --------------------------------------------------------------------------------------------
# Modules


class BertLayerWithCross(nn.Module):
    """Self-attention, cross-attention, feed-forward; each post-LN (one med BERT layer)."""

    def __init__(self, cfg: CaptionConfig, kv_width: int) -> None:
        super().__init__()
        # The blocks are the recognition decoder's (ram_edge.models.head), with the same med-BERT key names,
        # plus the self-attention mask and dropout rates a caption branch needs.
        self.attention = CrossAttention(cfg, cfg.hidden_size)
        self.crossattention = CrossAttention(cfg, kv_width)
        self.intermediate = Intermediate(cfg)
        self.output = ResidualOutput(cfg.intermediate_size, cfg)

    def forward(
        self,
        hidden: torch.Tensor,
        self_mask: torch.Tensor | None,
        encoder_hidden: torch.Tensor,
        encoder_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One layer; masks are additive (0 = attend, -10000 = ignore)."""
        x = self.attention(hidden, hidden, self_mask)
        x = self.crossattention(x, encoder_hidden, encoder_mask)
        return self.output(self.intermediate(x), x)


class TextEmbeddings(nn.Module):
    """Word + absolute position embeddings, LayerNorm, dropout (no token-type embeddings)."""

    def __init__(self, cfg: CaptionConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)
        # Persistent: the official state_dict carries it, and strict loading expects it.
        self.register_buffer("position_ids", torch.arange(cfg.max_position_embeddings).unsqueeze(0), persistent=True)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) ids -> (B, L, H)."""
        positions = self.position_ids[:, : input_ids.shape[1]]
        return self.dropout(self.LayerNorm(self.word_embeddings(input_ids) + self.position_embeddings(positions)))


class LayerStack(nn.Module):
    """Holds `layer.N` so that keys read `...encoder.layer.N...`."""

    def __init__(self, cfg: CaptionConfig, num_layers: int, kv_width: int) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayerWithCross(cfg, kv_width) for _ in range(num_layers))


class MedBert(nn.Module):
    """A med BERT body (`embeddings`, `encoder.layer.N`), bidirectional or causal, no pooler."""

    def __init__(self, cfg: CaptionConfig, num_layers: int, kv_width: int, causal: bool) -> None:
        super().__init__()
        self.causal = causal
        self.embeddings = TextEmbeddings(cfg)
        self.encoder = LayerStack(cfg, num_layers, kv_width)

    def self_attention_mask(self, attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Additive (B, 1, L or 1, L) mask from a (B, L) 1/0 padding mask, causal if a decoder."""
        keep = attention_mask.to(dtype)
        if self.causal:
            length = attention_mask.shape[1]
            lower = torch.ones(length, length, dtype=dtype, device=attention_mask.device).tril()
            keep = lower.unsqueeze(0) * keep[:, None, :]  # (B, L, L): row i sees j <= i, unpadded
        else:
            keep = keep[:, None, :]
        return (1.0 - keep[:, None]) * MASK_VALUE

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        encoder_hidden: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, L) ids attending to encoder_hidden (B, T, kv) -> last hidden state (B, L, H)."""
        hidden = self.embeddings(input_ids)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        self_mask = self.self_attention_mask(attention_mask, hidden.dtype)
        cross_mask = None
        if encoder_attention_mask is not None:
            cross_mask = (1.0 - encoder_attention_mask.to(hidden.dtype))[:, None, None, :] * MASK_VALUE
        for layer in self.encoder.layer:
            hidden = layer(hidden, self_mask, encoder_hidden, cross_mask)
        return hidden


class TagEncoder(MedBert):
    """Image-tag interaction encoder: tag tokens (bidirectional) cross-attending to image tokens."""

    def __init__(self, cfg: CaptionConfig) -> None:
        super().__init__(cfg, cfg.num_hidden_layers, cfg.image_width, causal=False)
        self.apply(lambda m: init_bert_weights(m, cfg.initializer_range))


class PredictionTransform(nn.Module):
    """dense -> GELU -> LayerNorm before the vocabulary projection (`cls.predictions.transform`)."""

    def __init__(self, cfg: CaptionConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Transform the hidden state."""
        return self.LayerNorm(F.gelu(self.dense(x)))


class LMPrediction(nn.Module):
    """Vocabulary projection whose bias is a separate parameter aliased as `decoder.bias`."""

    def __init__(self, cfg: CaptionConfig) -> None:
        super().__init__()
        self.transform = PredictionTransform(cfg)
        self.decoder = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        # Same Parameter under two names, as Hugging Face's BertLMPredictionHead.
        self.decoder.bias = self.bias

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, L, H) -> logits (B, L, V)."""
        return self.decoder(self.transform(hidden))


class LMHead(nn.Module):
    """Holds `predictions` so that keys read `cls.predictions.*`."""

    def __init__(self, cfg: CaptionConfig) -> None:
        super().__init__()
        self.predictions = LMPrediction(cfg)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, L, H) -> logits (B, L, V)."""
        return self.predictions(hidden)


class CaptionDecoder(nn.Module):
    """Image-tag-text decoder: causal med BERT (`bert`) + LM head (`cls`), output weight tied to
    the word embeddings."""

    def __init__(self, cfg: CaptionConfig) -> None:
        super().__init__()
        self.bert = MedBert(cfg, cfg.decoder_layers, cfg.decoder_cross_width, causal=True)
        self.cls = LMHead(cfg)
        self.apply(lambda m: init_bert_weights(m, cfg.initializer_range))
        self.tie_weights()

    def tie_weights(self) -> None:
        """Make the vocabulary projection use the word-embedding Parameter (re-run after replacing either)."""
        self.cls.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, encoder_hidden: torch.Tensor
    ) -> torch.Tensor:
        """Next-token logits (B, L, V); position i predicts token i + 1."""
        # No encoder mask, as the official call (encoder_attention_mask=None): every tag_encoder
        # position is attended, padded tag positions included.
        return self.cls(self.bert(input_ids, attention_mask, encoder_hidden))


class CaptioningBranch(nn.Module):
    """`tag_encoder` + `text_decoder` in one module (keys `tag_encoder.*` / `text_decoder.*`)."""

    def __init__(self, cfg: CaptionConfig) -> None:
        super().__init__()
        self.config = cfg
        self.tag_encoder = TagEncoder(cfg)
        self.text_decoder = CaptionDecoder(cfg)

    def loss(
        self, tokenizer: "CaptionTokenizer", image_embeds: torch.Tensor, tag_strings: Sequence[str], captions: Sequence[str]
    ) -> torch.Tensor:
        """Label-smoothed LM loss of the captions given tags and image tokens (see caption_loss)."""
        return caption_loss(self.tag_encoder, self.text_decoder, tokenizer, image_embeds, tag_strings, captions, self.config)

    def generate(
        self,
        tokenizer: "CaptionTokenizer",
        image_embeds: torch.Tensor,
        tag_strings: Sequence[str],
        max_length: int = 30,
        min_length: int = 0,
    ) -> list[str]:
        """Greedy captions (see generate_captions)."""
        return generate_captions(
            self.tag_encoder, self.text_decoder, tokenizer, image_embeds, tag_strings, self.config, max_length, min_length
        )


def init_bert_weights(module: nn.Module, std: float = 0.02) -> None:
    """Official med BERT init: Linear/Embedding N(0, std), biases 0, LayerNorm 1/0."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        # Like the official _init_weights, this also redraws the padding row of the embedding.
        nn.init.normal_(module.weight, mean=0.0, std=std)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


def tie_to_tagging_head(tag_encoder: TagEncoder, tagging_head: nn.Module) -> list[str]:
    """Share the tagging head's parameters with the lowest tag_encoder layers; returns the tied names.

    As the official constructor (`tie_encoder_decoder_weights(tag_encoder, tagging_head, '', ' ')`):
    for each layer i of `tagging_head.encoder.layer` (2 in RAM), tag_encoder layer i takes the
    *same Parameter objects* for crossattention.self.{query,key,value}, crossattention.output.
    {dense,LayerNorm}, intermediate.dense and output.{dense,LayerNorm} (weight and bias: 16 per
    layer, 32 for RAM). Self-attention and embeddings stay the tag encoder's own, since the tagging
    head has none. Afterwards both names appear in state_dict; `model.parameters()` yields each
    shared tensor once, so the optimizer steps it once with the gradients of both paths. Call it
    after loading or initialising the tagging head: the tag encoder's previous values are dropped.
    Names are relative to tag_encoder (e.g. 'encoder.layer.0.crossattention.self.query.weight').
    """
    head_layers = tagging_head.encoder.layer
    enc_layers = tag_encoder.encoder.layer
    if len(head_layers) > len(enc_layers):
        raise ConfigError(
            f"cannot tie: the tagging head has {len(head_layers)} layers but the tag encoder only {len(enc_layers)}"
        )
    tied: list[str] = []
    for index, head_layer in enumerate(head_layers):
        enc_layer = enc_layers[index]
        for branch in ("crossattention", "intermediate", "output"):
            for sub_name, head_mod in getattr(head_layer, branch).named_modules():
                own = list(head_mod.named_parameters(recurse=False))
                if not own:
                    continue
                path = f"{branch}.{sub_name}" if sub_name else branch
                try:
                    enc_mod = enc_layer.get_submodule(path)
                except AttributeError:
                    raise ConfigError(f"cannot tie: tag_encoder layer {index} has no module {path}") from None
                for pname, param in own:
                    mine = getattr(enc_mod, pname, None)
                    if mine is None or mine.shape != param.shape:
                        raise ConfigError(
                            f"cannot tie encoder.layer.{index}.{path}.{pname}: tagging head shape {tuple(param.shape)}, "
                            f"tag encoder shape {None if mine is None else tuple(mine.shape)}; the head and the "
                            "captioning config need the same hidden/intermediate size and cross-attention width"
                        )
                    setattr(enc_mod, pname, param)
                    tied.append(f"encoder.layer.{index}.{path}.{pname}")
    return tied


# --------------------------------------------------------------------------------------------
# Tokenizer


class CaptionTokenizer:
    """bert-base-uncased WordPiece tokenizer with [DEC] as bos and [ENC] added, as the official
    init_tokenizer (ids: [DEC] = base vocab size, [ENC] = base + 1; len = base + 2)."""

    def __init__(self, vocab_file: str | Path) -> None:
        path = Path(vocab_file)
        if path.is_dir():
            path = path / "vocab.txt"
        if not path.is_file():
            raise ConfigError(
                f"{path}: BERT vocabulary not found; pass the vocab.txt of bert-base-uncased (or a folder holding it)"
            )
        try:
            from transformers import BertTokenizer
        except ImportError as exc:
            raise ConfigError(
                f"the caption tokenizer needs transformers ({exc}); install it: pip install 'ram-edge[train]'"
            ) from None
        tok = BertTokenizer(vocab_file=str(path), do_lower_case=True)
        tok.add_special_tokens({"bos_token": "[DEC]"})
        tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
        self.tokenizer = tok
        self.vocab_file = path
        self.enc_token_id: int = tok.additional_special_tokens_ids[0]
        self.bos_token_id: int = tok.bos_token_id
        self.pad_token_id: int = tok.pad_token_id
        self.sep_token_id: int = tok.sep_token_id
        self.cls_token_id: int = tok.cls_token_id

    def __len__(self) -> int:
        """Vocabulary size including [DEC] and [ENC]."""
        return len(self.tokenizer)

    def __call__(self, texts: str | Sequence[str], **kwargs: Any) -> Any:
        """Tokenize like the Hugging Face tokenizer (same keyword arguments)."""
        if not isinstance(texts, str):
            texts = list(texts)
        return self.tokenizer(texts, **kwargs)

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = True) -> str:
        """Token ids -> text."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def prompt_length(self, prompt: str) -> int:
        """Tokens of [CLS]/[DEC] + prompt (the official `len(tokenizer(prompt).input_ids) - 1`)."""
        return len(self.tokenizer(prompt).input_ids) - 1


# --------------------------------------------------------------------------------------------
# Training and generation


def _check_inputs(
    tag_encoder: TagEncoder, text_decoder: CaptionDecoder, tokenizer: CaptionTokenizer, image_embeds: torch.Tensor,
    tag_strings: Sequence[str],
) -> None:
    if isinstance(tag_strings, str):
        raise ConfigError("tag_strings must be a list of strings, one per image, not a single string")
    if image_embeds.dim() != 3 or image_embeds.shape[0] != len(tag_strings):
        raise ConfigError(
            f"image_embeds {tuple(image_embeds.shape)} must be (B, T, width) with B = {len(tag_strings)} tag strings"
        )
    width = tag_encoder.encoder.layer[0].crossattention.self.key.in_features if len(tag_encoder.encoder.layer) else None
    if width is not None and image_embeds.shape[-1] != width:
        raise ConfigError(f"image_embeds width {image_embeds.shape[-1]} differs from the tag encoder's image_width {width}")
    for name, model in (("tag_encoder", tag_encoder.embeddings), ("text_decoder", text_decoder.bert.embeddings)):
        if len(tokenizer) > model.word_embeddings.num_embeddings:
            raise ConfigError(
                f"the tokenizer has {len(tokenizer)} tokens but {name} only {model.word_embeddings.num_embeddings} "
                "word embeddings; set CaptionConfig.vocab_size to len(tokenizer)"
            )
    hidden = tag_encoder.embeddings.word_embeddings.embedding_dim
    cross = text_decoder.bert.encoder.layer[0].crossattention.self.key.in_features
    if cross != hidden:
        raise ConfigError(
            f"text_decoder cross-attends to {cross}-wide inputs but tag_encoder outputs {hidden}; set "
            f"decoder_cross_width = hidden_size (the official med_config keeps encoder_width 768, which only fits hidden 768)"
        )


def tag_batch(
    tokenizer: CaptionTokenizer, tag_strings: Sequence[str], config: CaptionConfig, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tag strings -> (input_ids, attention_mask), (B, max_tag_tokens), first token [ENC]."""
    enc = tokenizer(list(tag_strings), padding="max_length", truncation=True, max_length=config.max_tag_tokens,
                    return_tensors="pt")
    ids = enc.input_ids.clone()
    ids[:, 0] = tokenizer.enc_token_id
    return ids.to(device), enc.attention_mask.to(device)


def caption_batch(
    tokenizer: CaptionTokenizer, captions: Sequence[str], config: CaptionConfig, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Captions -> (input_ids, attention_mask, labels): [DEC] first, labels -100 on padding and prompt."""
    if isinstance(captions, str):
        raise ConfigError("captions must be a list of strings, one per image, not a single string")
    texts = [config.prompt + c for c in captions] if config.prepend_prompt else list(captions)
    enc = tokenizer(texts, padding="longest", truncation=True, max_length=config.max_caption_tokens, return_tensors="pt")
    ids = enc.input_ids.clone()
    ids[:, 0] = tokenizer.bos_token_id
    labels = ids.masked_fill(ids == tokenizer.pad_token_id, IGNORE_INDEX)
    labels[:, : tokenizer.prompt_length(config.prompt)] = IGNORE_INDEX
    return ids.to(device), enc.attention_mask.to(device), labels.to(device)


def encode_tags(
    tag_encoder: TagEncoder, tokenizer: CaptionTokenizer, image_embeds: torch.Tensor, tag_strings: Sequence[str],
    config: CaptionConfig,
) -> torch.Tensor:
    """tag_encoder output (B, max_tag_tokens, H) for the tag strings and image tokens."""
    ids, mask = tag_batch(tokenizer, tag_strings, config, image_embeds.device)
    # Every image token is attended (the official image_atts are all ones): no encoder mask.
    return tag_encoder(ids, mask, image_embeds)


def caption_loss(
    tag_encoder: TagEncoder,
    text_decoder: CaptionDecoder,
    tokenizer: CaptionTokenizer,
    image_embeds: torch.Tensor,
    tag_strings: Sequence[str],
    captions: Sequence[str],
    config: CaptionConfig,
) -> torch.Tensor:
    """Official loss_t2t: next-token cross-entropy (label smoothing, mean over labelled tokens)."""
    _check_inputs(tag_encoder, text_decoder, tokenizer, image_embeds, tag_strings)
    if len(captions) != len(tag_strings):
        raise ConfigError(f"{len(captions)} captions for {len(tag_strings)} tag strings; give one of each per image")
    tag_hidden = encode_tags(tag_encoder, tokenizer, image_embeds, tag_strings, config)
    ids, mask, labels = caption_batch(tokenizer, captions, config, image_embeds.device)
    logits = text_decoder(ids, mask, tag_hidden)
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
        labels[:, 1:].reshape(-1),
        ignore_index=IGNORE_INDEX,
        label_smoothing=config.label_smoothing,
    )


@torch.no_grad()
def generate_captions(
    tag_encoder: TagEncoder,
    text_decoder: CaptionDecoder,
    tokenizer: CaptionTokenizer,
    image_embeds: torch.Tensor,
    tag_strings: Sequence[str],
    config: CaptionConfig,
    max_length: int = 30,
    min_length: int = 0,
) -> list[str]:
    """Greedy captions (prompt removed), one per image; `max_length` counts the prompt tokens.

    The official Tag2Text `generate` uses beam search (3 beams, min_length 10) through Hugging
    Face; this is the greedy equivalent without a key/value cache. Dropout is off during the call
    and the modules' training flags are restored afterwards.
    """
    _check_inputs(tag_encoder, text_decoder, tokenizer, image_embeds, tag_strings)
    modes = (tag_encoder.training, text_decoder.training)
    tag_encoder.eval()
    text_decoder.eval()
    try:
        tag_hidden = encode_tags(tag_encoder, tokenizer, image_embeds, tag_strings, config)
        prompt_ids = tokenizer(config.prompt).input_ids[:-1]  # drop the trailing [SEP]
        prompt_ids[0] = tokenizer.bos_token_id
        batch = image_embeds.shape[0]
        ids = torch.tensor(prompt_ids, device=image_embeds.device).repeat(batch, 1)
        done = torch.zeros(batch, dtype=torch.bool, device=image_embeds.device)
        while ids.shape[1] < max_length and not bool(done.all()):
            logits = text_decoder(ids, None, tag_hidden)[:, -1].float()
            if ids.shape[1] < min_length:
                logits[:, tokenizer.sep_token_id] = -math.inf
            nxt = logits.argmax(dim=-1)
            # Finished rows keep growing with padding, as Hugging Face's greedy search does.
            nxt = torch.where(done, torch.full_like(nxt, tokenizer.pad_token_id), nxt)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            done |= nxt == tokenizer.sep_token_id
    finally:
        tag_encoder.train(modes[0])
        text_decoder.train(modes[1])
    # Decode only the generated part: the same text as the official decode-then-drop-the-prompt
    # slice, and robust to prompts that do not decode back to themselves.
    return [tokenizer.decode(row[len(prompt_ids):]).strip() for row in ids.tolist()]
