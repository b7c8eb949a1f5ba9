"""The held-out check of `ram-edge quantize`: how much INT8 changed the tags on the user's own photos.

A seeded share of the calibration source is kept out of calibration; after quantizing, the float model
and the quantized one tag those images and `ram_edge.compare.compare_scores` (the figures of `ram-edge
compare`) says how far apart they are. The result goes on the console, into the quantized checkpoint's
record (`source.quantization.held_out`) and, at export, into the bundle manifest for the written bundle
on its runtime. Below the threshold a warning names the remedies; it never fails the command.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ram_edge.errors import QuantizeError

from .calibration import CalibrationData
from .config import QuantizeConfig

REMEDIES = ("quantization-aware fine-tuning (--method qat), leaving the most sensitive operations in float (ignored_patterns "
            "in --config, from `ram-edge quantize --report`), or SmoothQuant off (smooth_quant: false in --config)")
BATCH = 16


def extra_images(cfg: QuantizeConfig) -> int:
    """How many images to read beyond calib_size so that held_out_fraction of all of them can be held out."""
    if cfg.held_out_fraction <= 0 or cfg.method == "weights":
        return 0
    share = math.ceil(cfg.calib_size * cfg.held_out_fraction / (1 - cfg.held_out_fraction))
    return max(cfg.held_out_min, share)


def held_out_count(total: int, cfg: QuantizeConfig) -> int:
    """Images of `total` to hold out: the configured share, at least held_out_min; from a small source, 1 in 5."""
    if cfg.held_out_fraction <= 0:
        return 0
    count = max(cfg.held_out_min, round(total * cfg.held_out_fraction))
    return count if total - count >= count else total // 5


def split_held_out(data: CalibrationData, cfg: QuantizeConfig) -> tuple[CalibrationData, CalibrationData | None]:
    """(calibration images, held-out images or None); the images come in a seeded random order, so the last ones are a
    random sample. Calibration keeps at most calib_size."""
    count = held_out_count(len(data.images), cfg)
    if count == 0:
        return data, None
    keep = min(len(data.images) - count, cfg.calib_size)
    names = data.names or [f"image {i}" for i in range(len(data.images))]
    calib = CalibrationData(data.images[:keep], data.source, data.kind, data.unreadable, data.examples_unreadable, names[:keep])
    check = CalibrationData(data.images[-count:], data.source, data.kind, 0, [], names[-count:])
    return calib, check


def _probs(graph, images: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return np.concatenate([graph(torch.from_numpy(images[i:i + BATCH])).numpy() for i in range(0, len(images), BATCH)])


def float_probs(model_dir: str | Path, images: np.ndarray) -> np.ndarray:
    """The float checkpoint's probabilities on `images` (preprocessed)."""
    from ram_edge.models.checkpoint import load_checkpoint

    from ram_edge.models.quantized import tagging_graph

    model, _ = load_checkpoint(model_dir)
    return _probs(tagging_graph(model), images)


def held_out_check(model_dir: str | Path, quantized_dir: str | Path, check: CalibrationData, cfg: QuantizeConfig, *,
                   seen_in_training: bool = False) -> dict[str, Any]:
    """Agreement of the quantized checkpoint (NNCF's fake-quantized graph on torch) with the float one on `check`."""
    from ram_edge.compare import compare_scores

    from ram_edge.models.quantized import load_quantized, nncf_output_to_stderr

    reference = float_probs(model_dir, check.images)
    with nncf_output_to_stderr():
        quantized, info = load_quantized(quantized_dir)
        probs = _probs(quantized, check.images)
    agreement = compare_scores(reference, probs, info.labels, images=check.names)
    return summary(agreement, check, cfg, "torch (the quantized checkpoint, NNCF's fake-quantized graph)", seen_in_training)


def summary(agreement, check: CalibrationData, cfg: QuantizeConfig, runtime: str, seen_in_training: bool = False) -> dict[str, Any]:
    """The record of a held-out check: the agreement figures, the images, and whether they pass the threshold."""
    reloadable = [n for n in check.names if Path(n).is_file()]
    record = {
        "images": agreement.images, "source": check.source, "runtime": runtime,
        "tag_set_f1": agreement.tag_set_f1, "identical_sets": agreement.identical_sets,
        "max_abs_diff": agreement.max_abs_diff, "p99_abs_diff": agreement.p99_abs_diff,
        "gained": [{"tag": t, "count": c} for t, c in agreement.gained[:5]],
        "lost": [{"tag": t, "count": c} for t, c in agreement.lost[:5]],
        "threshold": float(cfg.agreement_threshold), "passed": agreement.tag_set_f1 >= cfg.agreement_threshold,
        # Paths let `ram-edge export` check the written bundle on the same photos (and `ram-edge compare` reproduce this).
        "image_paths": reloadable if len(reloadable) == len(check.names) else None,
    }
    if seen_in_training:
        record["note"] = "held out of calibration; QAT training reads the whole --calib source, so it saw these images"
    return record


def record_held_out(quantized_dir: str | Path, check: dict[str, Any]) -> None:
    """Add the check to the quantized checkpoint's config.json (source.quantization.held_out), atomically."""
    from ram_edge.checkpoint_dir import read_checkpoint_dir, write_checkpoint_config

    info = read_checkpoint_dir(quantized_dir)
    source = dict(info.source or {})
    if "quantization" not in source:
        raise QuantizeError(f"{quantized_dir} is not a quantized checkpoint; nothing to record the held-out check in")
    source["quantization"] = {**source["quantization"], "held_out": json.loads(json.dumps(check))}
    write_checkpoint_config(quantized_dir, info.config, source)


def line(check: dict[str, Any], what: str = "the quantized model") -> str:
    """One console line with the figures."""
    return (f"held-out check of {what} on {check['images']} image(s) not used for calibration: tag-set F1 "
            f"{check['tag_set_f1']:.3f} against the float model, identical tag sets {100 * check['identical_sets']:.0f}%, "
            f"max |dp| {check['max_abs_diff']:.3f}")


def warning(check: dict[str, Any]) -> str | None:
    """The one-line warning when the check is below its threshold (None when it passes)."""
    if check["passed"]:
        return None
    return (f"warning: INT8 changed the tags on held-out images more than agreement_threshold {check['threshold']:g} allows "
            f"(tag-set F1 {check['tag_set_f1']:.3f}); remedies: {REMEDIES}")
