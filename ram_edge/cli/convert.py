"""`ram-edge convert`: official RAM / RAM++ .pth -> ram-edge checkpoint directory."""

from __future__ import annotations

import json

import click


@click.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "output", required=True, type=click.Path(file_okay=False), help="Checkpoint directory to create.")
@click.option("--tags", "tags", required=True, type=click.Path(dir_okay=False), help="Tag list the model was trained with (ram_tag_list.txt).")
@click.option("--tags-chinese", type=click.Path(dir_okay=False), default=None, help="Chinese names, one per tag (ram_tag_list_chinese.txt).")
@click.option("--thresholds", type=click.Path(dir_okay=False), default=None, help="Per-tag thresholds (ram_tag_list_threshold.txt); 0.68 for every tag when absent.")
@click.option("--family", type=click.Choice(["auto", "ram", "ram_plus"]), default="auto", show_default=True, help="Model family; inferred from the weights.")
@click.option("--image-size", type=int, default=None, help="Input size when the file has no shift masks to infer it from [384].")
@click.option("--head-heads", type=int, default=4, show_default=True, help="Attention heads of the tagging head (not visible in shapes).")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def convert(checkpoint, output, tags, tags_chinese, thresholds, family, image_size, head_heads, overwrite, as_json) -> None:
    """Convert an official RAM / RAM++ CHECKPOINT (.pth) into a ram-edge checkpoint directory."""
    from ..models.convert import convert_official

    report = convert_official(
        checkpoint, output, tags=tags, tags_zh=tags_chinese, thresholds=thresholds,
        family=family, image_size=image_size, head_heads=head_heads, overwrite=overwrite,
    )
    cfg = report.config
    summary = {
        "output": str(report.out_dir),
        "family": cfg.family,
        "image_size": cfg.swin.image_size,
        "swin": {"embed_dim": cfg.swin.embed_dim, "depths": list(cfg.swin.depths), "num_heads": list(cfg.swin.num_heads), "window": cfg.swin.window_size},
        "num_classes": cfg.num_classes,
        "tagging_keys": report.tagging_keys,
        "captioning_keys_kept": report.captioning_keys,
        "dropped_keys": len(report.dropped_keys),
    }
    if as_json:
        click.echo(json.dumps(summary))
    else:
        s = summary["swin"]
        click.echo(
            f"wrote {report.out_dir}: {cfg.family}, Swin embed {s['embed_dim']} depths {s['depths']} heads {s['num_heads']} "
            f"window {s['window']} at {cfg.swin.image_size}px, {cfg.num_classes} tags; {report.tagging_keys} tagging tensors, "
            f"{report.captioning_keys} captioning tensors kept, {len(report.dropped_keys)} rebuilt buffers dropped"
        )
