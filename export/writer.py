"""Model -> bundle: pick the label set, build the graph, run the format's exporter, validate,
write the manifest; all in a temporary directory renamed into place only on success."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ram_edge.bundle import BUNDLE_FORMAT, BUNDLE_VERSION, tool_versions, write_manifest
from ram_edge.errors import ExportError, MissingDependencyError
from ram_edge.fileio import atomic_dir
from ram_edge.labels import LabelSet, tag_set_f1

from .validate import ValidationReport

# format -> "module:function(graph, directory, precision, image_size, device, reference=None) -> FormatResult"
EXPORTERS: dict[str, str] = {
    "onnx": "ram_edge.export.onnx_format:export",
    "openvino": "ram_edge.export.openvino_format:export",
}


@dataclass
class FormatResult:
    """What a format exporter wrote."""

    files: dict[str, str]
    input_name: str
    output_name: str
    validation: ValidationReport
    queries: str
    extra: dict[str, Any] | None = None


def _exporter(fmt: str):
    if fmt not in EXPORTERS:
        raise ExportError(f"unknown export format {fmt!r}; available: {', '.join(EXPORTERS)}")
    module, func = EXPORTERS[fmt].split(":")
    try:
        return getattr(importlib.import_module(module), func)
    except ImportError as exc:
        from ram_edge.extras import missing_package_message

        message = missing_package_message(exc, "export")
        if message is None:
            raise
        raise MissingDependencyError(message) from None


def resolve_labels(
    labels: LabelSet,
    *,
    tags: Sequence[str] | None = None,
    vocab: tuple[list[str], np.ndarray, float] | None = None,
) -> tuple[LabelSet, np.ndarray | None, np.ndarray | None]:
    """(label set, class indices into the model or None, new label embeddings or None)."""
    if vocab is not None:
        names, embed, threshold = vocab
        new = LabelSet(list(names), None, np.full(len(names), threshold, dtype=np.float32))
        return new, None, embed
    if tags:
        subset, indices = labels.subset(tags)
        return subset, indices, None
    return labels, None, None


def export_bundle(
    model_dir: str | Path,
    out_dir: str | Path,
    *,
    fmt: str = "onnx",
    precision: str | None = None,
    tags: Sequence[str] | None = None,
    vocab: tuple[list[str], np.ndarray, float] | None = None,
    device: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Export a checkpoint directory (float or quantized) to a validated bundle; returns the manifest.

    `precision`: fp32 (default) or fp16 for a float checkpoint; int8 (the default) for a quantized one.
    """
    import torch

    from ram_edge.checkpoint_dir import is_quantized
    from ram_edge.models.checkpoint import load_checkpoint

    from ram_edge.fileio import refuse_existing

    from ram_edge.models.tagging_graph import TaggingGraph, select_label_embed

    exporter = _exporter(fmt)
    refuse_existing(out_dir, overwrite)  # before loading the model and NNCF's kernels: seconds to minutes of work
    model, info = load_checkpoint(model_dir)
    quantized = is_quantized(info)
    precision = precision or ("int8" if quantized else "fp32")
    if quantized and precision != "int8":
        raise ExportError(
            f"{model_dir} is a quantized checkpoint: it exports as int8 (asked: {precision}); for other precisions export "
            f"the float checkpoint it came from ({info.source['quantization']['from']['checkpoint']})"
        )
    if precision == "int8" and not quantized:
        raise ExportError(f"--precision int8 needs a quantized checkpoint: run `ram-edge quantize {model_dir} -o QUANTIZED "
                          f"--calib YOUR_PHOTOS/` and export QUANTIZED")
    labels, indices, new_embed = resolve_labels(info.labels, tags=tags, vocab=vocab)
    embed = select_label_embed(model, indices, new_embed)
    config = model.config
    if embed.shape[-1] != config.label_embed_dim:
        raise ExportError(
            f"label embeddings are {embed.shape[-1]}-dimensional but the model expects {config.label_embed_dim}; "
            f"use the text encoder the model was trained with"
        )
    graph = TaggingGraph(model, embed).eval()
    int8_extra = None
    reference = None
    graph_precision = precision
    if quantized:
        from ram_edge.models.quantized import load_quantized

        float_graph, (quantized_graph, _) = graph, load_quantized(model_dir)
        if indices is not None or new_embed is not None:
            _use_label_set(quantized_graph, float_graph)
        int8_extra = {**info.source["quantization"], "vs_float": _agreement(float_graph, quantized_graph, labels, config)}
        if info.source["quantization"]["method"] == "weights":
            # 8-bit weights are written from the float graph (data-free, the same scheme) and checked against NNCF's.
            graph_precision, reference = "int8-weights", quantized_graph
        else:
            graph = quantized_graph
    size = config.preprocess.image_size
    with atomic_dir(out_dir, overwrite=overwrite) as tmp, torch.no_grad():
        result = exporter(graph, tmp, graph_precision, size, device, reference=reference)
        manifest = {
            "format": BUNDLE_FORMAT,
            "format_version": BUNDLE_VERSION,
            "model_format": fmt,
            "family": config.family,
            # Stored precision of the weights; the arithmetic one is chosen by the runtime (fp32 on a CPU by
            # default) and the one this bundle was validated in is `compute_precision`.
            "precision": precision,
            "compute_precision": result.validation.compute_precision,
            "preprocess": {**config.preprocess.__dict__, "mean": list(config.preprocess.mean), "std": list(config.preprocess.std)},
            "labels": labels.to_manifest(),
            "subset": None if indices is None else {"indices": [int(i) for i in indices], "of": config.num_classes},
            "open_set_vocabulary": vocab is not None,
            "label_queries": result.queries,
            "io": {
                "inputs": [{"name": result.input_name, "shape": ["batch", 3, size, size], "dtype": "float32"}],
                "outputs": [{"name": result.output_name, "shape": ["batch", len(labels)], "dtype": "float32", "meaning": "sigmoid probabilities"}],
            },
            "files": result.files,
            "validation": result.validation.to_dict(),
            "source": {"checkpoint": str(Path(model_dir).name), "weights_sha256": _sha(info.weights_path), "origin": info.source},
            "tools": tool_versions(["torch", "onnx", "onnxruntime", "openvino", "onnxconverter-common", "tensorrt"]),
            **({"extra": result.extra} if result.extra else {}),
            # int8: method, config (ignored scopes), calibration summary, and the distance to the float model.
            **({"quantization": int8_extra} if int8_extra is not None else {}),
        }
        manifest = write_manifest(tmp, manifest)
        if int8_extra is not None:
            photos = _held_out_photos(tmp, fmt, float_graph, labels, info.source["quantization"], config)
            if photos is not None:
                manifest["quantization"]["vs_float_photos"] = photos
                manifest = write_manifest(tmp, manifest)
    return manifest


