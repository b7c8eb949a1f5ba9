"""The runtime interface: construct from a model path + device options, `run` numpy in, numpy out.

Modelled on `onnxruntime.InferenceSession`. Decoding, preprocessing, thresholds and names live
once in `Tagger`; a runtime only turns a preprocessed batch into probabilities.
"""

from __future__ import annotations

import abc
import os
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np

from ram_edge.errors import ConfigError, RuntimeUnavailableError

#: Arithmetic precisions a runtime can be asked to compute in (stored precision is the bundle's own).
COMPUTE_PRECISIONS = ("fp32", "bf16", "fp16")
_ALIASES = {"f32": "fp32", "float32": "fp32", "fp32": "fp32", "bf16": "bf16", "bfloat16": "bf16",
            "f16": "fp16", "float16": "fp16", "fp16": "fp16"}


AUTO_ON_OFF = ("auto", "on", "off")


def auto_on_off(env: str, auto: Callable[[], bool], auto_means: str) -> bool:
    """A runtime's CPU choice from $`env`: on / off, or auto (the default) as `auto()` decides; any other value is a
    ConfigError that says what auto means."""
    value = os.environ.get(env, "auto").strip().lower()
    if value not in AUTO_ON_OFF:
        raise ConfigError(f"{env}={value!r} is not valid; use one of {', '.join(AUTO_ON_OFF)} (auto: {auto_means})")
    return auto() if value == "auto" else value == "on"


def normalize_compute_precision(value: str | None) -> str | None:
    """'fp32' / 'bf16' / 'fp16' from any common spelling (f32, float32, ...); None stays None."""
    if value is None:
        return None
    key = str(value).strip().lower()
    if key not in _ALIASES:
        raise RuntimeUnavailableError(f"unknown compute precision {value!r}; valid: {', '.join(COMPUTE_PRECISIONS)}")
    return _ALIASES[key]


class Runtime(abc.ABC):
    """A backend that runs one model (checkpoint directory or bundle) on one device."""

    name: ClassVar[str]
    #: Artifact kinds this runtime can load: "checkpoint" and/or bundle formats ("onnx", "openvino", "trt").
    formats: ClassVar[tuple[str, ...]]
    #: Whether concurrent `run` calls on one instance are safe without a lock.
    thread_safe: ClassVar[bool] = False
    #: Whether an INT8 bundle runs on int8 kernels where the backend chooses (OpenVINO on a CPU); None elsewhere.
    int8_kernels: bool | None = None
    #: onnxruntime with an INT8 bundle on a CPU: whether its int8 products run on the U8U8 kernels (exact without VNNI)
    #: rather than U8S8 (faster, but its 16-bit intermediate sums saturate without VNNI); None elsewhere.
    int8_u8u8: bool | None = None

    @classmethod
    @abc.abstractmethod
    def is_installed(cls) -> bool:
        """True when the backend's Python package imports."""

    @classmethod
    def install_hint(cls) -> str | None:
        """What to install when `is_installed` is False (None: the registry names the pip extra)."""
        return None

    @classmethod
    @abc.abstractmethod
    def available_devices(cls) -> list[str]:
        """Devices this backend can use on this machine, best first."""

    @abc.abstractmethod
    def __init__(self, path: str | Path, *, device: str | None = None, threads: int | None = None,
                 compute_precision: str | None = None) -> None:
        """Load the model at `path` on `device` (None: the backend's default).

        `compute_precision` (fp32, bf16, fp16) is the arithmetic precision, which is not the bundle's
        stored precision: None means ram-edge's default, fp32 on a CPU whatever the plugin would pick.
        A backend that cannot compute in the asked precision raises RuntimeUnavailableError.
        """

    @property
    @abc.abstractmethod
    def device(self) -> str:
        """The device actually used."""

    @property
    @abc.abstractmethod
    def compute_precision(self) -> str:
        """The precision the backend actually computes in (fp32, bf16, fp16, or the graph's own)."""

    @abc.abstractmethod
    def run(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, S, S) float32 preprocessed images -> (N, C) float32 probabilities."""

    def close(self) -> None:
        """Release backend resources (optional)."""

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
