"""`ram-edge export`: checkpoint directory -> validated bundle (ONNX, OpenVINO IR)."""

from __future__ import annotations

import json

import click

from ..errors import RamEdgeError


def _read_tag_names(tags: str | None, tags_file: str | None) -> list[str] | None:
    if tags and tags_file:
        raise click.UsageError("use either --tags or --tags-file, not both")
    if tags:
        return [t.strip() for t in tags.split(",") if t.strip()]
    if tags_file:
        from ..labels import read_lines

        return [t.strip() for t in read_lines(tags_file) if t.strip()]
    return None


@click.command()
@click.argument("model", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Bundle directory to create.")
@click.option("--format", "fmt", type=click.Choice(["onnx", "openvino"]), default="onnx", show_default=True)
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default=None,
              help="Stored precision [fp32; int8 for a quantized checkpoint (`ram-edge quantize`), the only one it exports]. "
                   "int8 for a float checkpoint needs --calib: post-training quantization on the way.")
@click.option("--calib", type=click.Path(), default=None,
              help="With --precision int8 on a float checkpoint: calibration images (a folder of photos or a dataset).")
@click.option("--calib-size", type=click.IntRange(min=1), default=300, show_default=True, help="Calibration images to use with --calib.")
@click.option("--tags", default=None, help="Comma-separated tag names: export only these queries.")
@click.option("--tags-file", type=click.Path(dir_okay=False), default=None, help="File with one tag name per line: export only these.")
@click.option("--vocab", type=click.Path(dir_okay=False), default=None, help="Open-set vocabulary: one tag per line, or RAM++ JSON tag -> descriptions.")
@click.option("--text-encoder", default=None,
              help="For --vocab: a local CLIP text model directory, or 'minilm' for models trained with MiniLM queries (the default model).")
@click.option("--vocab-threshold", type=click.FloatRange(0.0, 1.0), default=None, help="Threshold for --vocab tags [official open-set default].")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def export(model, output, fmt, precision, calib, calib_size, tags, tags_file, vocab, text_encoder, vocab_threshold, overwrite,
           as_json) -> None:
    """Export MODEL (a checkpoint directory) to a bundle with precomputed label queries."""
    from ..export.writer import export_bundle

    names = _read_tag_names(tags, tags_file)
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
    manifest = export_bundle(model, output, fmt=fmt, precision=precision, tags=names, vocab=vocab_data, overwrite=overwrite)
    _report(manifest, output, fmt, as_json)


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
    refuse_existing(output, overwrite)  # before minutes of calibration
    data = load_calibration(calib, info.config.preprocess, calib_size)
    if data.unreadable:
        click.echo(f"warning: {data.unreadable} calibration image(s) could not be read and were skipped "
                   f"(first: {data.examples_unreadable[0]})", err=True)
    with tempfile.TemporaryDirectory(prefix="ram-edge-ptq-") as tmp:
        quantized = Path(tmp) / f"{Path(model).name}-ptq"
        quantize_checkpoint(model, quantized, QuantizeConfig(method="ptq", calib_size=calib_size), data)
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


def _vocab_embeddings(model: str, vocab: str, text_encoder: str, threshold: float | None):
    """(tags, embeddings, threshold) for an open-set vocabulary, in the checkpoint's label-query space."""
    from ..checkpoint_dir import read_checkpoint_dir
    from ..export import vocab as vocab_mod

    from ..export.query_space import MINILM, check_clip_space, minilm_vocab_embeddings

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
