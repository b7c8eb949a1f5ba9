"""The bundle: what `ram-edge export` produces and runtimes consume (torch-free).

A directory with `manifest.json` plus model file(s). The manifest is the single source of truth a
runtime needs: format version, family, preprocessing, label set (and subset), graph I/O, precision,
which file is which, sha256 of every file (verified on load), tool versions and the source hash.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import FAMILIES, PreprocessConfig
from .errors import BundleError, ConfigError, LabelError
from .fileio import atomic_file, read_versioned_json, sha256_file
from .labels import LabelSet

MANIFEST = "manifest.json"
BUNDLE_FORMAT = "ram-edge-bundle"
BUNDLE_VERSION = 1
MODEL_FORMATS = ("onnx", "openvino", "trt")
PRECISIONS = ("fp32", "fp16", "int8")


@dataclass
class Bundle:
    """A parsed and verified bundle manifest."""

    path: Path
    format: str
    family: str
    precision: str
    preprocess: PreprocessConfig
    labels: LabelSet
    files: dict[str, str]  # role -> file name ("model", "weights", ...)
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    manifest: dict[str, Any] = field(repr=False, default_factory=dict)

    def file(self, role: str) -> Path:
        """Path of the file with `role` (e.g. 'model')."""
        if role not in self.files:
            raise BundleError(f"{self.path}: manifest names no {role!r} file (has: {', '.join(self.files)})")
        return self.path / self.files[role]

    @property
    def input_name(self) -> str:
        """Name of the image input tensor."""
        return self.inputs[0]["name"]

    @property
    def output_name(self) -> str:
        """Name of the probability output tensor."""
        return self.outputs[0]["name"]


def write_manifest(directory: str | Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Add the sha256 of every listed file and write manifest.json atomically."""
    directory = Path(directory)
    manifest = dict(manifest)
    manifest["sha256"] = {name: sha256_file(directory / name) for name in sorted(set(manifest["files"].values()))}
    with atomic_file(directory / MANIFEST, "w") as fh:
        json.dump(manifest, fh, indent=1, ensure_ascii=False)
        fh.write("\n")
    return manifest


def read_bundle(path: str | Path, *, verify: bool = True) -> Bundle:
    """Parse manifest.json, check the format version and (by default) every file's sha256."""
    path = Path(path)
    manifest_path = path / MANIFEST
    data = read_versioned_json(manifest_path, fmt=BUNDLE_FORMAT, version=BUNDLE_VERSION, error=BundleError,
                               what="ram-edge bundle", create_hint="create one with `ram-edge export`", fix="re-export the bundle")
    try:
        model_format = data["model_format"]
        if model_format not in MODEL_FORMATS:
            raise BundleError(f"{manifest_path}: unknown model_format {model_format!r}; valid: {', '.join(MODEL_FORMATS)}")
        for key, valid in (("precision", PRECISIONS), ("family", FAMILIES)):
            if data[key] not in valid:
                raise BundleError(f"{manifest_path}: unknown {key} {data[key]!r}; valid: {', '.join(valid)}; re-export the bundle")
        files = dict(data["files"])
        sums = dict(data["sha256"])
        bundle = Bundle(
            path=path,
            format=model_format,
            family=data["family"],
            precision=data["precision"],
            preprocess=PreprocessConfig.from_dict(data["preprocess"]),
            labels=LabelSet.from_manifest(data["labels"]),
            files=files,
            inputs=list(data["io"]["inputs"]),
            outputs=list(data["io"]["outputs"]),
            manifest=data,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BundleError(f"{manifest_path}: manifest is missing or has a malformed field ({type(exc).__name__}: {exc}); "
                          f"re-export the bundle") from None
    except (ConfigError, LabelError) as exc:
        raise BundleError(f"{manifest_path}: {exc}") from None
    for name in sorted(set(files.values())):
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise BundleError(f"{manifest_path}: file name {name!r} is not a plain file name inside the bundle; re-export the bundle")
        file_path = path / name
        if not file_path.is_file():
            raise BundleError(f"{path}: file {name!r} listed in the manifest is missing; re-export the bundle")
        if name not in sums:
            raise BundleError(f"{manifest_path}: no sha256 for {name!r}; the manifest is incomplete")
        if verify and sha256_file(file_path) != sums[name]:
            raise BundleError(
                f"{file_path}: sha256 does not match the manifest (file changed or corrupt); re-export or re-copy the bundle"
            )
    return bundle


def tool_versions(names: list[str] | tuple[str, ...]) -> dict[str, str]:
    """ram-edge's and Python's versions, and those of the named packages that are installed (what a bundle or a
    quantized checkpoint was made with)."""
    import importlib.metadata
    import platform

    from . import __version__

    out = {"ram_edge": __version__, "python": platform.python_version()}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out
