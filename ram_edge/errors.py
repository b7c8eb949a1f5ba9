"""One exception family for every user-facing failure of ram-edge."""


class RamEdgeError(Exception):
    """Base class: the message names the bad input, the valid values and the fix."""


class ImageError(RamEdgeError):
    """An image could not be read or decoded."""


class LabelError(RamEdgeError):
    """A tag list, Chinese list, threshold file or tag subset is invalid."""


class CheckpointError(RamEdgeError):
    """A checkpoint file or checkpoint directory is invalid or does not match its labels."""


class ConfigError(RamEdgeError):
    """A model or training configuration is invalid."""


class BundleError(RamEdgeError):
    """An exported bundle is missing files, tampered with, or of an unknown format version."""


class RuntimeUnavailableError(RamEdgeError):
    """A runtime or device was asked for that is not installed or not present."""


class ExportError(RamEdgeError):
    """An export failed or did not reproduce the source model."""


class MissingDependencyError(RamEdgeError):
    """An optional package is not installed; the message names the extra that installs it."""


class QuantizeError(RamEdgeError):
    """Quantization could not run: bad calibration data, a model it cannot quantize, or a bad config."""


class StreamError(RamEdgeError):
    """A video source cannot be opened, or a live one was lost and could not be reopened."""


class InUseError(RamEdgeError):
    """Another process is working in a run directory (training, QAT) or writing an output file that this one would
    write to."""


class Terminated(KeyboardInterrupt):
    """The process was sent SIGTERM: raised like Ctrl-C so that half-written outputs are removed on the way out."""

    exit_code = 143  # 128 + SIGTERM, what a shell reports for a process the signal killed


class RamEdgeWarning(RuntimeWarning):
    """Something works, but not as well as it could, and the user can fix it (the CLI prints it as one line)."""


DEBUG_ENV = "RAM_EDGE_DEBUG"


def debug_enabled() -> bool:
    """RAM_EDGE_DEBUG is set to something other than empty or 0: tracebacks and dependencies' log lines are shown."""
    import os

    return os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")
