"""Convert an official RAM / RAM++ `.pth` checkpoint into a ram-edge checkpoint directory.

The architecture is inferred from tensor shapes; only what shapes cannot tell (decoder heads,
image size when the Swin buffers are absent) comes from arguments with the official defaults.
Every key is accounted for: tagging keys load strictly, captioning-only keys are kept for
training, buffers the model rebuilds are checked or dropped, anything else is an error.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch

from ..config import HeadConfig, ModelConfig, PreprocessConfig, SwinConfig
from ..errors import CheckpointError, ConfigError, LabelError
from ..fileio import refuse_existing, sha256_file
from ..labels import LabelSet
from .checkpoint import save_checkpoint
from .ram import build_model

CAPTIONING_PREFIXES = ("tag_encoder.", "text_decoder.")
# Rebuilt from the config (the official loader deletes them too).
DERIVED_BUFFER_SUFFIXES = ("relative_position_index", "attn_mask")
# Present in some released files, unused by the tagging model and by training.
IGNORED_KEYS = ("logit_scale",)
OFFICIAL_HEAD_HEADS = 4
OFFICIAL_IMAGE_SIZE = 384
SENTINEL_KEY = "visual_encoder.patch_embed.proj.weight"


@dataclass
class ConversionReport:
    """What `convert_official` did, for the CLI to print."""

    out_dir: Path
    config: ModelConfig
    tagging_keys: int
    captioning_keys: int
    dropped_keys: list[str]


def read_official_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read an official checkpoint safely (`weights_only=True`) and return its model state dict."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: file is empty; download the checkpoint again")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated or foreign files
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise CheckpointError(
                f"{path}: refused to load: the file contains Python objects other than tensors "
                f"(only plain tensor checkpoints are accepted; {text[:200]})"
            ) from None
        raise CheckpointError(
            f"{path}: cannot read as a PyTorch checkpoint; it is truncated, corrupt or not a .pth file ({text[:200]})"
        ) from None
    state = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or SENTINEL_KEY not in state:
        raise CheckpointError(
            f"{path}: not a RAM/RAM++ checkpoint (no '{SENTINEL_KEY}' in the file's 'model' state dict)"
        )
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entry {bad[0]!r} is not a tensor; not a RAM/RAM++ checkpoint")
    # Legacy name of the tagging head in early releases.
    return {k.replace("vision_multi", "tagging_head"): v for k, v in state.items()}


def _count_indexed(state: Mapping[str, torch.Tensor], pattern: str) -> int:
    regex = re.compile(pattern)
    found = {int(m.group(1)) for k in state if (m := regex.match(k))}
    if found and found != set(range(len(found))):
        raise CheckpointError(f"checkpoint keys matching {pattern!r} are not numbered 0..{len(found) - 1}: {sorted(found)}")
    return len(found)


def _require(state: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state:
        raise CheckpointError(f"checkpoint is missing the tagging key {key!r}; not a complete RAM/RAM++ checkpoint")
    return state[key]


def infer_config(
    state: Mapping[str, torch.Tensor],
    *,
    num_tags: int | None,
    family: str = "auto",
    image_size: int | None = None,
    head_heads: int = OFFICIAL_HEAD_HEADS,
) -> ModelConfig:
    """Infer a ModelConfig from tensor shapes (and the tag count)."""
    patch = _require(state, SENTINEL_KEY)
    embed_dim, in_chans, patch_size = patch.shape[0], patch.shape[1], patch.shape[2]
    stages = _count_indexed(state, r"visual_encoder\.layers\.(\d+)\.blocks\.0\.norm1\.weight$")
    if stages == 0:
        raise CheckpointError("checkpoint has no Swin stages (visual_encoder.layers.N.blocks.*)")
    depths, heads = [], []
    for s in range(stages):
        depths.append(_count_indexed(state, rf"visual_encoder\.layers\.{s}\.blocks\.(\d+)\.norm1\.weight$"))
        heads.append(_require(state, f"visual_encoder.layers.{s}.blocks.0.attn.relative_position_bias_table").shape[1])
    table_rows = _require(state, "visual_encoder.layers.0.blocks.0.attn.relative_position_bias_table").shape[0]
    window = (math.isqrt(table_rows) + 1) // 2
    if (2 * window - 1) ** 2 != table_rows:
        raise CheckpointError(f"relative_position_bias_table has {table_rows} rows, not (2w-1)^2 for any window w")
    mlp_ratio = _require(state, "visual_encoder.layers.0.blocks.0.mlp.fc1.weight").shape[0] / embed_dim

    mask = state.get("visual_encoder.layers.0.blocks.1.attn_mask")
    inferred_size = None
    if mask is not None:
        per_side = math.isqrt(mask.shape[0])
        inferred_size = per_side * window * patch_size
    if image_size is None:
        image_size = inferred_size or OFFICIAL_IMAGE_SIZE
    elif inferred_size is not None and inferred_size != image_size:
        raise CheckpointError(
            f"--image-size {image_size} contradicts the checkpoint's shift masks, which were built for {inferred_size}"
        )

    label_embed = _require(state, "label_embed")
    rows, label_dim = label_embed.shape
    auto_family = family == "auto"
    if auto_family:
        if "reweight_scale" in state:
            family = "ram_plus"
        elif num_tags is not None and rows != num_tags and rows % num_tags == 0:
            family = "ram_plus"
        else:
            family = "ram"
    if family == "ram_plus":
        classes = num_tags if num_tags is not None else rows // 51
        if rows % classes:
            raise LabelError(
                f"tag list has {classes} tags but the RAM++ checkpoint has {rows} description embeddings, "
                f"not a multiple of {classes}; pass the tag list the model was trained with"
            )
        des = rows // classes
        if des != 51 and auto_family:
            raise LabelError(
                f"tag list has {classes} tags, which would mean {des} descriptions per tag in this RAM++ checkpoint "
                f"({rows} rows; the official model has 51); pass the tag list the model was trained with, "
                f"or --family ram_plus to accept it"
            )
    else:
        classes, des = rows, 1
        if num_tags is not None and num_tags != rows:
            raise LabelError(
                f"tag list has {num_tags} tags but the checkpoint has {rows} classes (label_embed rows); "
                f"pass the tag list the model was trained with"
            )

    hidden = _require(state, "wordvec_proj.weight").shape[0]
    layers = _count_indexed(state, r"tagging_head\.encoder\.layer\.(\d+)\.crossattention\.self\.query\.weight$")
    intermediate = _require(state, "tagging_head.encoder.layer.0.intermediate.dense.weight").shape[0]
    proj = _require(state, "image_proj.weight")
    try:
        swin = SwinConfig(
            image_size=image_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
            depths=tuple(depths), num_heads=tuple(heads), window_size=window, mlp_ratio=mlp_ratio,
        )
        head = HeadConfig(hidden_size=hidden, num_attention_heads=head_heads, intermediate_size=intermediate,
                          num_hidden_layers=layers)
        return ModelConfig(
            family=family, swin=swin, head=head, num_classes=classes, embed_dim=proj.shape[0],
            label_embed_dim=label_dim, des_per_class=des, preprocess=PreprocessConfig(image_size=image_size),
        )
    except ConfigError as exc:
        raise CheckpointError(f"cannot build a model from this checkpoint: {exc}") from None


def split_state(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], derived: Mapping[str, torch.Tensor]):
    """Account for every key: (tagging, captioning, dropped); raise on missing or unexpected keys."""
    tagging, captioning, dropped = {}, {}, []
    for key, value in state.items():
        if key in expected:
            if tuple(value.shape) != tuple(expected[key].shape):
                raise CheckpointError(
                    f"key {key!r} has shape {tuple(value.shape)} but the inferred architecture needs {tuple(expected[key].shape)}"
                )
            tagging[key] = value
        elif key.startswith(CAPTIONING_PREFIXES):
            captioning[key] = value
        elif key.endswith(DERIVED_BUFFER_SUFFIXES):
            rebuilt = derived.get(key)
            if rebuilt is None or tuple(rebuilt.shape) != tuple(value.shape):
                raise CheckpointError(f"unexpected buffer {key!r} {tuple(value.shape)} for the inferred architecture")
            dropped.append(key)
        elif key in IGNORED_KEYS:
            dropped.append(key)
        else:
            raise CheckpointError(f"unexpected key {key!r} in the checkpoint; not part of RAM/RAM++ ({tuple(value.shape)})")
    missing = sorted(set(expected) - set(tagging))
    if missing == ["reweight_scale"]:
        # Released RAM++ files may lack it: the official model then keeps its constructor value.
        missing = []
    if missing:
        raise CheckpointError(f"checkpoint is missing {len(missing)} tagging key(s), first: {missing[0]!r}")
    return tagging, captioning, dropped


def convert_official(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    tags: str | Path,
    tags_zh: str | Path | None = None,
    thresholds: str | Path | None = None,
    family: str = "auto",
    image_size: int | None = None,
    head_heads: int = OFFICIAL_HEAD_HEADS,
    overwrite: bool = False,
) -> ConversionReport:
    """Convert an official `.pth` plus its tag files into a checkpoint directory (all or nothing)."""
    refuse_existing(out_dir, overwrite)  # before reading a 3 GB checkpoint
    labels_probe = LabelSet.from_files(tags, tags_zh, thresholds)
    state = read_official_state_dict(checkpoint)
    config = infer_config(state, num_tags=len(labels_probe.tags), family=family, image_size=image_size, head_heads=head_heads)
    model = build_model(config)
    expected = model.state_dict()
    derived = dict(model.named_buffers())
    tagging, captioning, dropped = split_state(state, expected, derived)
    model.load_state_dict(tagging, strict=False)
    source = {"file": Path(checkpoint).name, "sha256": sha256_file(checkpoint), "kind": "official"}
    save_checkpoint(model, labels_probe, out_dir, source=source, extra_tensors=captioning or None, overwrite=overwrite)
    return ConversionReport(Path(out_dir), config, len(tagging), len(captioning), dropped)
