"""`ram-edge eval`: mAP and P/R/F1 of a model on an official benchmark or a JSONL data set."""

from __future__ import annotations

import json
import sys

import click

from .options import compute_precision_option


def _fmt(value: float) -> str:
    return "n/a" if value != value else f"{value:.2f}"


def _names(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... (+{len(names) - limit} more)" if len(names) > limit else "")


@click.command("eval")
@click.argument("model", type=click.Path())
@click.argument("data", type=click.Path())
@click.option("--format", "data_format", type=click.Choice(["auto", "official", "jsonl"]), default="auto", show_default=True,
              help="DATA format: official *_annots.txt (+ tag list) or JSONL {\"image\", \"tags\"} lines; auto guesses.")
@click.option("--taglist", type=click.Path(dir_okay=False), default=None,
              help="Benchmark tag list (official: default X_taglist.txt beside X_annots.txt; JSONL: the evaluated vocabulary).")
@click.option("--image-root", type=click.Path(file_okay=False), default=None,
              help="Folder the image paths are relative to (official default: imgs/ beside the annotations; JSONL: its folder).")
@click.option("--runtime", default="auto", show_default=True, help="Backend: auto, torch, ort, openvino, trt.")
@click.option("--device", default=None, help="Device for the runtime (e.g. cpu, cuda, cuda:1, GPU, NPU).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads for the runtime.")
@compute_precision_option
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the full report (percent) as one JSON object.")
@click.option("--per-tag-out", type=click.Path(dir_okay=False), default=None, help="Write per-tag AP/P/R/F1 (percent) as CSV.")
@click.option("--tune-thresholds", "tune_out", type=click.Path(), default=None,
              help="Tune each tag's threshold for F1 on DATA and write them (one per model tag) to this file, or to "
                   "thresholds.txt in this directory: pass MODEL itself to update a checkpoint directory.")
def eval_command(model, data, data_format, taglist, image_root, runtime, device, threads, compute_precision, batch_size, as_json,
                 per_tag_out, tune_out) -> None:
    """Evaluate MODEL on DATA: mAP, per-tag AP, P/R/F1 at the model's thresholds (all in percent).

    Exits with 1 when images failed (they are excluded from the metrics and listed), as `tag` does.
    """
    from ram_edge.tagger import Tagger
    from ram_edge.training.eval_data import load_evalset
    from ram_edge.training.evaluate import evaluate, tune_report_thresholds, write_per_tag_csv, write_thresholds

    # The data is read before the model is loaded, so format errors come first and fast.
    evalset = load_evalset(data, data_format, taglist=taglist, image_root=image_root)
    tagger = Tagger.load(model, runtime=runtime, device=device, threads=threads, compute_precision=compute_precision)
    try:
        report = evaluate(tagger, evalset, batch_size=batch_size, progress=True)
    finally:
        tagger.close()
    if per_tag_out:
        write_per_tag_csv(report, per_tag_out)
    if tune_out:
        tuned = tune_report_thresholds(report, tagger.labels.thresholds)
        written = write_thresholds(tuned.thresholds, tune_out)
        click.echo(
            f"thresholds: {tuned.tuned} of {len(tagger.tags)} tags tuned for F1 on this data (the others keep theirs); "
            f"their macro F1 here {tuned.macro_f1_before:.2f} -> {tuned.macro_f1_after:.2f} (measured on the tuning data "
            f"itself: evaluate on another split); wrote {written}",
            err=True,
        )
        if tagger.info.format != "checkpoint":
            click.echo(f"note: {model} is a bundle, whose thresholds live in its manifest: copy {written} into the checkpoint "
                       f"directory it was exported from and export again", err=True)
    for image, error in report.failed[:10]:
        click.echo(f"error: {error}", err=True)
    if report.failed:
        click.echo(f"{len(report.failed)} of {report.images + len(report.failed)} image(s) failed and were excluded", err=True)
    if report.skipped_tags:
        click.echo(
            f"{len(report.skipped_tags)} tag(s) unknown to the model skipped ({report.skipped_positives} positive label(s)): "
            f"{_names(report.skipped_tags)}",
            err=True,
        )
    if as_json:
        click.echo(json.dumps(report.to_dict(), ensure_ascii=False))
    else:
        _print_human(report)
    if report.failed:
        sys.exit(1)


def _print_human(report) -> None:
    click.echo(f"data:     {report.data} ({report.format})")
    click.echo(f"images:   {report.images} evaluated, {len(report.failed)} failed")
    click.echo(
        f"tags:     {report.tags_evaluated} evaluated ({report.tags_with_positives} with positives), "
        f"{len(report.skipped_tags)} skipped (unknown to the model)"
    )
    click.echo(f"mAP:      {_fmt(report.mAP)}")
    for name, summary in (("macro", report.macro), ("micro", report.micro)):
        click.echo(f"{name} P/R/F1: {_fmt(summary['precision'])} / {_fmt(summary['recall'])} / {_fmt(summary['f1'])}")
