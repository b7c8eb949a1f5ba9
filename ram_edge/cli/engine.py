"""`ram-edge engine generate|clean`: the data engine (RAM's step 3) on annotation files that training reads."""

from __future__ import annotations

import json

import click


@click.group()
def engine() -> None:
    """The data engine: add missing tags with a baseline model (generate), remove wrong ones (clean).

    Both read a JSONL dataset (a folder with annotations.jsonl, or the .jsonl file) or an official annotation
    JSON, and write OUTPUT/annotations.jsonl (image paths relative to OUTPUT, the originals' fields kept, the tags
    replaced, their provenance in "tag_sources"), OUTPUT/labels.tsv and OUTPUT/engine.json (counts). Train on the
    result with data.kind jsonl, data.path OUTPUT and data.tags_from given.
    """


def _data_options(func):
    func = click.option("--image-root", type=click.Path(file_okay=False), default=None,
                        help="Folder the image paths are relative to [default: the annotation file's folder].")(func)
    func = click.option("--labels", type=click.Path(dir_okay=False), default=None,
                        help="Label system (TSV with synonyms) to parse captions with [default: the model's tags].")(func)
    func = click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")(func)
    func = click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")(func)
    return func


def _shard_options(func):
    func = click.option("--keep-work", is_flag=True, help="Keep --work-dir after success.")(func)
    func = click.option("--restart", is_flag=True, help="Discard the shards in --work-dir and start again.")(func)
    func = click.option("--work-dir", type=click.Path(file_okay=False), default=None,
                        help="Where finished shards are kept; re-running the same command resumes from them "
                             "[default: OUTPUT.engine-work].")(func)
    func = click.option("--shard-size", type=click.IntRange(min=1), default=1000, show_default=True,
                        help="Images per resumable shard.")(func)
    return func


def _report(summary: dict, as_json: bool, out: str) -> None:
    if as_json:
        click.echo(json.dumps(summary))
        return
    line = (f"wrote {out}: {summary['images']} images, tags per image {summary['tags_per_image_before']:.2f} -> "
            f"{summary['tags_per_image_after']:.2f}")
    if summary["step"] == "clean":
        dropped = summary["dropped"]
        line += (f"; {summary['regions_embedded']} regions; dropped {dropped['outlier']} outlier, "
                 f"{dropped['contrary']} contrary, {dropped['unlocated']} unlocated")
    else:
        line += f" ({summary['tags_added']} tags added)"
    if summary["unreadable"]:
        line += f"; {summary['unreadable']} unreadable images kept as they were (listed in engine.json)"
    click.echo(line)


@engine.command()
@click.argument("data", type=click.Path(exists=True))
@click.option("--model", required=True, type=click.Path(exists=True), help="Baseline model: a checkpoint directory or bundle.")
@click.option("-o", "--output", "output", required=True, type=click.Path(file_okay=False), help="Folder to write.")
@click.option("--tags-from", type=click.Choice(["parse", "given"]), default="parse", show_default=True,
              help="The original tags: parsed from the captions, or the rows' own \"tags\".")
@click.option("--margin", type=float, default=0.0, show_default=True,
              help="Added to each tag's own threshold: a positive margin keeps only more confident predictions.")
@click.option("--threshold", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="One threshold for every tag instead of the model's own.")
@click.option("--captions/--no-captions", "captions", default=None,
              help="Generate captions with the checkpoint's caption decoder and parse them [default: when it has one].")
@click.option("--runtime", default="auto", show_default=True, help="Backend for tagging: auto, torch, ort, openvino, trt.")
@click.option("--device", default=None, help="Device for the runtime (e.g. cpu, cuda, cuda:1, GPU).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@_shard_options
@_data_options
def generate(data, model, output, tags_from, margin, threshold, captions, runtime, device, batch_size, shard_size, work_dir,
             restart, keep_work, image_root, labels, overwrite, as_json) -> None:
    """Add the tags MODEL predicts with confidence (and parsed generated captions) to DATA's annotations."""
    from ram_edge.training.engine.generate import GenerateOptions, generate as run

    options = GenerateOptions(tags_from=tags_from, margin=margin, threshold=threshold, batch_size=batch_size,
                              shard_size=shard_size, captions="auto" if captions is None else "on" if captions else "off")
    summary = run(data, model, output, labels=labels, options=options, runtime=runtime, device=device, image_root=image_root,
                  overwrite=overwrite, work_dir=work_dir, restart=restart, keep_work=keep_work)
    _report(summary, as_json, output)


@engine.command()
@click.argument("data", type=click.Path(exists=True))
@click.option("--model", required=True, type=click.Path(exists=True, file_okay=False),
              help="Baseline checkpoint directory (its image encoder embeds the regions).")
@click.option("--regions", required=True, type=click.Path(exists=True),
              help="Regions: COCO-style JSON (a detector's boxes) or JSONL rows with \"boxes\" and \"box_tags\".")
@click.option("-o", "--output", "output", required=True, type=click.Path(file_okay=False), help="Folder to write.")
@click.option("--tags-from", type=click.Choice(["parse", "given"]), default="given", show_default=True,
              help="The tags to clean: the rows' own \"tags\" (e.g. generate's output), or parsed from the captions.")
@click.option("--outlier-fraction", type=click.FloatRange(0, 1, max_open=True), default=0.1, show_default=True,
              help="Per category, the share of regions farthest from their k-means++ centre that are outliers.")
@click.option("--clusters", type=click.IntRange(min=1), default=3, show_default=True, help="k-means clusters per category (at most one per --min-regions regions).")
@click.option("--min-regions", type=click.IntRange(min=1), default=20, show_default=True, help="Categories with fewer regions are not clustered.")
@click.option("--region-check/--no-region-check", default=True, show_default=True,
              help="Drop tags that the model does not predict on any of their own regions.")
@click.option("--region-threshold", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="Probability a region needs for its tag [default: the model's per-tag thresholds].")
@click.option("--unlocated", type=click.Choice(["keep", "drop"]), default="keep", show_default=True,
              help="Tags with no region in their image, of categories the regions file knows.")
@click.option("--context", type=click.FloatRange(min=1), default=2.0, show_default=True,
              help="Crop a square of this many times the box's longer side around it (1: the box itself).")
@click.option("--min-score", type=float, default=0.0, show_default=True, help="Ignore regions with a lower detector score.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True, help="Crops per forward pass.")
@click.option("--device", default="cpu", show_default=True, help="torch device for the image encoder (cpu, cuda, cuda:1).")
@_shard_options
@_data_options
def clean(data, model, regions, output, tags_from, outlier_fraction, clusters, min_regions, region_check, region_threshold,
          unlocated, context, min_score, batch_size, device, shard_size, work_dir, restart, keep_work, image_root, labels, overwrite, as_json) -> None:
    """Remove the tags of DATA whose regions are outliers of their category or that MODEL contradicts on them."""
    from ram_edge.training.engine.clean import CleanOptions, clean as run

    options = CleanOptions(tags_from=tags_from, outlier_fraction=outlier_fraction, clusters=clusters, min_regions=min_regions,
                           region_check=region_check, region_threshold=region_threshold, unlocated=unlocated,
                           min_score=min_score, context=context, batch_size=batch_size, shard_size=shard_size)
    summary = run(data, model, regions, output, labels=labels, options=options, device=device, work_dir=work_dir, restart=restart,
                  keep_work=keep_work, image_root=image_root, overwrite=overwrite)
    _report(summary, as_json, output)
