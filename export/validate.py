"""Validation of every export against the source model (optimum's `validate_model_outputs` idea)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ram_edge.errors import ExportError

# Max abs difference on probabilities accepted per precision (measured; see README "Export").
# int8: against the quantized torch graph (NNCF's simulated quantization); int8 kernels round activations
# at each quantizer and can land one step away (measured on a micro model and the default model, see README).
# int8-weights: against the torch model with NNCF's 8-bit weights; onnxruntime may run the matmuls of 8-bit
# weights with dynamically quantized activations (1.7e-3 on a micro model), OpenVINO matches to 1e-5.
TOLERANCES = {"fp32": 1e-4, "fp16": 2e-2, "int8": 0.15, "int8-weights": 2e-2}


@dataclass
class ValidationReport:
    """Largest differences between the exported and the torch model."""

    output: str
    max_abs_diff: float
    tolerance: float
    batch_sizes: list[int]
    runtime: str = ""  # what ran the exported model, e.g. "onnxruntime CPU"
    compute_precision: str = ""  # what it computed in (fp32 unless the graph itself is lower)

    def to_dict(self) -> dict:
        """JSON-ready dictionary for the manifest."""
        return {"output": self.output, "max_abs_diff": self.max_abs_diff, "tolerance": self.tolerance, "batch_sizes": self.batch_sizes,
                "runtime": self.runtime, "compute_precision": self.compute_precision}


def validation_inputs(image_size: int, batch_sizes=(1, 3), seed: int = 0) -> list[np.ndarray]:
    """Deterministic image-like inputs (normalised pixel range), one array per batch size."""
    rng = np.random.default_rng(seed)
    return [rng.uniform(-2.1, 2.6, size=(b, 3, image_size, image_size)).astype(np.float32) for b in batch_sizes]


def validate_outputs(
    reference: torch.nn.Module,
    run_exported: Callable[[np.ndarray], np.ndarray],
    image_size: int,
    precision: str,
    output_name: str = "probs",
    batch_sizes=(1, 3),
    *,
    runtime: str = "",
    compute_precision: str = "",
) -> ValidationReport:
    """Run both models on the same inputs; raise ExportError naming the output and the largest difference."""
    tolerance = TOLERANCES[precision]
    worst = 0.0
    for batch in validation_inputs(image_size, batch_sizes):
        with torch.inference_mode():
            expected = reference(torch.from_numpy(batch)).numpy()
        got = np.asarray(run_exported(batch), dtype=np.float32)
        if got.shape != expected.shape:
            raise ExportError(
                f"exported output {output_name!r} has shape {got.shape} for a batch of {len(batch)}, expected {expected.shape}"
            )
        diff = float(np.nanmax(np.abs(got - expected))) if got.size else 0.0
        if not np.isfinite(got).all():
            diff = float("inf")
        worst = max(worst, diff)
    if worst > tolerance:
        raise ExportError(
            f"exported output {output_name!r} differs from the torch model by up to {worst:.3g} "
            f"(tolerance for {precision}: {tolerance:g}); no bundle was written"
        )
    return ValidationReport(output_name, worst, tolerance, list(batch_sizes), runtime, compute_precision)
