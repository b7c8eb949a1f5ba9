"""The files of an ONNX model: the graph, and its weights in one external data file when they are large (no torch)."""

from __future__ import annotations

from pathlib import Path

# Weights at least this large in all go to `model.onnx.data` beside the graph. onnxruntime then reads them
# straight into its tensors instead of parsing one protobuf holding everything and copying out of it:
# Swin-L/384 RAM fp32 peaks at 931 instead of 1335 MB while loading, in 0.5 instead of 0.8-1.3 s, and
# RAM++ with a large vocabulary stays clear of protobuf's 2 GB limit. Small models (the shipped default
# model, 2.5-7.7 MB) stay one self-contained file.
EXTERNAL_DATA_MIN_BYTES = 32 << 20
# Single tensors below this stay inside the graph (shapes, scales, zero points): onnx's own default.
EXTERNAL_TENSOR_MIN_BYTES = 1024


def data_file(path: Path) -> Path:
    """Where the external weights of the ONNX graph at `path` are stored."""
    return path.with_name(path.name + ".data")


def initializer_bytes(model) -> int:
    """Bytes held by the graph's initializers (raw or typed fields)."""
    from onnx import numpy_helper

    total = 0
    for tensor in model.graph.initializer:
        total += len(tensor.raw_data) if tensor.HasField("raw_data") else numpy_helper.to_array(tensor).nbytes
    return total


def save_onnx(model, path: Path, min_bytes: int | None = None) -> list[str]:
    """Save `model` at `path`, its weights in `data_file(path)` when they reach `min_bytes`; returns the file names."""
    import onnx

    path = Path(path)
    extra = data_file(path)
    if extra.exists():
        extra.unlink()  # onnx appends to an existing data file: a stale one would grow and shift every offset
    limit = EXTERNAL_DATA_MIN_BYTES if min_bytes is None else min_bytes
    if initializer_bytes(model) < limit:
        onnx.save(model, str(path))
        return [path.name]
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=extra.name,
              size_threshold=EXTERNAL_TENSOR_MIN_BYTES)
    extra.chmod(path.stat().st_mode & 0o777)  # onnx creates it private (0600); a bundle is read by other users too
    return [path.name, extra.name]


def onnx_files(path: Path) -> dict[str, str]:
    """A bundle's manifest roles for the ONNX graph at `path`: `model`, and `weights` for its data file if it has one."""
    extra = data_file(path)
    return {"model": path.name, **({"weights": extra.name} if extra.exists() else {})}
