"""`ram-edge quantize`: checkpoint directory -> quantized checkpoint directory (NNCF)."""

from __future__ import annotations

import dataclasses
import json

import click


@click.command()
@click.argument("model", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Quantized checkpoint directory to create.")
@click.option("--method", type=click.Choice(["ptq", "weights"]), default=None,
              help="ptq: int8 weights and activations (NNCF post-training quantization, transformer preset); "
                   "weights: 8-bit weights, float compute (no calibration).  [default: ptq, or the config's]")
@click.option("--calib", "calib", type=click.Path(), default=None,
              help="Calibration images: a folder of photos (searched recursively), a JSONL / official JSON dataset or WebDataset shards.")
@click.option("--calib-size", type=click.IntRange(min=1), default=None, help="Calibration images to use [config: 300].")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None, help="Quantization config (YAML/JSON; quantize/config.py lists the fields).")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print what the quantized checkpoint records, as JSON.")
def quantize(model, output, method, calib, calib_size, config_path, overwrite, as_json) -> None:
    """Quantize MODEL (a checkpoint directory) into OUTPUT, which `--runtime torch`, `tag` and `eval` run like any checkpoint.

    `ram-edge export OUTPUT` then writes INT8 ONNX / OpenVINO bundles (ptq). Quantization-aware fine-tuning is not built yet.
    """
    from ..checkpoint_dir import read_checkpoint_dir
    from ..errors import QuantizeError
    from ..quantize.calibration import load_calibration
    from ..quantize.config import QuantizeConfig
    from ..quantize.quantizer import quantize_checkpoint

    cfg = QuantizeConfig.from_file(config_path) if config_path else QuantizeConfig()
    overrides = {"method": method, "calib_size": calib_size}
    cfg = dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})  # validated again
    info = read_checkpoint_dir(model)  # a bad MODEL fails before the calibration images are read
    data = None
    if cfg.method == "ptq":
        if not calib:
            raise QuantizeError("--method ptq needs calibration images: pass --calib with a folder of your photos or a dataset")
        data = load_calibration(calib, info.config.preprocess, cfg.calib_size, seed=cfg.seed)
        if data.unreadable:
            click.echo(f"warning: {data.unreadable} calibration image(s) could not be read and were skipped "
                       f"(first: {data.examples_unreadable[0]})", err=True)
    record = quantize_checkpoint(model, output, cfg, data, overwrite=overwrite)
    if as_json:
        click.echo(json.dumps(record))
        return
    what = f"calibrated on {record['calibration']['images']} images from {calib}" if data is not None else "no calibration needed"
    click.echo(f"wrote {output}: {cfg.method} ({what}); run it with --runtime torch")
