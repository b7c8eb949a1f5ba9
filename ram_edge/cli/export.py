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
              help="Stored precision [fp32; int8 for a quantized checkpoint (`ram-edge quantize`), the only one it exports].")
@click.option("--tags", default=None, help="Comma-separated tag names: export only these queries.")
@click.option("--tags-file", type=click.Path(dir_okay=False), default=None, help="File with one tag name per line: export only these.")
@click.option("--vocab", type=click.Path(dir_okay=False), default=None, help="Open-set vocabulary: one tag per line, or RAM++ JSON tag -> descriptions.")
@click.option("--text-encoder", default=None,
              help="For --vocab: a local CLIP text model directory, or 'minilm' for models trained with MiniLM queries (the default model).")
@click.option("--vocab-threshold", type=click.FloatRange(0.0, 1.0), default=None, help="Threshold for --vocab tags [official open-set default].")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def export(model, output, fmt, precision, tags, tags_file, vocab, text_encoder, vocab_threshold, overwrite, as_json) -> None:
    """Export MODEL (a checkpoint directory) to a bundle with precomputed label queries."""
    from ..export.writer import export_bundle

    names = _read_tag_names(tags, tags_file)
    vocab_data = None
    if vocab or text_encoder:
        if not (vocab and text_encoder):
            raise click.UsageError("--vocab and --text-encoder go together")
        if names:
            raise click.UsageError("--vocab replaces the label set; it cannot be combined with --tags/--tags-file")
        vocab_data = _vocab_embeddings(model, vocab, text_encoder, vocab_threshold)
    manifest = export_bundle(model, output, fmt=fmt, precision=precision, tags=names, vocab=vocab_data, overwrite=overwrite)
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
