"""`ram-edge export`: checkpoint directory -> validated bundle (ONNX, OpenVINO IR); ONNX bundle -> TensorRT engine."""

from __future__ import annotations

import json

import click



def _read_tag_names(tags: str | None, tags_file: str | None) -> list[str] | None:
    if tags is not None and tags_file is not None:
        raise click.UsageError("use either --tags or --tags-file, not both")
    if tags is not None:
        names = [t.strip() for t in tags.split(",") if t.strip()]
        where = f"--tags {tags!r}"
    elif tags_file is not None:
        from ..labels import read_lines

        names = [t.strip() for t in read_lines(tags_file, what="tag list") if t.strip()]
        where = f"--tags-file {tags_file}"
    else:
        return None
    if not names:  # an empty subset is a mistake, not a request for every tag
        raise click.UsageError(f"{where} names no tag; give the tags to keep (comma-separated or one per line)")
    return names


@click.command()
@click.argument("model", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Bundle directory to create.")
@click.option("--format", "fmt", type=click.Choice(["onnx", "openvino", "trt"]), default="onnx", show_default=True,
              help="trt: a TensorRT engine, built on this GPU from an ONNX bundle (or MODEL's ONNX, exported on the way).")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default=None,
              help="Stored precision [fp32; int8 for a quantized checkpoint (`ram-edge quantize`), the only one it exports]. "
                   "int8 for a float checkpoint needs --calib: post-training quantization on the way. "
                   "trt: the engine's precision [fp16; int8 from an INT8 ONNX bundle or a quantized checkpoint].")
@click.option("--calib", type=click.Path(), default=None,
              help="With --precision int8 on a float checkpoint: calibration images (a folder of photos or a dataset).")
@click.option("--calib-size", type=click.IntRange(min=1), default=300, show_default=True, help="Calibration images to use with --calib.")
@click.option("--tags", default=None, help="Comma-separated tag names: export only these queries.")
@click.option("--tags-file", type=click.Path(dir_okay=False), default=None, help="File with one tag name per line: export only these.")
@click.option("--vocab", type=click.Path(dir_okay=False), default=None, help="Open-set vocabulary: one tag per line, or RAM++ JSON tag -> descriptions.")
@click.option("--text-encoder", default=None,
              help="For --vocab: a local CLIP text model directory, or 'minilm' for models trained with MiniLM queries (the default model).")
@click.option("--vocab-threshold", type=click.FloatRange(0.0, 1.0), default=None, help="Threshold for --vocab tags [official open-set default].")
@click.option("--max-batch", type=click.IntRange(min=1), default=None,
              help="trt: largest batch of the engine's optimization profile [8].")
@click.option("--opt-batch", type=click.IntRange(min=1), default=None,
              help="trt: the batch TensorRT tunes its kernels for [1: a camera; give --max-batch for throughput].")
@click.option("--workspace", "workspace_mb", type=click.IntRange(min=1), default=None,
              help="trt: builder workspace in MB [TensorRT's default: the device's memory].")
@click.option("--dla-core", type=click.IntRange(min=0), default=None,
              help="trt on Jetson AGX/NX: run on this DLA core, with GPU fallback for the layers it cannot run.")
@click.option("--timing-cache", type=click.Path(dir_okay=False), default=None,
              help="trt: timing cache file, read and updated [~/.cache/ram-edge/tensorrt/, per TensorRT version and GPU].")
@click.option("--device", default=None, help="trt: the GPU to build on, cuda or cuda:N [cuda].")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def export(model, output, fmt, precision, calib, calib_size, tags, tags_file, vocab, text_encoder, vocab_threshold, max_batch,
           opt_batch, workspace_mb, dla_core, timing_cache, device, overwrite, as_json) -> None:
    """Export MODEL (a checkpoint directory) to a bundle with precomputed label queries.

    With --format trt, MODEL may also be an ONNX bundle (or a TensorRT bundle, to rebuild its engine
    for this GPU from the ONNX it keeps).
    """
    from ..export.pipeline import export as export_model, trt_options

    names = _read_tag_names(tags, tags_file)
    trt_only = {"--max-batch": max_batch is not None, "--opt-batch": opt_batch is not None, "--workspace": workspace_mb is not None,
                "--dla-core": dla_core is not None, "--timing-cache": timing_cache is not None, "--device": device is not None}
    if fmt != "trt" and any(trt_only.values()):
        raise click.UsageError(f"{', '.join(k for k, v in trt_only.items() if v)}: only with --format trt")
    trt = (trt_options(precision, max_batch, opt_batch, dla_core=dla_core, workspace_mb=workspace_mb, timing_cache=timing_cache)
           if fmt == "trt" else None)
    manifest = export_model(model, output, format=fmt, precision=precision, tags=names, vocab=vocab, text_encoder=text_encoder,
                            vocab_threshold=vocab_threshold, calib=calib, calib_size=calib_size, trt=trt, device=device,
                            overwrite=overwrite)
    if fmt == "trt" and not as_json:
        from ..export.tensorrt_format import summary

        click.echo(f"wrote {output}: {summary(manifest)}")
        return
    _report(manifest, output, fmt, as_json)


def _report(manifest: dict, output: str, fmt: str, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(manifest, ensure_ascii=False))
        return
    val = manifest["validation"]
    click.echo(
        f"wrote {output}: {fmt} {manifest['precision']}, {manifest['family']}, {len(manifest['labels']['tags'])} tags; "
        f"validated against torch at batch {val['batch_sizes']}: max |diff| {val['max_abs_diff']:.2e} (tolerance {val['tolerance']:g})"
    )
    photos = (manifest.get("quantization") or {}).get("vs_float_photos")
    if photos and "tag_set_f1" in photos:
        click.echo(f"held-out check of the written bundle ({photos['runtime']}) on {photos['images']} photo(s) not used for "
                   f"calibration: tag-set F1 {photos['tag_set_f1']:.3f} against the float model, identical tag sets "
                   f"{100 * photos['identical_sets']:.0f}%, max |dp| {photos['max_abs_diff']:.3f}", err=True)
        if not photos["passed"]:
            from ..quantize.held_out import REMEDIES

            click.echo(f"warning: the bundle's tags differ from the float model's more than agreement_threshold {photos['threshold']:g} "
                       f"allows on the held-out photos; remedies: {REMEDIES}", err=True)
    elif photos:
        click.echo(f"note: no held-out check of the bundle: {photos['skipped']}", err=True)
