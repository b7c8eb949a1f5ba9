"""The runtime interface: construct from a model path + device options, `run` numpy in, numpy out.

Modelled on `onnxruntime.InferenceSession`. Decoding, preprocessing, thresholds and names live
once in `Tagger`; a runtime only turns a preprocessed batch into probabilities.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import ClassVar

import numpy as np


class Runtime(abc.ABC):
    """A backend that runs one model (checkpoint directory or bundle) on one device."""

    name: ClassVar[str]
    #: Artifact kinds this runtime can load: "checkpoint" and/or bundle formats ("onnx", "openvino", "trt").
    formats: ClassVar[tuple[str, ...]]
    #: Whether concurrent `run` calls on one instance are safe without a lock.
    thread_safe: ClassVar[bool] = False

    @classmethod
    @abc.abstractmethod
    def is_installed(cls) -> bool:
        """True when the backend's Python package imports."""

    @classmethod
    @abc.abstractmethod
    def available_devices(cls) -> list[str]:
        """Devices this backend can use on this machine, best first."""

    @abc.abstractmethod
    def __init__(self, path: str | Path, *, device: str | None = None, threads: int | None = None) -> None:
        """Load the model at `path` on `device` (None: the backend's default)."""

    @property
    @abc.abstractmethod
    def device(self) -> str:
        """The device actually used."""

    @abc.abstractmethod
    def run(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, S, S) float32 preprocessed images -> (N, C) float32 probabilities."""

    def close(self) -> None:
        """Release backend resources (optional)."""

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