# The runtime each exported format is checked on: its own.
_FORMAT_RUNTIME = {"onnx": "ort", "openvino": "openvino"}


def _held_out_photos(bundle_dir: Path, fmt: str, float_graph, labels: LabelSet, quantization: dict[str, Any],
                     config) -> dict[str, Any] | None:
    """The written INT8 bundle on its runtime against the float model, on the photos `quantize` held out of calibration."""
    import torch

    from ram_edge import Tagger
    from ram_edge.compare import compare_scores
    from ram_edge.preprocess import load_image, preprocess

    held_out = quantization.get("held_out") or {}
    paths = held_out.get("image_paths") or []
    if not paths:
        return None
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        return {"skipped": f"{len(missing)} of the {len(paths)} held-out photos are gone (e.g. {missing[0]}); "
                           f"compare on photos of yours with `ram-edge compare`"}
    images = np.stack([preprocess(load_image(p), config.preprocess) for p in paths]).astype(np.float32)
    with torch.inference_mode():
        reference = float_graph(torch.from_numpy(images)).numpy()
    runtime = _FORMAT_RUNTIME.get(fmt, "auto")
    with Tagger.load(bundle_dir, runtime=runtime) as tagger:
        probs = tagger.predict(images)
    agreement = compare_scores(reference, probs, labels)
    threshold = (quantization.get("config") or {}).get("agreement_threshold", held_out.get("threshold", 0.97))
    return {"images": agreement.images, "runtime": runtime, "inputs": "the photos `ram-edge quantize` held out of calibration",
            "tag_set_f1": agreement.tag_set_f1, "identical_sets": agreement.identical_sets, "max_abs_diff": agreement.max_abs_diff,
            "p99_abs_diff": agreement.p99_abs_diff, "threshold": threshold, "passed": agreement.tag_set_f1 >= threshold}


def _use_label_set(quantized, float_graph) -> None:
    """Give a quantized graph the float graph's label set (a subset or an open-set vocabulary).

    The precomputed queries (RAM) or description embeddings (RAM++) are constants of the graph, not
    quantized weights; NNCF's quantizers and SmoothQuant scales act per hidden channel, never per tag,
    so the quantized operations are unchanged by the number of tags.
    """
    import torch

    name = "queries" if float_graph.family == "ram" else "label_embed"
    with torch.no_grad():
        setattr(quantized, name, getattr(float_graph, name).detach().clone())


def _agreement(float_graph, quantized, labels: LabelSet, config) -> dict[str, Any]:
    """How far the quantized graph is from the float one on the validation inputs: probabilities and tag sets."""
    import torch

    from .validate import validation_inputs

    diffs, f1s = [], []
    for batch in validation_inputs(config.preprocess.image_size, (4,), seed=1):
        with torch.inference_mode():
            x = torch.from_numpy(batch)
            a, b = float_graph(x).numpy(), quantized(x).numpy()
        diffs.append(float(np.abs(a - b).max()))
        f1s.extend(tag_set_f1(labels.fired(a), labels.fired(b)).tolist())
    return {"inputs": "validation inputs (random image-like tensors), not photos", "max_abs_diff": max(diffs),
            "tag_set_f1": float(np.mean(f1s))}


def _sha(path: Path) -> str:
    from ram_edge.fileio import sha256_file

    return sha256_file(path)
