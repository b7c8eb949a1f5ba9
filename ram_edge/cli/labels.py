"""`ram-edge labels`: build a label system (tags + synonyms) from a caption corpus."""

from __future__ import annotations

import click


@click.group()
def labels() -> None:
    """Label systems for training: tags, synonyms, Chinese names, thresholds (TSV)."""


@labels.command()
@click.argument("captions_file", type=click.Path(dir_okay=False))
@click.option("--top-n", "top_n", required=True, type=click.IntRange(min=1), help="Number of tags to propose.")
@click.option("--synonyms", "synonyms", type=click.Path(dir_okay=False), default=None, help="Synonym groups, one per line, '|'- or comma-separated; the first name is the tag.")
@click.option("--candidates", "candidates", type=click.Path(dir_okay=False), default=None, help="Count only these phrases: a tag list or label TSV (e.g. the official tag list).")
@click.option("--min-count", "min_count", type=click.IntRange(min=1), default=2, show_default=True, help="Minimum number of captions a tag must occur in.")
@click.option("--no-wordnet", "no_wordnet", is_flag=True, help="Do not use WordNet synonyms even where nltk's corpus is installed.")
@click.option("--jsonl", "jsonl", is_flag=True, default=None, help="Read JSONL records with a \"caption\" field; implied by a .jsonl suffix.")
@click.option("-o", "--output", "output", required=True, type=click.Path(dir_okay=False), help="Label TSV to write (atomically).")
def build(captions_file, top_n, synonyms, candidates, min_count, no_wordnet, jsonl, output) -> None:
    """Propose the TOP_N most frequent tags of CAPTIONS_FILE and write them as a label TSV."""
    from ram_edge.fileio import check_writable
    from ram_edge.training.label_system import LabelSystem, build_label_system
    from ram_edge.training.parse import _progress, iter_captions

    check_writable(output)  # before counting a large caption file
    cand = LabelSystem.load(candidates) if candidates is not None else None
    system = build_label_system(
        _progress(iter_captions(captions_file, jsonl or None), "count"),
        top_n,
        synonym_file=synonyms,
        min_count=min_count,
        use_wordnet=not no_wordnet,
        candidates=cand,
    )
    system.save(output)
    info = system.info
    wordnet = "used" if info.get("wordnet") else ("off" if no_wordnet else "not available (install nltk and its wordnet corpus)")
    click.echo(
        f"wrote {output}: {len(system.tags)} tags from {info.get('captions', 0)} captions "
        f"({info.get('mode')} mode, WordNet synonyms: {wordnet}); "
        f"most frequent: {', '.join(f'{t} ({c})' for t, c in list(zip(system.tags, info.get('counts', [])))[:5])}"
    )
