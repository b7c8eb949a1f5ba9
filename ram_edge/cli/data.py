"""`ram-edge data`: make training data (emoji scenes) for the ram-edge tagger."""

from __future__ import annotations

import json

import click


@click.group()
def data() -> None:
    """Make synthetic training data."""


@data.command("scenes")
@click.option("-o", "--output", "output", required=True, type=click.Path(file_okay=False), help="Dataset directory to create.")
@click.option("--count", required=True, type=click.IntRange(min=1), help="Number of scenes.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="Stream seed; scene i is the same for the same seed and split.")
@click.option("--size", default=160, show_default=True, type=click.IntRange(min=16), help="Image side in pixels.")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "wds"]), default="jsonl", show_default=True,
              help="jsonl: images/ + annotations.jsonl; wds: WebDataset tar shards.")
@click.option("--shard-size", default=1000, show_default=True, type=click.IntRange(min=1), help="Scenes per tar shard (wds).")
@click.option("--split", type=click.Choice(["train", "val", "test", "heldout"]), default="train", show_default=True,
              help="train/val/test: seen categories, disjoint index ranges; heldout: only the 60 held-out categories.")
@click.option("--image-format", type=click.Choice(["png", "jpg"]), default="png", show_default=True, help="Image encoding (jpg: quality 95).")
@click.option("--min-objects", default=1, show_default=True, type=click.IntRange(min=1), help="Fewest objects per scene.")
@click.option("--max-objects", default=5, show_default=True, type=click.IntRange(min=1), help="Most objects per scene.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1), help="Rendering processes (output does not depend on it).")
@click.option("--missing", type=click.FloatRange(0, 1), default=None,
              help="Caption noise: chance that a caption leaves out each object [default: 0.15].")
@click.option("--wrong", type=click.FloatRange(0, 1), default=None,
              help="Caption noise: chance that a caption names one object not in the image [default: 0.05].")
@click.option("--synonym", type=click.FloatRange(0, 1), default=None,
              help="Caption noise: chance that an object is named by a synonym [default: 0.2].")
@click.option("--typo", type=click.FloatRange(0, 1), default=None,
              help="Caption noise: chance that a caption misspells one word [default: 0].")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def scenes(output, count, seed, size, fmt, shard_size, split, image_format, min_objects, max_objects, workers,
           missing, wrong, synonym, typo, overwrite, as_json) -> None:
    """Render emoji scenes with tags, boxes and noisy captions into OUTPUT, plus categories.json and labels.tsv.

    Scene i of a split is generated from (seed, offset + i): train starts at 0, val at 1e9, test at
    2e9, heldout at 3e9, so splits never share a scene. categories.json records the vocabulary and
    which categories are held out; labels.tsv is the label system (tag, synonyms) of the split.
    """
    from ram_edge.errors import ConfigError
    from ram_edge.training.scenes import write_dataset

    if min_objects > max_objects:
        raise ConfigError(f"--min-objects ({min_objects}) is larger than --max-objects ({max_objects})")
    report = write_dataset(
        output, count, seed=seed, split=split, size=size, fmt=fmt, shard_size=shard_size, image_format=image_format,
        workers=workers, min_objects=min_objects, max_objects=max_objects, overwrite=overwrite,
        captions={k: v for k, v in (("missing", missing), ("wrong", wrong), ("synonym", synonym), ("typo", typo)) if v is not None},
    )
    summary = {
        "output": str(report.out_dir), "count": report.count, "split": report.split, "seed": report.seed,
        "format": report.fmt, "shards": len(report.shards), "categories": report.categories,
        "seen": report.seen, "held_out": report.held_out,
    }
    if as_json:
        click.echo(json.dumps(summary))
    else:
        where = f"{len(report.shards)} shards" if fmt == "wds" else "images/ + annotations.jsonl"
        pool = report.held_out if split == "heldout" else report.seen
        click.echo(f"wrote {report.out_dir}: {count} {split} scenes (seed {seed}, {size}px, {where}) "
                   f"from {pool} of {report.categories} categories; categories.json, labels.tsv")
