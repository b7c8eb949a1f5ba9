"""`ram-edge quantize`: checkpoint directory -> quantized checkpoint directory (NNCF)."""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import click


@click.command()
@click.argument("model", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Quantized checkpoint directory to create.")
@click.option("--method", type=click.Choice(["ptq", "qat", "weights"]), default=None,
              help="ptq: int8 weights and activations (NNCF post-training quantization, transformer preset); "
                   "qat: ptq, then quantization-aware fine-tuning on --calib (distillation from MODEL, no labels needed); "
                   "weights: 8-bit weights, float compute (no calibration).  [default: ptq, or the config's]")
@click.option("--calib", "calib", type=click.Path(), default=None,
              help="Calibration (and QAT training) images: a folder of photos (searched recursively), a JSONL / official "
                   "JSON dataset or WebDataset shards.")
@click.option("--calib-size", type=click.IntRange(min=1), default=None, help="Calibration images to use [config: 300].")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="QAT optimizer steps [config qat.steps: 300].")
@click.option("--run-dir", type=click.Path(file_okay=False), default=None,
              help="QAT: where the PTQ starting point, checkpoints and log go; an interrupted run resumes from it  [default: OUTPUT.qat-run].")
@click.option("--stop-at", type=click.IntRange(min=1), default=None, help="QAT: stop at this step (same schedule); run again to go on.")
@click.option("--report", is_flag=True,
              help="PTQ/QAT: measure how much quantizing each operation alone moves the outputs (OUTPUT/sensitivity.json).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None, help="Quantization config (YAML/JSON; quantize/config.py lists the fields).")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print what the quantized checkpoint records, as JSON.")
def quantize(model, output, method, calib, calib_size, steps, run_dir, stop_at, report, config_path, overwrite, as_json) -> None:
    """Quantize MODEL (a checkpoint directory) into OUTPUT, which `export`, `eval` and `tag --runtime torch` take like any checkpoint.

    `ram-edge export OUTPUT` then writes an INT8 ONNX or OpenVINO bundle.
    """
    from ..checkpoint_dir import read_checkpoint_dir
    from ..errors import QuantizeError
    from ..fileio import refuse_existing
    from ..quantize.calibration import load_calibration
    from ..quantize.config import QuantizeConfig

    cfg = QuantizeConfig.from_file(config_path) if config_path else QuantizeConfig()
    overrides = {"method": method, "calib_size": calib_size}
    cfg = dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})  # validated again
    if steps is not None:
        cfg = dataclasses.replace(cfg, qat=dataclasses.replace(cfg.qat, steps=steps))
    if cfg.method != "qat" and (steps or run_dir or stop_at):
        raise click.UsageError("--steps, --run-dir and --stop-at are for --method qat")
    if report and cfg.method == "weights":
        raise click.UsageError("--report measures activation and weight quantizers: use it with --method ptq or qat")
    info = read_checkpoint_dir(model)  # a bad MODEL fails before the calibration images are read
    refuse_existing(output, overwrite)
    data = check = None
    if cfg.method in ("ptq", "qat"):
        from ..quantize.held_out import extra_images, split_held_out

        if not calib:
            raise QuantizeError(f"--method {cfg.method} needs calibration images: pass --calib with a folder of your photos or a dataset")
        data = load_calibration(calib, info.config.preprocess, cfg.calib_size + extra_images(cfg), seed=cfg.seed)
        if data.unreadable:
            click.echo(f"warning: {data.unreadable} calibration image(s) could not be read and were skipped "
                       f"(first: {data.examples_unreadable[0]})", err=True)
        data, check = split_held_out(data, cfg)
    if cfg.method == "qat":
        from ..quantize.qat import quantization_aware_training

        try:
            quantization_aware_training(model, output, cfg, calib, data, run_dir=run_dir, overwrite=overwrite,
                                        stop_at=stop_at)
        except KeyboardInterrupt as exc:
            click.echo(_qat_interrupted(exc, run_dir or f"{output}.qat-run"), err=True)
            sys.exit(getattr(exc, "exit_code", 130))
        if not os.path.isdir(output):  # stopped early with --stop-at: the run resumes
            return
        record = read_checkpoint_dir(output).source["quantization"]
    else:
        from ..quantize.quantizer import quantize_checkpoint

        record = quantize_checkpoint(model, output, cfg, data, overwrite=overwrite)
    if check is not None:
        record["held_out"] = _held_out(model, output, check, cfg)
    sensitivity = _sensitivity(output, data, as_json) if report else None
    if as_json:
        click.echo(json.dumps({**record, **({"sensitivity": sensitivity} if sensitivity else {})}))
        return
    what = f"calibrated on {record['calibration']['images']} images from {calib}" if data is not None else "no calibration needed"
    if cfg.method == "qat":
        what += f", then {record['qat']['steps']} QAT steps"
    click.echo(f"wrote {output}: {cfg.method} ({what}); export it with `ram-edge export {output} -o BUNDLE` or run it with --runtime torch")


def _held_out(model: str, output: str, check, cfg) -> dict:
    """Run the held-out check, record it in OUTPUT, print its line (and the warning below the threshold) on stderr."""
    from ..quantize.held_out import held_out_check, line, record_held_out, warning

    result = held_out_check(model, output, check, cfg, seen_in_training=cfg.method == "qat")
    record_held_out(output, result)
    click.echo(line(result), err=True)
    message = warning(result)
    if message:
        click.echo(message, err=True)
    return result


def _qat_interrupted(exc: KeyboardInterrupt, run_dir: str) -> str:
    """Where an interrupted QAT run stands and how it goes on."""
    from pathlib import Path

    from ..errors import Terminated
    from ..training.loop import checkpoint_step, latest_checkpoint

    what = "terminated" if isinstance(exc, Terminated) else "interrupted"
    ckpt = latest_checkpoint(Path(run_dir))
    if ckpt is None:
        return f"{what} before the first QAT checkpoint; running the same command again starts QAT over from {run_dir}"
    step = checkpoint_step(ckpt)
    return (f"{what}; the last QAT checkpoint is {ckpt} (step {step}), later steps are lost; run the same command "
            "again to resume from it")


def _sensitivity(output: str, data, quiet: bool) -> dict:
    """Per-operation sensitivity of the quantized checkpoint on (up to 64 of) its calibration images."""
    from pathlib import Path

    from ..fileio import atomic_file
    from ..models.quantized import load_quantized, nncf_output_to_stderr
    from ..quantize.sensitivity import format_report, sensitivity_report

    graph, info = load_quantized(output)
    with nncf_output_to_stderr():
        result = sensitivity_report(graph, data.images[:64], info.labels)
    with atomic_file(Path(output) / "sensitivity.json", "w") as fh:
        fh.write(json.dumps(result, indent=1))
    if not quiet:
        click.echo(format_report(result))
    return result
