"""How a model is quantized, as data (a dataclass loaded from YAML or JSON), separate from weights."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ram_edge.errors import ConfigError, QuantizeError

METHODS = ("ptq", "weights")


@dataclass
class QuantizeConfig:
    """Method, calibration size and the parts of the graph kept in float."""

    # "ptq": nncf.quantize (int8 weights and activations, transformer preset); "weights": 8-bit weights, float compute.
    method: str = "ptq"
    calib_size: int = 300  # calibration images (PTQ statistics); a few hundred of the user's own photos suffice
    # NNCF IgnoredScope, as data: node-name regexes and operation types left in float.
    ignored_patterns: list[str] = field(default_factory=list)
    ignored_types: list[str] = field(default_factory=list)
    fast_bias_correction: bool = True
    weights_mode: str = "int8_asym"  # for method "weights": nncf.CompressWeightsMode value
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise QuantizeError(f"quantization method {self.method!r} is unknown; valid: {', '.join(METHODS)}")
        if not isinstance(self.calib_size, int) or self.calib_size < 1:
            raise QuantizeError(f"calib_size must be a positive integer, got {self.calib_size!r}")
        if self.weights_mode not in ("int8_asym", "int8_sym"):
            raise QuantizeError(f"weights_mode {self.weights_mode!r} is not 8-bit; valid: int8_asym, int8_sym")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "QuantizeConfig":
        """Build from a mapping, rejecting unknown keys."""
        from ram_edge.config import _from_dict

        return _from_dict(cls, data, "quantization config")

    @classmethod
    def from_file(cls, path: str | Path) -> "QuantizeConfig":
        """Read a YAML or JSON quantization config."""
        from ram_edge.config import read_mapping_file

        return cls.from_dict(read_mapping_file(path, ConfigError, "quantization config"))

    def to_dict(self) -> dict[str, Any]:
        """Plain dictionary (recorded in the quantized checkpoint)."""
        return dataclasses.asdict(self)
