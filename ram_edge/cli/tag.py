"""`ram-edge tag`: tag images and folders with a checkpoint directory or bundle."""

from __future__ import annotations

import contextlib
import errno
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
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Append one JSON object per image to FILE (JSON lines) as images are tagged, instead of printing "
                   "them; a rerun with the same FILE skips the images it holds, so a library run resumes where it "
                   "stopped.")
@click.option("--scores-out", type=click.Path(dir_okay=False), default=None, help="Write the float32 probability matrix (images x tags) as .npy; NaN rows for failed images.")
@click.option("--no-exif-transpose", is_flag=True, help="Do not apply the EXIF orientation (the official transform does not).")
def tag(images, model, runtime, device, threads, compute_precision, threshold, top_k, chinese, batch_size, as_json, output,
        scores_out, no_exif_transpose) -> None:
    """Tag IMAGES (files or folders, searched recursively).

    Results are printed (or appended to --output) batch by batch as they are computed.
    """
    from ..default_model import default_model_path
    from ..errors import Terminated
    from ..fileio import OutputPathError, check_writable
    from ..preprocess import IMAGE_EXTENSIONS, iter_image_files
    from ..tag_output import ResultsFile
    from ..tagger import TagResult

    model = model or default_model_path()
    # Every argument is accounted for: a folder without images is reported like a bad file, not skipped. Each folder
    # is walked once (a photo library can hold 100 000 files).
    sources: list[str] = []
    empty_folders = []
    for arg in images:
        found = iter_image_files([arg])
        if not found and Path(arg).is_dir():
            empty_folders.append(TagResult(str(arg), error=f"{arg}: folder holds no image files "
                                                           f"({', '.join(sorted(IMAGE_EXTENSIONS))}, searched recursively)"))
        sources.extend(str(f) for f in found)
    if scores_out:
        check_writable(scores_out)  # before the model loads and the images are tagged
    with contextlib.ExitStack() as stack:
        results_file = stack.enter_context(ResultsFile(output)) if output else None
        report = _Report(as_json, chinese, results_file)
        if results_file is not None and results_file.recorded:
            if scores_out:
                raise click.UsageError(f"--scores-out writes one matrix for every image and cannot resume; {output} "
                                       "already holds results: give a new --output file, or drop --scores-out")
            before = len(sources)
            sources = [s for s in sources if s not in results_file.recorded]
            empty_folders = [r for r in empty_folders if r.image not in results_file.recorded]
            report.skipped = before - len(sources)
        try:
            if sources:
                _tag_files(sources, report, model, runtime, device, threads, compute_precision, threshold, top_k,
                           batch_size, scores_out, no_exif_transpose)
            for result in empty_folders:
                report.add(result, None)
        except (KeyboardInterrupt, OutputPathError) as exc:
            if results_file is None:
                raise
            kept = len(results_file.recorded) + results_file.flushed
            with contextlib.suppress(OutputPathError):
                results_file.close()
            what = (f"error: {exc};" if isinstance(exc, OutputPathError)
                    else "terminated:" if isinstance(exc, Terminated) else "interrupted:")
            click.echo(f"{what} {kept} image(s) are in {output}; run the same command again to tag the rest", err=True)
            sys.exit(2 if isinstance(exc, OutputPathError) else getattr(exc, "exit_code", 130))
        failed = report.finish(output)
    if failed:
        sys.exit(1)


def _tag_files(sources, report, model, runtime, device, threads, compute_precision, threshold, top_k, batch_size,
               scores_out, no_exif_transpose) -> None:
    """Tag `sources` batch by batch into `report` (and the probability matrix into `scores_out`)."""
    from ..fileio import unwritable
    from ..tagger import Tagger

    tagger = Tagger.load(model, runtime=runtime, device=device, threads=threads, compute_precision=compute_precision,
                         exif_transpose=not no_exif_transpose)
    try:
        _tag_into(tagger, sources, report, threshold, top_k, batch_size, scores_out)
    except OSError as exc:
        if scores_out and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            # The matrix's buffered rows meet the full disk where they are written out, not in one place of ours.
            raise unwritable(scores_out, exc) from None
        raise


def _tag_into(tagger, sources, report, threshold, top_k, batch_size, scores_out) -> None:
    """The loop of _tag_files: results into `report` as their batches finish, rows into the matrix file."""
    from tqdm import tqdm

    from ..fileio import atomic_file
    from ..tag_output import NpyRowWriter

    with contextlib.ExitStack() as stack:
        scores = None
        if scores_out:
            scores = NpyRowWriter(stack.enter_context(atomic_file(scores_out, "wb")), len(sources), len(tagger.tags))
        bar = stack.enter_context(tqdm(total=len(sources), unit="img", file=sys.stderr, disable=None, leave=False))
        for result, probs in tagger.iter_tag(sources, batch_size=batch_size, threshold=threshold, top_k=top_k,
                                             progress=bar):
            report.add(result, bar)
            if scores is not None:
                scores.write(probs)
        report.flush()


class _Report:
    """Where results go: stdout (human lines or JSON) or the --output file; errors on stderr unless JSON."""

    def __init__(self, as_json: bool, chinese: bool, results_file) -> None:
        self.as_json, self.chinese, self.file = as_json, chinese, results_file
        self.total = self.failed = self.skipped = 0

    def add(self, result, bar) -> None:
        """One image's result, printed above the progress bar."""
        self.total += 1
        if self.file is not None:
            self.file.write(result.to_dict(self.chinese))
        elif self.as_json:
            _echo(json.dumps(result.to_dict(self.chinese), ensure_ascii=False), bar)
        elif result.ok:
            _echo(_human(result, self.chinese), bar)
        if not result.ok:
            self.failed += 1
            if self.file is not None or not self.as_json:
                _echo(f"error: {result.error}", bar, err=True)
        self.flush()  # a killed run keeps every image it reported

    def flush(self) -> None:
        """Hand the results so far to the OS."""
        if self.file is not None:
            self.file.flush()
        else:
            sys.stdout.flush()

    def finish(self, output: str | None) -> int:
        """The summary on stderr; returns how many failed."""
        self.flush()
        if self.file is not None:
            skipped = f"; {self.skipped} already there were skipped" if self.skipped else ""
            click.echo(f"wrote {self.total} image(s) to {output} ({self.failed} failed){skipped}", err=True)
        elif self.failed:
            click.echo(f"{self.failed} of {self.total} input(s) failed", err=True)
        return self.failed


def _echo(line: str, bar, err: bool = False) -> None:
    if bar is not None and not bar.disable:
        bar.write(line, file=sys.stderr if err else sys.stdout)
    else:
        click.echo(line, err=err)
