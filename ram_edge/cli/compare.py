"""`ram-edge compare`: run several models on the same images and report how far each agrees with the first.

The figures are :mod:`ram_edge.compare`'s; this module parses the models (`PATH[@RUNTIME]`), lists the images as `tag`
does, runs each model in turn (one in memory at a time) and renders the report. `ram-edge eval --reference` uses the
same pieces.
"""

from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import click
import numpy as np

from .options import compute_precision_option


@dataclass
class ModelSpec:
    """A model as given on the command line: its path and the runtime to run it with."""

    text: str
    path: Path
    runtime: str = "auto"

    @property
    def name(self) -> str:
        """How the report names the model: as the user wrote it."""
        return self.text


def parse_model_spec(text: str, option: str = "--model") -> ModelSpec:
    """`PATH` or `PATH@RUNTIME` (the registry's names and aliases: onnxruntime = ort, tensorrt = trt, ...); a path that
    exists is never split."""
    from ram_edge.compare import CompareError
    from ram_edge.errors import RuntimeUnavailableError
    from ram_edge.runtimes.registry import canonical_runtime

    path, at, runtime = text.rpartition("@")
    if not at or Path(text).exists() or "/" in runtime or "\\" in runtime:
        return ModelSpec(text, Path(text))
    try:
        key = canonical_runtime(runtime)
    except RuntimeUnavailableError as exc:
        raise CompareError(f"{option} {text}: {exc}; write PATH@RUNTIME, e.g. {option} {path or 'bundle'}@ort") from None
    if not path:
        raise CompareError(f"{option} {text}: no model path before '@'; write PATH@RUNTIME, e.g. {option} bundle@ort")
    return ModelSpec(text, Path(path), key)


@contextlib.contextmanager
def naming(spec: ModelSpec, option: str | None = "--model") -> Iterator[None]:
    """Prefix a RamEdgeError with the model it concerns, so that of several models the user knows which one failed
    (`option` None: no prefix, for a model whose errors already name it)."""
    from ram_edge.errors import RamEdgeError

    if option is None:
        yield
        return
    try:
        yield
    except RamEdgeError as exc:
        prefix = f"{option} {spec.text}: "
        if str(exc).startswith(prefix):
            raise
        try:
            named = type(exc)(prefix + str(exc))
        except TypeError:  # an error class whose constructor takes more than a message
            raise exc from None
        raise named from None


def check_model(spec: ModelSpec, option: str | None = "--model"):
    """The model's ArtifactInfo, after checking that its runtime can run it (before any model runs: a typo in the
    last model must not cost the runs of the others)."""
    from ram_edge.artifacts import describe
    from ram_edge.compare import CompareError
    from ram_edge.runtimes import get_runtime_class, resolve_runtime

    with naming(spec, option):
        info = describe(spec.path)
        if spec.runtime != "auto" and option is not None:
            # The registry's own refusal advises --runtime, which a PATH@RUNTIME model does not have.
            formats = getattr(get_runtime_class(spec.runtime), "formats", None)
            if formats is not None and info.format not in formats:
                raise CompareError(f"runtime {spec.runtime!r} cannot run a {info.format!r} model (it runs: "
                                   f"{', '.join(formats)}); drop '@{spec.runtime}' to let ram-edge choose, or export "
                                   f"the model for {spec.runtime!r} with `ram-edge export`")
        resolve_runtime(spec.runtime, info.format)
    return info


