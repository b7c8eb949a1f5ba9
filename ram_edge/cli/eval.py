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
@click.option("--reference", default=None, metavar="MODEL[@RUNTIME]|TAGS.jsonl",
              help="Score MODEL against another model's answers instead of DATA's labels: a checkpoint directory or "
                   "bundle (optionally @RUNTIME) run on the same images, or the JSONL `ram-edge tag --json` printed "
                   "(images matched by path); DATA may then be an image folder or that JSONL too. Reports the figures "
                   "of `ram-edge compare` (and mAP where DATA has labels).")
def eval_command(model, data, data_format, taglist, image_root, runtime, device, threads, compute_precision, batch_size, as_json,
                 per_tag_out, tune_out, reference) -> None:
    """Evaluate MODEL on DATA: mAP, per-tag AP, P/R/F1 at the model's thresholds (all in percent).

    With --reference, or when DATA is what `ram-edge tag --json` printed, MODEL is scored against that reference's
    answers instead: tag-set F1, identical tag sets, |Δp|, flips, as `ram-edge compare` reports them.

    Exits with 1 when images failed (they are excluded from the metrics and listed), as `tag` does.
    """
    from ram_edge.compare import is_tag_json

    if reference is None and is_tag_json(data):
        # What `tag --json` prints holds a model's answers, not ground truth: scoring against it is what was meant.
        click.echo(f"note: {data} is `ram-edge tag --json` output, not ground truth: scoring {model} against its answers "
                   f"(as --reference {data})", err=True)
        reference = data
    if reference is not None:
        _eval_reference(model, data, reference, data_format, taglist, image_root, runtime, device, threads,
                        compute_precision, batch_size, as_json, per_tag_out, tune_out)
        return
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


