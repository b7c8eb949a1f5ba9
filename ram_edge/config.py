"""Architecture and preprocessing configuration as data (JSON on disk), with no torch import."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

FAMILIES = ("ram", "ram_plus")


def config_from_dict(cls, data: Any, where: str, *, nested: dict[str, type] | None = None, tuples: tuple[str, ...] = ()):
    """Build config dataclass `cls` from a mapping read from JSON or YAML: unknown keys and wrongly typed simple fields
    are ConfigErrors naming `where`; `nested` fields given as mappings are built the same way, `tuples` fields given
    as lists become tuples. Every config dataclass of ram-edge is read through this one function."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping (a JSON object), got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; valid fields: {sorted(names)}")
    for f in dataclasses.fields(cls):
        expected = _SIMPLE_TYPES.get(str(f.type))
        value = data.get(f.name)
        if f.name in data and expected and not (isinstance(value, expected) and not (isinstance(value, bool) and bool not in expected)):
            raise ConfigError(f"{where}: field {f.name!r} must be {str(f.type)}, got {value!r}")
    values = dict(data)
    for key, value in data.items():
        if nested and key in nested and isinstance(value, dict):
            values[key] = config_from_dict(nested[key], value, f"{where}.{key}")
        elif key in tuples and isinstance(value, list):
            values[key] = tuple(value)
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:  # a wrong type (ValueError: int("deep") in a conversion)
        raise ConfigError(f"{where}: {exc}") from None


# Annotations checked before construction: a config read from JSON may hold any type.
_SIMPLE_TYPES: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}


@dataclass
class PreprocessConfig:
    """How an image becomes the model input; a property of the trained weights."""

    image_size: int = 384
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    # "stretch": resize to exactly S x S ignoring the aspect ratio, as the official transform.
    resize: str = "stretch"
    resample: str = "bilinear"

    def __post_init__(self) -> None:
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ConfigError("preprocess: mean and std need exactly 3 values (R, G, B)")
        if self.resize != "stretch":
            raise ConfigError(f"preprocess: unknown resize rule {self.resize!r}; valid: 'stretch'")
        if self.resample not in ("bilinear", "bicubic"):
            raise ConfigError(f"preprocess: unknown resample {self.resample!r}; valid: 'bilinear', 'bicubic'")
        if int(self.image_size) < 8:
            raise ConfigError(f"preprocess: image_size {self.image_size} is too small")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PreprocessConfig":
        """Build from a JSON object."""
        return config_from_dict(cls, data, "preprocess")


STEMS = ("patch", "conv", "conv_bn")


@dataclass
class SwinConfig:
    """Swin transformer image encoder shape."""

    image_size: int = 384
    patch_size: int = 4
    in_chans: int = 3
    embed_dim: int = 192
    depths: tuple[int, ...] = (2, 2, 18, 2)
    num_heads: tuple[int, ...] = (6, 12, 24, 48)
    window_size: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    layer_norm_eps: float = 1e-5
    # "patch": one patch_size x patch_size convolution (the official Swin). "conv": a stack of
    # 3x3 stride-2 convolutions reaching the same stride, which trains much faster from scratch
    # on small data (Xiao et al. 2021, "Early convolutions help transformers see better").
    # "conv_bn": the same with BatchNorm + ReLU and an extra stride-1 layer (a ResNet-style stem).
    stem: str = "patch"

    def __post_init__(self) -> None:
        if self.stem not in STEMS:
            raise ConfigError(f"swin: unknown stem {self.stem!r}; valid: {', '.join(repr(s) for s in STEMS)}")
        if self.stem != "patch" and (self.patch_size & (self.patch_size - 1) or self.patch_size < 2):
            raise ConfigError(f"swin: a conv stem needs a power-of-two patch_size, got {self.patch_size}")
        self.depths = tuple(int(d) for d in self.depths)
        self.num_heads = tuple(int(h) for h in self.num_heads)
        if len(self.depths) != len(self.num_heads) or not self.depths:
            raise ConfigError(f"swin: depths {list(self.depths)} and num_heads {list(self.num_heads)} must have the same non-zero length")
        if self.image_size % self.patch_size:
            raise ConfigError(f"swin: image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        res = self.image_size // self.patch_size
        for stage in range(len(self.depths)):
            dim = self.embed_dim * 2**stage
            if dim % self.num_heads[stage]:
                raise ConfigError(f"swin: stage {stage} width {dim} is not divisible by {self.num_heads[stage]} heads")
            window = min(self.window_size, res)
            if res % window:
                raise ConfigError(
                    f"swin: stage {stage} resolution {res} is not a multiple of window {self.window_size}; "
                    f"use an image size that is patch_size * window * 2^k (e.g. 224 with window 7, 384 with window 12)"
                )
            if stage < len(self.depths) - 1:
                if res % 2:
                    raise ConfigError(f"swin: stage {stage} resolution {res} is odd and cannot be merged")
                res //= 2

    @property
    def num_features(self) -> int:
        """Width of the last stage (the encoder's output width)."""
        return self.embed_dim * 2 ** (len(self.depths) - 1)

    @property
    def num_tokens(self) -> int:
        """Tokens of the last stage (without the pooled token)."""
        res = self.image_size // self.patch_size // 2 ** (len(self.depths) - 1)
        return res * res


@dataclass
class HeadConfig:
    """The recognition decoder: cross-attention-only BERT-style layers."""

    hidden_size: int = 768
    num_attention_heads: int = 4
    intermediate_size: int = 3072
    num_hidden_layers: int = 2
    layer_norm_eps: float = 1e-12

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"head: hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}"
            )