def list_sources(args: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """The image files of `args` as `ram-edge tag` lists them (folders searched recursively, files kept whatever they
    are so that a bad one is reported), and (arg, error) for each folder that holds no image."""
    from ram_edge.preprocess import IMAGE_EXTENSIONS, iter_image_files

    sources: list[str] = []
    errors: list[tuple[str, str]] = []
    for arg in args:
        found = iter_image_files([arg])
        if not found and Path(arg).is_dir():
            errors.append((str(arg), f"{arg}: folder holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}, "
                                     "searched recursively)"))
        sources.extend(str(f) for f in found)
    return sources, errors


@dataclass
class ModelRun:
    """One model's answers on the sources: probabilities (NaN rows where an image failed) and tag names per image."""

    spec: ModelSpec
    labels: Any  # LabelSet
    runtime: str
    format: str
    probs: np.ndarray
    tag_sets: list[list[str] | None]
    errors: dict[int, str] = field(default_factory=dict)


def run_model(spec: ModelSpec, sources: Sequence[str], *, device: str | None, threads: int | None,
              compute_precision: str | None, batch_size: int | None, bar: Any, option: str | None = "--model") -> ModelRun:
    """Run one model on every source, recording per-image errors instead of stopping; then release it."""
    from ram_edge.tagger import Tagger

    with naming(spec, option):
        tagger = Tagger.load(spec.path, runtime=spec.runtime, device=device, threads=threads,
                             compute_precision=compute_precision)
    try:
        probs = np.full((len(sources), len(tagger.tags)), np.nan, dtype=np.float32)
        tag_sets: list[list[str] | None] = [None] * len(sources)
        errors: dict[int, str] = {}
        if bar is not None:
            bar.set_description(Path(spec.text).name)
        with naming(spec, option):
            for i, (result, row) in enumerate(tagger.iter_tag(sources, batch_size=batch_size, progress=bar)):
                if row is None or not np.isfinite(row).all():
                    errors[i] = result.error or f"{sources[i]}: the model gave non-finite scores"
                    continue
                probs[i] = row
                tag_sets[i] = [t.tag for t in result.tags]
        return ModelRun(spec, tagger.labels, getattr(tagger.runtime, "name", spec.runtime), tagger.info.format, probs,
                        tag_sets, errors)
    finally:
        tagger.close()


def run_models(models: Sequence[tuple[ModelSpec, str | None]], images: Sequence[str], failed: list[tuple[str, str]], *,
               device: str | None, threads: int | None, compute_precision: str | None,
               batch_size: int | None) -> tuple[list[ModelRun], list[tuple[str, str]], list[int]]:
    """Each (model, option naming it in errors) on `images` under one progress bar; (runs, failed inputs with those of
    any model added, the indices every model tagged: an image is compared only where all of them did)."""
    runs: list[ModelRun] = []
    if images:
        bar = progress_bar(len(images) * len(models))
        try:
            for spec, option in models:
                runs.append(run_model(spec, images, device=device, threads=threads, compute_precision=compute_precision,
                                      batch_size=batch_size, bar=bar, option=option))
        finally:
            bar.close()
    bad: dict[int, str] = {}
    for run in runs:
        for i, error in run.errors.items():
            bad.setdefault(i, error)
    failed = [(images[i], bad[i]) for i in sorted(bad)] + failed
    return runs, failed, [i for i in range(len(images)) if i not in bad]


def progress_bar(total: int):
    """The stderr progress bar of a long run (silent where stderr is not a terminal)."""
    from tqdm import tqdm

    return tqdm(total=total, unit="img", file=sys.stderr, disable=None, leave=False)


def labelled_map(evalset: Any, images: Sequence[str], probs: Sequence[np.ndarray], labels: Sequence[Any],
                 tags: Sequence[str], source: str) -> dict[str, Any]:
    """mAP (percent) of each model over the images of `images` that `evalset` labels and the `tags` it holds."""
    from ram_edge.compare import CompareError, path_key
    from ram_edge.training.metrics import average_precision

    rows = {path_key(p): i for i, p in enumerate(evalset.images)}
    matched = [(k, rows[key]) for k, key in enumerate(path_key(p) for p in images) if key in rows]
    if not matched:
        raise CompareError(f"--labels {source}: none of its {len(evalset.images)} images is among the {len(images)} "
                           "compared (matched by path; relative paths are relative to the file's folder); label the "
                           "images you compare")
    compared = set(tags)
    label_tags = [t for t in evalset.tag_names if t in compared]
    if not label_tags:
        raise CompareError(f"--labels {source}: none of its tags ({', '.join(evalset.tag_names[:5])}...) is among the "
                           f"{len(tags)} tags compared; give the true tags by the models' tag names")
    ours, theirs = zip(*matched)
    targets = evalset.targets[np.array(theirs)][:, [evalset.tag_names.index(t) for t in label_tags]]
    values = []
    for p, lab in zip(probs, labels):
        cols = [lab.index_of(t) for t in label_tags]
        ap = average_precision(p[np.array(ours)][:, cols], targets)
        valid = ~np.isnan(ap)
        values.append(float(ap[valid].mean() * 100) if valid.any() else float("nan"))
    return {"file": source, "images": len(matched), "unlabelled_images": len(images) - len(matched),
            "tags": len(label_tags), "tags_with_positives": int(targets.any(axis=0).sum()), "mAP": values}


# --- rendering --------------------------------------------------------------------------------------------------

def _f(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or value != value else f"{value:.{digits}f}"


def _counts(pairs: Sequence[tuple[str, int]]) -> str:
    return ", ".join(f"{tag} {count}" for tag, count in pairs) or "(none)"


def table_lines(rows: Sequence[tuple[str, Any, float | None]]) -> list[str]:
    """The summary table: one row per model (name, Agreement or None for the reference, mAP or None)."""
    with_map = any(m is not None for _, _, m in rows)
    head = ["model", "tag-set F1", "identical", "max |Δp|", "p99 |Δp|"] + (["mAP"] if with_map else [])
    body = []
    for name, agreement, m in rows:
        if agreement is None:
            cells = [f"{name} (reference)", "-", "-", "-", "-"]
        else:
            cells = [name, _f(agreement.tag_set_f1), f"{agreement.identical_images}/{agreement.images} "
                     f"({agreement.identical_sets * 100:.1f}%)", _f(agreement.max_abs_diff, 4), _f(agreement.p99_abs_diff, 4)]
        body.append(cells + ([_f(m, 2)] if with_map else []))
    widths = [max(len(r[c]) for r in [head, *body]) for c in range(len(head))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [head, *body]]


def agreement_lines(name: str, reference: str, agreement: Any) -> list[str]:
    """What changed from `reference` to `name`: flips and the images that changed most."""
    lines = [f"{name} against {reference}:",
             f"  gained: {_counts(agreement.gained)}",
             f"  lost:   {_counts(agreement.lost)}"]
    if agreement.changed_images:
        lines.append("  changed most:")
        for change in agreement.changed_images:
            moved = "" if change.max_abs_diff is None else f", max |Δp| {change.max_abs_diff:.4f}"
            flips = " ".join([f"+{t}" for t in change.gained] + [f"-{t}" for t in change.lost])
            lines.append(f"    {change.image}: F1 {change.tag_set_f1:.3f}{moved}{': ' + flips if flips else ''}")
    else:
        lines.append("  changed most: (no image changed)")
    return lines


def report_failures(failed: Sequence[tuple[str, str]], total: int) -> None:
    """The first failed images and their count on stderr."""
    for _, error in failed[:10]:
        click.echo(f"error: {error}", err=True)
    if failed:
        click.echo(f"{len(failed)} of {total} input(s) failed and were excluded", err=True)


def note_uncompared(uncompared: dict[str, list[str]], compared: int) -> None:
    """Say on stderr which tags the comparison left out because not every model has them."""
    for name, tags in uncompared.items():
        if tags:
            shown = ", ".join(tags[:10]) + (f", ... (+{len(tags) - 10} more)" if len(tags) > 10 else "")
            click.echo(f"note: the tag lists differ: compared the {compared} tag(s) every model has; {len(tags)} tag(s) "
                       f"of {name} not compared: {shown}", err=True)


@click.command("compare")
@click.option("-m", "--model", "models", multiple=True, required=True, metavar="MODEL[@RUNTIME]",
              help="A checkpoint directory or bundle, optionally @RUNTIME (auto, ort, openvino, trt, torch; "
                   "onnxruntime, tensorrt, ov, pytorch as aliases); give it twice or more: the first is the reference.")
@click.argument("sources", nargs=-1, required=True, type=click.Path())
@click.option("--labels", "labels_file", type=click.Path(dir_okay=False), default=None,
              help="True tags of the images (eval data: JSONL {\"image\", \"tags\"} lines, paths relative to its "
                   "folder): also report each model's mAP (percent).")
@click.option("--device", default=None, help="Device for every model's runtime (e.g. cpu, cuda, GPU, NPU).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads for the runtimes.")
@compute_precision_option
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Images per inference [each model's default, as `tag`].")
@click.option("--json", "as_json", is_flag=True, help="Print the full report, with every model's tag sets, as one JSON object.")
def compare(models, sources, labels_file, device, threads, compute_precision, batch_size, as_json) -> None:
    """Run every --model on the same SOURCES (image files or folders, as `tag` takes them) and report how far each
    agrees with the first: mean tag-set F1, share of identical tag sets, max and p99 |Δp|, the tags that flip most
    often and the images that changed most.

    Exits with 1 when images failed (they are excluded from every figure and listed), as `tag` does.
    """
    from ram_edge.compare import CompareError, common_tags, compare_scores, json_safe

    specs = [parse_model_spec(m) for m in models]
    if len(specs) < 2:
        raise CompareError(f"compare needs at least two models, got --model {specs[0].text}; give the reference and the "
                           f"model to compare, e.g. --model fp32_bundle --model int8_bundle@openvino")
    infos = [check_model(spec) for spec in specs]
    names = [s.name for s in specs]
    tags = common_tags([info.labels.tags for info in infos], names)
    evalset = None
    if labels_file:
        from ram_edge.training.eval_data import load_evalset

        evalset = load_evalset(labels_file, "auto")  # read before any model runs: its errors come first and fast

    images, failed = list_sources(sources)
    total = len(images) + len(failed)  # every image file, and every folder without one
    runs, failed, ok = run_models([(spec, "--model") for spec in specs], images, failed, device=device, threads=threads,
                                  compute_precision=compute_precision, batch_size=batch_size)
    if not ok:
        first = failed[0][1] if failed else "no images"
        raise CompareError(f"all {total} input(s) failed, nothing to compare (first: {first}); pass image files or "
                           "folders that hold images")
    report_failures(failed, total)
    kept = [images[i] for i in ok]
    rows = np.array(ok)
    reference = runs[0]
    agreements = [None] + [compare_scores(reference.probs[rows], run.probs[rows], run.labels, reference.labels, tags=tags,
                                          images=kept) for run in runs[1:]]
    compared = set(tags)
    uncompared = {run.spec.name: [t for t in dict.fromkeys(run.labels.tags) if t not in compared] for run in runs}
    note_uncompared(uncompared, len(tags))
    scored = None
    if evalset is not None:
        scored = labelled_map(evalset, kept, [r.probs[rows] for r in runs], [r.labels for r in runs], tags, labels_file)

    if as_json:
        report = {
            "reference": reference.spec.name,
            "images": len(kept),
            "failed_images": len(failed),
            "failed": [{"image": img, "error": err} for img, err in failed],
            "tags_compared": len(tags),
            "models": [
                {"model": run.spec.name, "path": str(run.spec.path), "runtime": run.runtime, "format": run.format,
                 "tags": len(run.labels), "tags_not_compared": uncompared[run.spec.name],
                 **({"mAP": scored["mAP"][k]} if scored else {}),
                 "agreement": None if agreement is None else agreement.to_dict(),
                 "tag_sets": [{"image": images[i], "tags": run.tag_sets[i]} for i in ok]}
                for k, (run, agreement) in enumerate(zip(runs, agreements))
            ],
        }
        if scored:
            report["labels"] = {k: v for k, v in scored.items() if k != "mAP"}
        click.echo(json.dumps(json_safe(report), ensure_ascii=False))
    else:
        click.echo(f"images:    {len(kept)} compared, {len(failed)} failed")
        click.echo(f"tags:      {len(tags)} compared" + ("" if not any(uncompared.values()) else
                                                          " (only those every model has)"))
        if scored:
            click.echo(f"labels:    {scored['file']}: mAP (percent) over {scored['images']} labelled image(s), "
                       f"{scored['tags_with_positives']} tag(s) with positives")
        click.echo("")
        for line in table_lines([(run.spec.name, a, scored["mAP"][k] if scored else None)
                                 for k, (run, a) in enumerate(zip(runs, agreements))]):
            click.echo(line)
        for run, agreement in zip(runs[1:], agreements[1:]):
            click.echo("")
            for line in agreement_lines(run.spec.name, reference.spec.name, agreement):
                click.echo(line)
    if failed:
        sys.exit(1)
