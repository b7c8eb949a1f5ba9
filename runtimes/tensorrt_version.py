"""The TensorRT versions ram-edge builds and runs engines with, and the one place their APIs differ.

JetPack 5.1 ships TensorRT 8.5, JetPack 6.0 ships 8.6, JetPack 6.1 / 6.2 ship 10.3; desktop wheels
are 10.x. Everything the builder and runtime call exists from 8.5 on (name-based tensors,
`execute_async_v3`, `set_input_shape`, memory pools, the engine inspector), except:
- 8.x networks are implicit-batch unless created with the EXPLICIT_BATCH flag (10.x: always explicit);
- the builder's progress monitor (`IProgressMonitor`) is absent from older bindings;
- TensorRT 11 drops the weakly typed builder flags (FP16, INT8, OBEY_PRECISION_CONSTRAINTS) that pick
  precisions per layer here: it is refused until the builder makes strongly typed networks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MIN_VERSION = (8, 5)
NEXT_UNSUPPORTED_MAJOR = 11
JETPACK_TENSORRT = {"JetPack 5.1": "8.5", "JetPack 6.0": "8.6", "JetPack 6.1/6.2": "10.3"}


def parse_version(version: str) -> tuple[int, int]:
    """(major, minor) of a TensorRT version string; (0, 0) when it is not one."""
    parts = str(version).split(".")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    except ValueError:
        return 0, 0


def version_problem(version: str) -> str | None:
    """Why TensorRT `version` cannot build or run ram-edge engines (None when it can)."""
    major_minor = parse_version(version)
    if major_minor < MIN_VERSION:
        return (f"TensorRT {version} is installed; ram-edge needs TensorRT 8.5 or later (JetPack 5.1 or later on a Jetson: "
                f"upgrade with NVIDIA SDK Manager; `pip install -U 'ram-edge[trt]'` on a desktop)")
    if major_minor[0] >= NEXT_UNSUPPORTED_MAJOR:
        return (f"TensorRT {version} is installed; ram-edge builds engines with TensorRT 8.5 to 10.x (TensorRT "
                f"{NEXT_UNSUPPORTED_MAJOR} removed the per-layer precision flags it uses): "
                f"pip install 'tensorrt>=10,<{NEXT_UNSUPPORTED_MAJOR}'")
    return None


@dataclass(frozen=True)
class TensorRTApi:
    """The calls that differ between the supported TensorRT versions, decided once from the module."""

    version: str
    explicit_batch_flag: bool  # create_network needs 1 << EXPLICIT_BATCH (8.x)
    progress_monitor: bool

    @property
    def path(self) -> str:
        """How engines are built with this version, recorded in the bundle's manifest."""
        network = "explicit-batch flag" if self.explicit_batch_flag else "explicit batch by default"
        return f"TensorRT {parse_version(self.version)[0]}.x API: {network}, weakly typed precision flags" + (
            ", progress monitor" if self.progress_monitor else "")

    def network_flags(self, trt: Any) -> int:
        """The `create_network` flags for an explicit-batch network."""
        if self.explicit_batch_flag:
            return 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        return 0


def tensorrt_api(trt: Any) -> TensorRTApi:
    """The API variant of the imported `tensorrt` module."""
    version = str(getattr(trt, "__version__", "0"))
    return TensorRTApi(version=version, explicit_batch_flag=parse_version(version)[0] < 10,
                       progress_monitor=hasattr(trt, "IProgressMonitor"))
