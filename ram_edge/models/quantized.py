"""A quantized checkpoint directory loaded as a module, for every layer that runs or exports one (NNCF imported lazily).

`ram-edge quantize` (ram_edge.quantize) writes the directory: config.json's `source.quantization` (method,
config, calibration), and for PTQ/QAT `nncf_config.json` plus `quantized.safetensors` (the NNCF model's state),
reloaded with nncf.torch.load_from_config + load_state_dict, which is exact; 8-bit weights are data-free and
are compressed again on load. What is quantized is the tagging graph (`ram_edge.models.tagging_graph`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from ram_edge.checkpoint_dir import CheckpointInfo, is_quantized
from ram_edge.errors import CheckpointError, QuantizeError

from .nncf_kernels import prepare_nncf_kernels, quiet_nncf_logs

QUANTIZED_FILE = "quantized.safetensors"
NNCF_CONFIG_FILE = "nncf_config.json"


@contextlib.contextmanager
def nncf_output_to_stderr():
    """NNCF prints progress bars and logs on stdout; ram-edge keeps stdout for results (`--json`)."""
    from nncf.common.logging.logger import nncf_logger

    quiet_nncf_logs()
    handlers = [h for h in nncf_logger.handlers if isinstance(h, logging.StreamHandler) and h.stream is sys.stdout]
    for handler in handlers:
        handler.setStream(sys.stderr)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    except Exception as exc:
        if type(exc).__name__ != "ExtensionLoaderTimeoutException":
            raise
        # Seen here: a first build killed midway leaves torch's lock file, and every later load waits on it.
        cache = os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "torch_extensions")
        raise QuantizeError(
            f"NNCF could not build or load its C++ kernels within {os.environ.get('NNCF_EXTENSION_LOAD_TIMEOUT')} s; "
            f"a build interrupted earlier leaves a lock file behind: delete {cache}/*/nncf and run again "
            f"(a first build takes about a minute; NNCF_EXTENSION_LOAD_TIMEOUT sets the limit in seconds)"
        ) from None
    finally:
        for handler in handlers:
            handler.setStream(sys.stdout)


def tagging_graph(model) -> torch.nn.Module:
    """The graph that is quantized and exported: all of the model's label queries, precomputed."""
    from .tagging_graph import TaggingGraph

    return TaggingGraph(model, model.label_embed.detach()).eval()


def ignored_scope(patterns: Sequence[str], types: Sequence[str]):
    """NNCF's IgnoredScope for node-name regexes and operation types left in float (None when there are none)."""
    import nncf

    if not (patterns or types):
        return None
    # validate=False: a pattern that matches nothing in this architecture is not an error.
    return nncf.IgnoredScope(patterns=list(patterns), types=list(types), validate=False)


def compress_weights(graph: torch.nn.Module, mode: str, patterns: Sequence[str], types: Sequence[str], image_size: int) -> torch.nn.Module:
    """8-bit weight compression of `graph` (data-free and deterministic: the same on every load)."""
    import nncf

    example = nncf.Dataset([torch.zeros(1, 3, image_size, image_size)])  # traced only: the compression is data-free
    return nncf.compress_weights(graph, mode=nncf.CompressWeightsMode(mode), ignored_scope=ignored_scope(patterns, types),
                                 dataset=example)


def load_quantized(path: str | Path) -> tuple[torch.nn.Module, CheckpointInfo]:
    """A quantized checkpoint directory as an eval-mode module: (N, 3, S, S) images -> (N, C) probabilities."""
    from ram_edge.models.checkpoint import load_checkpoint

    model, info = load_checkpoint(path)
    if not is_quantized(info):
        raise CheckpointError(f"{path} is not a quantized checkpoint; load it with ram_edge.models.checkpoint.load_checkpoint")
    quantized = _restore(Path(path), tagging_graph(model), info)
    # NNCF builds and loads its C++ kernels on the first quantized forward, printing on stdout: do it here.
    size = info.config.preprocess.image_size
    with nncf_output_to_stderr(), torch.no_grad():
        if info.source["quantization"]["method"] != "weights":
            prepare_nncf_kernels()
        quantized(torch.zeros(1, 3, size, size))
    return quantized, info


def _restore(path: Path, graph: torch.nn.Module, info: CheckpointInfo) -> torch.nn.Module:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    record: dict[str, Any] = info.source["quantization"]
    config = record.get("config") or {}
    if record["method"] == "weights":
        with nncf_output_to_stderr():
            return compress_weights(graph, config.get("weights_mode", "int8_asym"), config.get("ignored_patterns", []),
                                    config.get("ignored_types", []), info.config.preprocess.image_size).eval()
    import nncf.torch

    try:
        nncf_config = json.loads((path / NNCF_CONFIG_FILE).read_text(encoding="utf-8"))
        state = load_file(str(path / QUANTIZED_FILE))
    except (OSError, ValueError, SafetensorError) as exc:
        raise CheckpointError(f"{path}: the quantized model files are missing or corrupt ({exc}); quantize the model again") from None
    with nncf_output_to_stderr():
        quantized = nncf.torch.load_from_config(graph, nncf_config)
    try:
        quantized.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: {QUANTIZED_FILE} does not match {NNCF_CONFIG_FILE} ({exc}); quantize the model again") from None
    return quantized.eval()
