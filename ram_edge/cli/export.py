"""`ram-edge export`: checkpoint directory -> validated bundle (ONNX, OpenVINO IR); ONNX bundle -> TensorRT engine."""

from __future__ import annotations

import json

import click

from ..errors import RamEdgeError


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
    names = _read_tag_names(tags, tags_file)
    trt_only = {"--max-batch": max_batch is not None, "--opt-batch": opt_batch is not None, "--workspace": workspace_mb is not None,
                "--dla-core": dla_core is not None, "--timing-cache": timing_cache is not None, "--device": device is not None}
    if fmt != "trt" and any(trt_only.values()):
        raise click.UsageError(f"{', '.join(k for k, v in trt_only.items() if v)}: only with --format trt")
    if fmt == "trt":
        from ..export.tensorrt_format import TrtBuildOptions

        # The DLA runs one static batch: a camera's 1 unless asked, and TensorRT tunes for exactly that batch.
        max_batch = max_batch or (1 if dla_core is not None else 8)
        opt_batch = opt_batch or (max_batch if dla_core is not None else 1)
        if opt_batch > max_batch:
            raise click.UsageError(f"--opt-batch {opt_batch} is larger than --max-batch {max_batch}")
        options = TrtBuildOptions(precision=precision or "fp16", max_batch=max_batch, opt_batch=opt_batch,
                                  workspace_mb=workspace_mb, dla_core=dla_core, timing_cache=timing_cache)
        manifest = _export_trt(model, output, options, names, vocab, text_encoder, vocab_threshold, calib, calib_size, device,
                               overwrite)
        if as_json:
            click.echo(json.dumps(manifest, ensure_ascii=False))
        else:
            from ..export.tensorrt_format import summary

            click.echo(f"wrote {output}: {summary(manifest)}")
        return
    if calib is not None:
        if precision != "int8":
            raise click.UsageError("--calib is for --precision int8 (post-training quantization on the way)")
        if names or vocab:
            raise click.UsageError("--calib quantizes the whole model: it cannot be combined with --tags, --tags-file or --vocab")
        manifest = _export_int8_via_ptq(model, output, fmt, calib, calib_size, overwrite)
        _report(manifest, output, fmt, as_json)
        return
    vocab_data = None
    if vocab or text_encoder:
        if not (vocab and text_encoder):
            raise click.UsageError("--vocab and --text-encoder go together")
        if names:
            raise click.UsageError("--vocab replaces the label set; it cannot be combined with --tags/--tags-file")
        vocab_data = _vocab_embeddings(model, vocab, text_encoder, vocab_threshold)
    from ..export.writer import export_bundle

    manifest = export_bundle(model, output, fmt=fmt, precision=precision, tags=names, vocab=vocab_data, overwrite=overwrite)
    _report(manifest, output, fmt, as_json)


def _export_trt(model: str, output: str, options, names, vocab, text_encoder, vocab_threshold, calib, calib_size, device,
                overwrite: bool) -> dict:
    """A TensorRT bundle from an ONNX/TensorRT bundle, or from a checkpoint through a temporary ONNX bundle."""
    import tempfile
    from pathlib import Path

    from ..export.tensorrt_format import build_trt_bundle
    from ..fileio import refuse_existing
    from ..runtimes.tensorrt_runtime import TensorRTRuntime

    if not TensorRTRuntime.is_installed():
        raise RamEdgeError(f"--format trt needs TensorRT on this machine: {TensorRTRuntime.install_hint()}")
    if (Path(model) / "manifest.json").is_file():
        if names or vocab or calib:
            raise click.UsageError("a bundle's label set and precision are fixed: --tags, --vocab and --calib apply when MODEL is a "
                                   "checkpoint directory")
        return build_trt_bundle(model, output, options, device=device, overwrite=overwrite)
    refuse_existing(output, overwrite)  # before the ONNX export and the engine build
    _require_torch_for_checkpoint(model, output, options)
    with tempfile.TemporaryDirectory(prefix="ram-edge-trt-") as tmp:
        onnx_bundle = str(Path(tmp) / "onnx")
        if calib is not None:
            if options.precision != "int8":
                raise click.UsageError("--calib is for --precision int8 (post-training quantization on the way)")
            _export_int8_via_ptq(model, onnx_bundle, "onnx", calib, calib_size, False)
        else:
            from ..checkpoint_dir import is_quantized, read_checkpoint_dir
            from ..export.writer import export_bundle

            quantized = is_quantized(read_checkpoint_dir(model))
            if options.precision == "int8" and not quantized:
                raise RamEdgeError(f"--format trt --precision int8 needs quantized activations: pass --calib PHOTOS/ (post-training "
                                   f"quantization on the way) or a checkpoint from `ram-edge quantize {model} -o Q --calib PHOTOS/`")
            if options.precision != "int8" and quantized:
                raise RamEdgeError(f"{model} is quantized: build --precision int8 from it, or fp16 from the float checkpoint")
            vocab_data = _vocab_embeddings(model, vocab, text_encoder, vocab_threshold) if vocab else None
            export_bundle(model, onnx_bundle, fmt="onnx", precision="int8" if quantized else "fp32", tags=names, vocab=vocab_data)
        return build_trt_bundle(onnx_bundle, output, options, device=device, overwrite=overwrite)