@dataclass
class ModelConfig:
    """A RAM or RAM++ model: encoder, projection, label embeddings and decoder."""

    family: str = "ram"
    swin: SwinConfig = field(default_factory=SwinConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    num_classes: int = 4585
    embed_dim: int = 512  # image_proj output = key/value width of the decoder
    label_embed_dim: int = 512  # text-encoder embedding width (input of wordvec_proj)
    des_per_class: int = 1  # RAM++: descriptions per class (51 for the released model)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)

    def __post_init__(self) -> None:
        if isinstance(self.swin, dict):
            self.swin = config_from_dict(SwinConfig, self.swin, "swin")
        if isinstance(self.head, dict):
            self.head = config_from_dict(HeadConfig, self.head, "head")
        if isinstance(self.preprocess, dict):
            self.preprocess = PreprocessConfig.from_dict(self.preprocess)
        if self.family not in FAMILIES:
            raise ConfigError(f"family {self.family!r} is unknown; valid: {', '.join(FAMILIES)}")
        if self.family == "ram" and self.des_per_class != 1:
            raise ConfigError("family 'ram' has one label embedding per class: des_per_class must be 1")
        if self.num_classes < 1:
            raise ConfigError(f"num_classes must be positive, got {self.num_classes}")
        if self.preprocess.image_size != self.swin.image_size:
            raise ConfigError(
                f"preprocess.image_size {self.preprocess.image_size} differs from swin.image_size {self.swin.image_size}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dictionary."""
        data = asdict(self)
        for key in ("depths", "num_heads"):
            data["swin"][key] = list(data["swin"][key])
        for key in ("mean", "std"):
            data["preprocess"][key] = list(data["preprocess"][key])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        """Build from a JSON object."""
        return config_from_dict(cls, data, "model config")

    @classmethod
    def from_json(cls, path: str | Path) -> "ModelConfig":
        """Read a config JSON file."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: not a readable JSON config ({exc})") from None
        if isinstance(data, dict) and "model" in data and isinstance(data["model"], dict):
            data = data["model"]
        return cls.from_dict(data)


def read_mapping_file(path: str | Path, error: type[Exception], what: str) -> dict:
    """The mapping in a YAML (.yaml/.yml) or JSON file; `error` names the file and the problem."""
    from ram_edge.fileio import read_text

    path = Path(path)
    if not path.exists():
        raise error(f"{path}: {what} not found")
    text = read_text(path, what=what, error=error)
    if path.suffix in (".yaml", ".yml"):
        import yaml  # outside the try: a missing PyYAML is not a syntax error in the file

        parse = yaml.safe_load
    else:
        parse = json.loads
    try:
        data = parse(text)
    except Exception as exc:  # noqa: BLE001 - yaml and json raise their own types
        raise error(f"{path}: not valid YAML/JSON ({parse_error_line(exc)}); fix the {what}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise error(f"{path}: the {what} must be a mapping of field: value, not a {type(data).__name__}")
    return data


def parse_error_line(exc: Exception) -> str:
    """A YAML or JSON syntax error as one line with its position (PyYAML's own text spans several lines)."""
    mark = getattr(exc, "problem_mark", None)
    if mark is not None:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(exc).split())
