"""How a model is quantized, as data (a dataclass loaded from YAML or JSON), separate from weights."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ram_edge.errors import ConfigError, QuantizeError

METHODS = ("ptq", "qat", "weights")
PRESETS = ("mixed", "performance")
DEFAULT_IGNORED_PATTERNS = ("^patch_embed/proj/(0/)?conv2d/0$",)


@dataclass
class QATConfig:
    """Quantization-aware fine-tuning: the PTQ model trained through the training loop (training/loop.py)."""

    steps: int = 300
    batch_size: int = 16
    lr: float = 1e-5  # small: the PTQ model is already close; NNCF's own QAT examples use 1e-5
    warmup_steps: int = 20
    # Quantizer scales are parameters too: no weight decay, which would shrink them.
    weight_decay: float = 0.0
    clip_grad: float | None = 1.0
    # Loss: distillation from the float model's own probabilities (binary KL per tag, summed over tags, mean over
    # images) needs no labels; tagging_weight > 0 adds the asymmetric tagging loss where the data has tags.
    distillation_weight: float = 1.0
    tagging_weight: float = 0.0
    tags_from: str = "given"  # where tagging targets come from: "given" tags or "parse" the captions
    crop_scale: tuple[float, float] = (0.7, 1.0)  # mild augmentation: a few hundred photos are seen many times
    hflip: bool = True
    checkpoint_every: int = 100
    log_every: int = 10
    num_workers: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        self.crop_scale = tuple(float(v) for v in self.crop_scale)
        for name in ("steps", "batch_size", "checkpoint_every", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise QuantizeError(f"qat.{name} must be a positive integer, got {value!r}")
        if self.distillation_weight <= 0 and self.tagging_weight <= 0:
            raise QuantizeError("qat: distillation_weight and tagging_weight are both 0; nothing would train the model")
        if self.tags_from not in ("given", "parse"):
            raise QuantizeError(f"qat.tags_from {self.tags_from!r} is unknown; valid: given, parse")


@dataclass
class QuantizeConfig:
    """Method, calibration size and the parts of the graph kept in float."""

    # "ptq": nncf.quantize (int8 weights and activations, transformer preset); "qat": PTQ, then quantization-aware
    # fine-tuning (section `qat`); "weights": 8-bit weights, float compute.
    method: str = "ptq"
    calib_size: int = 300  # calibration images (PTQ statistics); a few hundred of the user's own photos suffice
    # NNCF IgnoredScope, as data: node-name regexes and operation types left in float. Default: the first
    # convolution (Swin's patch embedding, or the first conv of a conv stem), which sees raw pixels: on the
    # default model, quantizing it alone moved the tag sets most of all (`ram-edge quantize --report`: tag-set F1
    # 0.952 against float; the whole model 0.935 with it, 0.984 without it), for a negligible share of the MACs.
    ignored_patterns: list[str] = field(default_factory=lambda: list(DEFAULT_IGNORED_PATTERNS))
    ignored_types: list[str] = field(default_factory=list)
    fast_bias_correction: bool = True
    # NNCF's advanced PTQ choices that matter for Swin, as data (benchmarks/results/smooth_quant/smooth_quant.md measures them):
    # SmoothQuant migrates activation outliers into the MatMul weights (alpha: how much; NNCF's default 0.95);
    # bias correction re-fits biases to the quantized outputs; the preset picks the activation quantizers:
    # "mixed" (asymmetric uint8, NNCF's transformer default) or "performance" (symmetric: what TensorRT takes as is).
    smooth_quant: bool = True
    smooth_quant_alpha: float = 0.95
    bias_correction: bool = True
    preset: str = "mixed"
    weights_mode: str = "int8_asym"  # for method "weights": nncf.CompressWeightsMode value
    # The held-out check: this share of the calibration source (at least held_out_min images) is kept out of
    # calibration and tags are compared with the float model on it; below agreement_threshold (mean tag-set F1)
    # a warning names the remedies. held_out_fraction 0 turns the check off.
    held_out_fraction: float = 0.2
    held_out_min: int = 16
    agreement_threshold: float = 0.97
    seed: int = 0
    qat: QATConfig = field(default_factory=QATConfig)

    def __post_init__(self) -> None:
        if isinstance(self.qat, dict):
            from ram_edge.config import config_from_dict

            self.qat = config_from_dict(QATConfig, self.qat, "quantization config qat")
        if self.method not in METHODS:
            raise QuantizeError(f"quantization method {self.method!r} is unknown; valid: {', '.join(METHODS)}")
        if not isinstance(self.calib_size, int) or self.calib_size < 1:
            raise QuantizeError(f"calib_size must be a positive integer, got {self.calib_size!r}")
        if not isinstance(self.smooth_quant_alpha, (int, float)) or not 0.0 < float(self.smooth_quant_alpha) <= 1.0:
            raise QuantizeError(f"smooth_quant_alpha must lie in (0, 1], got {self.smooth_quant_alpha!r}; "
                                f"set smooth_quant: false to turn SmoothQuant off")
        if not isinstance(self.held_out_fraction, (int, float)) or not 0.0 <= float(self.held_out_fraction) < 1.0:
            raise QuantizeError(f"held_out_fraction must lie in [0, 1), got {self.held_out_fraction!r}")
        if not isinstance(self.held_out_min, int) or self.held_out_min < 1:
            raise QuantizeError(f"held_out_min must be a positive integer, got {self.held_out_min!r}")
        if not isinstance(self.agreement_threshold, (int, float)) or not 0.0 <= float(self.agreement_threshold) <= 1.0:
            raise QuantizeError(f"agreement_threshold must lie in [0, 1], got {self.agreement_threshold!r}")
        if self.preset not in PRESETS:
            raise QuantizeError(f"preset {self.preset!r} is unknown; valid: {', '.join(PRESETS)}")
        if self.weights_mode not in ("int8_asym", "int8_sym"):
            raise QuantizeError(f"weights_mode {self.weights_mode!r} is not 8-bit; valid: int8_asym, int8_sym")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "QuantizeConfig":
        """Build from a mapping, rejecting unknown keys."""
        from ram_edge.config import config_from_dict

        return config_from_dict(cls, data, "quantization config")

    @classmethod
    def from_file(cls, path: str | Path) -> "QuantizeConfig":
        """Read a YAML or JSON quantization config."""
        from ram_edge.config import read_mapping_file

        return cls.from_dict(read_mapping_file(path, ConfigError, "quantization config"))

    def to_dict(self) -> dict[str, Any]:
        """Plain dictionary (recorded in the quantized checkpoint)."""
        return dataclasses.asdict(self)
