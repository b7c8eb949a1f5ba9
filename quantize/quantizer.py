"""Quantize a checkpoint directory with NNCF and load it back exactly.

What is quantized is the tagging graph that export writes (image -> probabilities, label queries
precomputed: `ram_edge.export.graph.TaggingGraph`), not the bare RAM module: NNCF's hooks follow
the traced `forward`, and the bundle's graph calls the encoder and the head directly.

A quantized checkpoint directory is an ordinary one (config.json, labels, and the *float*
model.safetensors it came from, so that tools reading float weights still work) plus:
- config.json `source.quantization`: method, config, calibration summary, tool versions;
- PTQ: `nncf_config.json` (nncf.torch.get_config) and `quantized.safetensors` (the NNCF model's
  state: SmoothQuant-rescaled weights and quantizer parameters), reloaded with
  nncf.torch.load_from_config + load_state_dict, which is exact;
- weights-only: nothing more: 8-bit weight compression is data-free and deterministic, so it is
  applied again on load.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from ram_edge.checkpoint_dir import WEIGHTS_FILE, CheckpointInfo, is_quantized, write_checkpoint_config
from ram_edge.errors import CheckpointError, QuantizeError
from ram_edge.export.writer import _versions
from ram_edge.fileio import atomic_dir

from .calibration import CalibrationData
from .config import QuantizeConfig
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
    from ram_edge.export.graph import TaggingGraph

    return TaggingGraph(model, model.label_embed.detach()).eval()


def _ignored_scope(cfg: QuantizeConfig):
    import nncf

    if not (cfg.ignored_patterns or cfg.ignored_types):
        return None
    # validate=False: a pattern that matches nothing in this architecture is not an error.
    return nncf.IgnoredScope(patterns=list(cfg.ignored_patterns), types=list(cfg.ignored_types), validate=False)


def _compress_weights(graph: torch.nn.Module, cfg: QuantizeConfig, image_size: int) -> torch.nn.Module:
    import nncf

    example = nncf.Dataset([torch.zeros(1, 3, image_size, image_size)])  # traced only: the compression is data-free
    return nncf.compress_weights(graph, mode=nncf.CompressWeightsMode(cfg.weights_mode), ignored_scope=_ignored_scope(cfg),
                                 dataset=example)


def quantize_checkpoint(model_dir: str | Path, out_dir: str | Path, cfg: QuantizeConfig, calib: CalibrationData | None,
                        *, overwrite: bool = False) -> dict[str, Any]:
    """Quantize the checkpoint at `model_dir` into a quantized checkpoint directory; returns what config.json records."""
    from ram_edge.models.checkpoint import load_checkpoint

    model, info = load_checkpoint(model_dir)
    if is_quantized(info):
        raise QuantizeError(f"{model_dir} is already quantized ({info.source['quantization']['method']}); "
                            f"quantize the float checkpoint it came from")
    with nncf_output_to_stderr():
        state, nncf_config = _quantize(tagging_graph(model), cfg, calib, info.config.preprocess.image_size)
    record = quantization_record(model_dir, info, cfg, calib.summary() if calib is not None else None)
    write_quantized(out_dir, info, record, state, nncf_config, overwrite=overwrite)
    return record


def quantization_record(model_dir: str | Path, info: CheckpointInfo, cfg: QuantizeConfig, calibration: dict | None,
                        **extra: Any) -> dict[str, Any]:
    """What a quantized checkpoint's config.json records under `source.quantization`."""
    return {
        "method": cfg.method,
        "config": cfg.to_dict(),
        "calibration": calibration,
        "graph": "tagging graph (image -> probabilities, label queries precomputed)",
        "from": {"checkpoint": str(Path(model_dir)), "kind": (info.source or {}).get("kind")},
        "tools": _versions(["nncf", "torch"]),
        **extra,
    }


def graph_state(quantized: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, NNCF config) of a quantized graph, ready to save."""
    import nncf.torch

    # safetensors refuses shared storage (tied weights); load_state_dict restores the ties.
    state = {k: v.detach().cpu().clone().contiguous() for k, v in quantized.state_dict().items()}
    return state, nncf.torch.get_config(quantized)


def write_quantized(out_dir: str | Path, info: CheckpointInfo, record: dict[str, Any], state: dict | None,
                    nncf_config: dict | None, *, overwrite: bool = False) -> Path:
    """Write a quantized checkpoint directory atomically: float weights, labels, config.json, NNCF state."""
    from safetensors.torch import save_file

    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        shutil.copyfile(info.weights_path, tmp / WEIGHTS_FILE)
        info.labels.save_dir(tmp)
        write_checkpoint_config(tmp, info.config, {**(info.source or {}), "quantization": record})
        if state is not None:
            save_file(state, str(tmp / QUANTIZED_FILE), metadata={"format": "pt"})
            # safetensors creates it private (0600): a checkpoint copied to a device and run by a service account must read it.
            (tmp / QUANTIZED_FILE).chmod((tmp / WEIGHTS_FILE).stat().st_mode & 0o777 | 0o444)
            (tmp / NNCF_CONFIG_FILE).write_text(json.dumps(nncf_config), encoding="utf-8")
    return Path(out_dir)


def _quantize(graph: torch.nn.Module, cfg: QuantizeConfig, calib: CalibrationData | None, image_size: int):
    """(state dict, NNCF config) of the PTQ graph; (None, None) for weights-only, which is redone on load."""
    import nncf

    state: dict[str, torch.Tensor] | None = None
    nncf_config: dict[str, Any] | None = None
    if cfg.method in ("ptq", "qat"):  # qat starts from PTQ (quantize/qat.py)
        if calib is None:
            raise QuantizeError("post-training quantization needs calibration images: pass --calib DATA")
        dataset = nncf.Dataset([torch.from_numpy(image[None]) for image in calib.images])
        prepare_nncf_kernels()  # bias correction runs the fake-quantized graph
        quantized = nncf.quantize(
            graph, dataset, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calib.images),
            fast_bias_correction=cfg.fast_bias_correction, ignored_scope=_ignored_scope(cfg),
            preset=nncf.QuantizationPreset.PERFORMANCE if cfg.preset == "performance" else nncf.QuantizationPreset.MIXED,
            advanced_parameters=_advanced(cfg),
        )
        state, nncf_config = graph_state(quantized)
    else:
        _compress_weights(graph, cfg, image_size)  # fails here, not on load, if NNCF cannot compress this model
    return state, nncf_config


def _advanced(cfg: QuantizeConfig):
    """NNCF's advanced parameters for the config's SmoothQuant and bias-correction choices."""
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    alpha = float(cfg.smooth_quant_alpha) if cfg.smooth_quant else -1.0  # NNCF: a negative alpha turns it off
    return AdvancedQuantizationParameters(smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=alpha),
                                          disable_bias_correction=not cfg.bias_correction)


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

    cfg = QuantizeConfig.from_dict(info.source["quantization"]["config"])
    if cfg.method == "weights":
        with nncf_output_to_stderr():
            return _compress_weights(graph, cfg, info.config.preprocess.image_size).eval()
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

