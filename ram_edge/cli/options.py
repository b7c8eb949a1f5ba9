"""Options shared by the commands that run a model (tag, eval, bench)."""

from __future__ import annotations

import click

compute_precision_option = click.option(
    "--compute-precision", type=click.Choice(["fp32", "bf16", "fp16"]), default=None,
    help="Arithmetic precision, apart from the bundle's stored one [default: fp32 on a CPU; the device's own elsewhere]. "
         "OpenVINO can choose it; onnxruntime computes a graph in its own types; torch in fp32.",
)


def model_options(func):
    """--model, --runtime, --device and --threads, as `tag` and `watch` take them."""
    for option in reversed([
        click.option("--model", "model", default=None, envvar="RAM_EDGE_MODEL", type=click.Path(),
                     help="Checkpoint directory or bundle [env RAM_EDGE_MODEL; default: the shipped emoji-scene model]."),
        click.option("--runtime", default="auto", show_default=True, help="Backend: auto, torch, ort, openvino, trt."),
        click.option("--device", default=None, help="Device for the runtime (e.g. cpu, cuda, cuda:1, GPU, NPU)."),
        click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads for the runtime."),
    ]):
        func = option(func)
    return func
