"""Quantize a checkpoint directory with NNCF (it is loaded back by `ram_edge.models.quantized`).

What is quantized is the tagging graph that export writes (image -> probabilities, label queries
precomputed: `ram_edge.models.tagging_graph.TaggingGraph`), not the bare RAM module: NNCF's hooks follow
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

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from ram_edge.bundle import tool_versions
from ram_edge.checkpoint_dir import WEIGHTS_FILE, CheckpointInfo, is_quantized, write_checkpoint_config
from ram_edge.errors import QuantizeError
from ram_edge.fileio import atomic_dir
from ram_edge.models.nncf_kernels import prepare_nncf_kernels
from ram_edge.models.quantized import (
    NNCF_CONFIG_FILE, QUANTIZED_FILE, compress_weights, ignored_scope, nncf_output_to_stderr, tagging_graph,
)

from .calibration import CalibrationData
from .config import QuantizeConfig


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
        "tools": tool_versions(["nncf", "torch"]),
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
            fast_bias_correction=cfg.fast_bias_correction, ignored_scope=ignored_scope(cfg.ignored_patterns, cfg.ignored_types),
            preset=nncf.QuantizationPreset.PERFORMANCE if cfg.preset == "performance" else nncf.QuantizationPreset.MIXED,
            advanced_parameters=_advanced(cfg),
        )
        state, nncf_config = graph_state(quantized)
    else:
        compress_weights(graph, cfg.weights_mode, cfg.ignored_patterns, cfg.ignored_types, image_size)  # fails here, not on load, if NNCF cannot compress this model
    return state, nncf_config


def _advanced(cfg: QuantizeConfig):
    """NNCF's advanced parameters for the config's SmoothQuant and bias-correction choices."""
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    alpha = float(cfg.smooth_quant_alpha) if cfg.smooth_quant else -1.0  # NNCF: a negative alpha turns it off
    return AdvancedQuantizationParameters(smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=alpha),
                                          disable_bias_correction=not cfg.bias_correction)