def _eval_reference(model, data, reference, data_format, taglist, image_root, runtime, device, threads, compute_precision,
                    batch_size, as_json, per_tag_out, tune_out) -> None:
    """`eval --reference`: MODEL against a reference model run on the same images, or a `tag --json` file."""
    from pathlib import Path

    import numpy as np

    from ram_edge.compare import (CompareError, answer_image, answers_fired, common_tags, compare_fired, compare_scores,
                                  is_tag_json, json_safe, match_answers, read_tag_answers)

    from .compare import (ModelSpec, agreement_lines, check_model, labelled_map, list_sources, note_uncompared,
                          parse_model_spec, report_failures, run_models, table_lines)

    if per_tag_out or tune_out:
        given = "--per-tag-out" if per_tag_out else "--tune-thresholds"
        raise CompareError(f"{given} needs ground truth, and MODEL is scored against {reference}'s answers; drop "
                           f"{given}, or pass labelled evaluation data as DATA without --reference")
    spec = ModelSpec(str(model), Path(model), runtime)
    info = check_model(spec, option=None)  # describe() already names the model in its errors
    ref_path = Path(reference)
    answers = ref_spec = None
    if ref_path.is_file():
        answers = read_tag_answers(ref_path)
        tags = list(dict.fromkeys(info.labels.tags))
        ref_name = f"{reference} (answers of `ram-edge tag --json`)"
    else:
        ref_spec = parse_model_spec(reference, "--reference")
        ref_info = check_model(ref_spec, "--reference")
        tags = common_tags([ref_info.labels.tags, info.labels.tags], [f"--reference {reference}", f"MODEL {model}"])
        ref_name = reference

    evalset = None
    failed: list[tuple[str, str]] = []
    if Path(data).is_dir():
        images, failed = list_sources([data])
    elif is_tag_json(data):
        images = [answer_image(a.image, Path(data).parent)
                  for a in (answers if answers is not None and Path(data) == ref_path else read_tag_answers(data))]
    else:
        from ram_edge.training.eval_data import load_evalset

        evalset = load_evalset(data, data_format, taglist=taglist, image_root=image_root)
        images = [str(p) for p in evalset.images]
    total = len(images) + len(failed)

    unmatched: list[str] = []
    matched_answers: list = []
    if answers is not None:
        index = match_answers(images, answers, base=ref_path.parent)
        unmatched = [img for img, j in zip(images, index) if j is None]
        failed += [(img, f"{img}: the reference failed on it: {answers[j].error}")
                   for img, j in zip(images, index) if j is not None and answers[j].error is not None]
        pairs = [(img, answers[j]) for img, j in zip(images, index) if j is not None and answers[j].error is None]
        if not pairs and failed:
            raise CompareError(f"{reference} holds only errors for the images of {data} (first: {failed[0][1]}); make the "
                               "reference again with `ram-edge tag --json` on images that load")
        if not pairs:
            raise CompareError(f"none of the {len(images)} image(s) of {data} has an answer in {reference} (images are "
                               "matched by path, relative ones from the current folder or the reference file's); run "
                               f"`ram-edge tag --json` on the same images, from the same folder, to make the reference")
        images = [img for img, _ in pairs]
        matched_answers = [a for _, a in pairs]
        if unmatched:
            click.echo(f"warning: {len(unmatched)} of {total} image(s) of {data} have no answer in {reference} and were "
                       f"not scored (e.g. {unmatched[0]}); images are matched by path", err=True)

    models = ([(ref_spec, "--reference")] if ref_spec is not None else []) + [(spec, None)]
    runs, failed, ok = run_models(models, images, failed, device=device, threads=threads, compute_precision=compute_precision,
                                  batch_size=batch_size)
    if not ok:
        first = failed[0][1] if failed else "no images"
        raise CompareError(f"all {total} image(s) of {data} failed, nothing to score (first: {first}); check the image "
                           "paths (official benchmarks: pass the image folder with --image-root)")
    report_failures(failed, total)
    rows = np.array(ok)
    kept = [images[i] for i in ok]
    run = runs[-1]
    if ref_spec is not None:
        agreement = compare_scores(runs[0].probs[rows], run.probs[rows], run.labels, runs[0].labels, tags=tags, images=kept)
        note_uncompared({f"--reference {reference}": agreement.reference_only, f"MODEL {model}": agreement.model_only},
                        len(tags))
    else:
        reference_fired, unknown = answers_fired([matched_answers[i] for i in ok], tags)
        cols = [run.labels.index_of(t) for t in tags]
        agreement = compare_fired(reference_fired, run.labels.fired(run.probs[rows])[:, cols], tags, images=kept)
        agreement.reference_only = unknown
        if unknown:
            click.echo(f"note: {len(unknown)} tag(s) of {reference} unknown to {model} were not compared: "
                       f"{_names(unknown)}", err=True)
    scored = None
    if evalset is not None:
        scored = labelled_map(evalset, kept, [r.probs[rows] for r in runs], [r.labels for r in runs], tags, str(data))

    if as_json:
        report = {
            "model": str(model),
            "reference": str(reference),
            "reference_kind": "model" if ref_spec is not None else "tags file",
            "data": str(data),
            "images": len(kept),
            "failed_images": len(failed),
            "failed": [{"image": img, "error": err} for img, err in failed],
            "unmatched_images": len(unmatched),
            "unmatched": unmatched[:100],
            "agreement": agreement.to_dict(),
        }
        if scored:
            report["mAP"] = {"model": scored["mAP"][-1], "reference": scored["mAP"][0] if ref_spec is not None else None}
            report["labels"] = {k: v for k, v in scored.items() if k != "mAP"}
        click.echo(json.dumps(json_safe(report), ensure_ascii=False))
        return _exit_if(failed)
    click.echo(f"data:      {data}")
    click.echo(f"reference: {ref_name}")
    click.echo(f"images:    {len(kept)} scored, {len(failed)} failed" + (f", {len(unmatched)} without a reference answer"
                                                                       if unmatched else ""))
    click.echo(f"tags:      {len(tags)} compared")
    if ref_spec is None:
        click.echo("           (the reference file holds no probabilities: no |Δp|)")
    click.echo("")
    maps = scored["mAP"] if scored else [None] * len(runs)
    rows_out = ([(reference, None, maps[0])] if ref_spec is not None else []) + [(str(model), agreement, maps[-1])]
    for line in table_lines(rows_out):
        click.echo(line)
    click.echo("")
    for line in agreement_lines(str(model), str(reference), agreement):
        click.echo(line)
    _exit_if(failed)


def _exit_if(failed) -> None:
    if failed:
        sys.exit(1)
