"""`ram-edge parse`: captions -> tag ids with a label system (text semantic parsing)."""

from __future__ import annotations

import contextlib
import json

import click


@click.command()
@click.argument("captions_file", type=click.Path(dir_okay=False))
@click.option("--labels", "labels", required=True, type=click.Path(dir_okay=False), help="Label system: a TSV (tag, synonyms, zh, threshold) or a plain tag list.")
@click.option("--jsonl", "jsonl", is_flag=True, default=None, help="Read JSONL records with a \"caption\" field (string or list); implied by a .jsonl suffix.")
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False), default=None, help="Write JSONL here (atomically) instead of stdout.")
def parse(captions_file, labels, jsonl, output) -> None:
    """Find the tags of LABELS in each caption of CAPTIONS_FILE; print one JSON line per input line.

    Each output line is {"caption": ..., "tag_ids": [...], "tags": [...]}; for JSONL input the
    record's other fields (e.g. "image") are kept, and a list of captions gets the union of their tags.
    """
    from ram_edge.fileio import atomic_file
    from ram_edge.training.label_system import LabelSystem
    from ram_edge.training.parse import TagParser, _progress, iter_caption_records

    system = LabelSystem.load(labels)
    parser = TagParser(system)
    with contextlib.ExitStack() as stack:
        if output is None:
            write = click.echo
        else:
            fh = stack.enter_context(atomic_file(output, "w"))

            def write(line: str) -> None:
                fh.write(line + "\n")

        n = 0
        for _, row in _progress(iter_caption_records(captions_file, jsonl or None), "parse"):
            caption = row["caption"]
            if isinstance(caption, str):
                ids = parser.parse(caption)
            else:
                ids = sorted({i for c in caption for i in parser.parse(c)})
            row["tag_ids"] = ids
            row["tags"] = [system.tags[i] for i in ids]
            write(json.dumps(row, ensure_ascii=False))
            n += 1
    if output is not None:
        click.echo(f"wrote {output}: {n} records, {len(system.tags)} tags", err=True)
