"""`ram-edge tag`: tag images and folders with a checkpoint directory or bundle."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .options import compute_precision_option, model_options


def _human(result, chinese: bool) -> str:
    if not result.tags:
        return f"{result.image}: (no tags)"
    names = [f"{t.tag}{' (' + t.zh + ')' if chinese and t.zh else ''} {t.score:.2f}" for t in result.tags]
    return f"{result.image}: " + ", ".join(names)


@click.command()
@click.argument("images", nargs=-1, required=True, type=click.Path())
@model_options
@compute_precision_option
@click.option("--threshold", type=click.FloatRange(0.0, 1.0), default=None, help="One threshold for every tag instead of the per-tag ones.")
@click.option("--top-k", type=click.IntRange(min=1), default=None, help="At most K tags per image (highest scores among those above threshold).")
@click.option("--chinese", is_flag=True, help="Also print the Chinese tag names.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Images per inference [1 for full-size (384 px) models on a CPU, where batching buys no speed and costs "
                   "memory; 8 otherwise].")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per image per line.")
@click.option("--scores-out", type=click.Path(dir_okay=False), default=None, help="Write the float32 probability matrix (images x tags) as .npy; NaN rows for failed images.")
@click.option("--no-exif-transpose", is_flag=True, help="Do not apply the EXIF orientation (the official transform does not).")
def tag(images, model, runtime, device, threads, compute_precision, threshold, top_k, chinese, batch_size, as_json, scores_out, no_exif_transpose) -> None:
    """Tag IMAGES (files or folders, searched recursively)."""
    import numpy as np
    from tqdm import tqdm

    from ..fileio import atomic_file
    from ..preprocess import iter_image_files
    from ..tagger import Tagger

    from ..default_model import default_model_path

    from ..preprocess import IMAGE_EXTENSIONS
    from ..tagger import TagResult

    model = model or default_model_path()
    # Every argument is accounted for: a folder without images is reported like a bad file, not skipped.
    empty_folders = [TagResult(str(arg), error=f"{arg}: folder holds no image files "
                                                f"({', '.join(sorted(IMAGE_EXTENSIONS))}, searched recursively)")
                     for arg in images if Path(arg).is_dir() and not iter_image_files([arg])]
    files = iter_image_files([arg for arg in images if not (Path(arg).is_dir() and not iter_image_files([arg]))])
    if not files:
        _report(empty_folders, as_json, chinese)
        sys.exit(1)
    tagger = Tagger.load(model, runtime=runtime, device=device, threads=threads, compute_precision=compute_precision,
                         exif_transpose=not no_exif_transpose)
    sources = [str(f) for f in files]
    with tqdm(total=len(sources), unit="img", file=sys.stderr, disable=None, leave=False) as bar:
        results, probs = tagger.tag_many(sources, batch_size=batch_size, threshold=threshold, top_k=top_k, progress=bar)
    if scores_out:
        with atomic_file(scores_out, "wb") as fh:
            np.save(fh, probs.astype(np.float32))
    if _report(results + empty_folders, as_json, chinese):
        sys.exit(1)


def _report(results, as_json: bool, chinese: bool) -> int:
    """Print results (errors on stderr unless --json); returns how many failed, after saying so."""
    failed = 0
    for result in results:
        if as_json:
            click.echo(json.dumps(result.to_dict(chinese), ensure_ascii=False))
        elif result.ok:
            click.echo(_human(result, chinese))
        if not result.ok:
            failed += 1
            if not as_json:
                click.echo(f"error: {result.error}", err=True)
    if failed:
        click.echo(f"{failed} of {len(results)} input(s) failed", err=True)
    return failed
