"""Options shared by the commands that run a model (tag, eval, bench)."""

from __future__ import annotations

import click

compute_precision_option = click.option(
    "--compute-precision", type=click.Choice(["fp32", "bf16", "fp16"]), default=None,
    help="Arithmetic precision, apart from the bundle's stored one [default: fp32 on a CPU; the device's own elsewhere]. "
         "OpenVINO can choose it; onnxruntime computes a graph in its own types; torch in fp32.",
)