def _require_torch_for_checkpoint(model: str, output: str, options) -> None:
    """A checkpoint reaches TensorRT through an ONNX export, which needs torch: say how to go without it."""
    import importlib.util
    import shlex
    from pathlib import Path

    if not Path(model).is_dir():
        raise RamEdgeError(f"{model}: no such bundle or checkpoint directory; give an ONNX bundle (a folder with manifest.json) "
                           f"or a checkpoint directory")
    try:
        missing = importlib.util.find_spec("torch") is None
    except (ImportError, ValueError):
        missing = True
    if missing:
        precision = "" if options.precision == "fp16" else f" --precision {options.precision}"
        raise RamEdgeError(
            f"{model} is a checkpoint directory: turning it into an engine exports an ONNX bundle first, which needs torch "
            f"(pip install 'ram-edge[export]'). Without torch here, export the ONNX bundle on a machine with the [export] extra: "
            f"`ram-edge export {shlex.quote(model)} -o BUNDLE`, copy BUNDLE here and run "
            f"`ram-edge export BUNDLE --format trt{precision} -o {shlex.quote(output)}`"
        )


def _export_int8_via_ptq(model: str, output: str, fmt: str, calib: str, calib_size: int, overwrite: bool) -> dict:
    """PTQ of a float checkpoint into a temporary quantized checkpoint, then its INT8 bundle."""
    import tempfile
    from pathlib import Path

    from ..checkpoint_dir import is_quantized, read_checkpoint_dir
    from ..export.writer import export_bundle
    from ..fileio import refuse_existing
    from ..quantize.calibration import load_calibration
    from ..quantize.config import QuantizeConfig
    from ..quantize.quantizer import quantize_checkpoint

    info = read_checkpoint_dir(model)
    if is_quantized(info):
        raise RamEdgeError(f"{model} is already quantized; export it without --calib")
    from ..quantize.held_out import extra_images, held_out_check, record_held_out, split_held_out

    refuse_existing(output, overwrite)  # before minutes of calibration
    cfg = QuantizeConfig(method="ptq", calib_size=calib_size)
    data = load_calibration(calib, info.config.preprocess, calib_size + extra_images(cfg))
    if data.unreadable:
        click.echo(f"warning: {data.unreadable} calibration image(s) could not be read and were skipped "
                   f"(first: {data.examples_unreadable[0]})", err=True)
    data, check = split_held_out(data, cfg)
    with tempfile.TemporaryDirectory(prefix="ram-edge-ptq-") as tmp:
        quantized = Path(tmp) / f"{Path(model).name}-ptq"
        quantize_checkpoint(model, quantized, cfg, data)
        if check is not None:  # recorded for export_bundle, which checks the written bundle on the same photos
            record_held_out(quantized, held_out_check(model, quantized, check, cfg))
        return export_bundle(quantized, output, fmt=fmt, precision="int8", overwrite=overwrite)


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


def _vocab_embeddings(model: str, vocab: str, text_encoder: str, threshold: float | None):
    """(tags, embeddings, threshold) for an open-set vocabulary, in the checkpoint's label-query space."""
    from ..checkpoint_dir import read_checkpoint_dir
    from ..models.queries import vocab as vocab_mod

    from ..models.queries.space import MINILM, check_clip_space, minilm_vocab_embeddings

    info = read_checkpoint_dir(model)
    config = info.config
    names, descriptions = vocab_mod.read_vocab(vocab)
    threshold = vocab_mod.DEFAULT_OPEN_SET_THRESHOLD if threshold is None else threshold
    if text_encoder == MINILM:
        if descriptions:
            raise RamEdgeError(f"{vocab}: tag descriptions need a CLIP text encoder; give one tag per line for --text-encoder minilm")
        return names, minilm_vocab_embeddings(info, names), threshold
    check_clip_space(info)
    encoder = vocab_mod.ClipTextEncoder(text_encoder)
    if config.family == "ram_plus":
        # The checkpoint's layout (des_per_class rows per tag), so the per-image mixing stays as trained;
        # a tag without descriptions repeats its prompt-ensemble embedding, which the mixing returns unchanged.
        embed = vocab_mod.description_embeddings(encoder, names, descriptions or {}, per_tag=config.des_per_class)
    else:
        if descriptions:
            raise RamEdgeError(f"{vocab}: tag descriptions are for RAM++ models; {model} is a RAM model (give one tag per line)")
        embed = vocab_mod.tag_embeddings(encoder, names)
    return names, embed, threshold
