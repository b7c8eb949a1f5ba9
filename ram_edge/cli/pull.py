"""`ram-edge pull`: download an official RAM / RAM++ release and convert it in one command."""

from __future__ import annotations

import json

import click


@click.command()
@click.argument("name")
@click.option("-o", "--output", "output", type=click.Path(file_okay=False), default=None,
              help="Checkpoint directory to create [./ram_plus_l384 for RAM++, ./ram_l384 for RAM].")
@click.option("--revision", default=None, help="Branch, tag or commit of the Hugging Face repository [main].")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="huggingface_hub cache for the weights [its default: $HF_HUB_CACHE, else $HF_HOME/hub].")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def pull(name, output, revision, cache_dir, overwrite, as_json) -> None:
    """Download the official NAME weights and tag files, and convert them into a checkpoint directory.

    NAME is ram-plus (aliases ram_plus, ram++) or ram. The weights come from the Hugging Face Hub (huggingface_hub's
    cache; an interrupted download resumes when run again; HF_ENDPOINT selects a mirror), the tag files from the
    official GitHub repository at a pinned commit, checked against their recorded sha256 (RAM_EDGE_OFFICIAL_FILES_URL
    selects a mirror). Progress goes to stderr.
    """
    from ..models.pull import pull_official

    report = pull_official(name, output, revision=revision, cache_dir=cache_dir, overwrite=overwrite,
                           log=lambda message: click.echo(message, err=True))
    hub = report.source["hub"]
    if as_json:
        click.echo(json.dumps({
            "output": str(report.out_dir), "model": report.model.name, "family": report.model.family,
            "image_size": report.image_size, "num_classes": report.num_classes, "hub": hub,
            "tag_files": report.source["tag_files"], "next": report.next_commands(),
        }))
        return
    commit = f" (commit {hub['commit'][:12]})" if hub.get("commit") else ""
    click.echo(f"wrote {report.out_dir}: {report.model.name} from {hub['repo']}/{hub['file']} at {hub['revision']}{commit}, "
               f"{report.num_classes} tags, {report.image_size}px")
    click.echo("next:")
    for command in report.next_commands():
        click.echo(f"  {command}")
