"""Evaluate a `Tagger` on an :class:`~ram_edge.training.eval_data.EvalSet`: mAP, per-tag AP, P/R/F1.

Every number in an :class:`EvalReport` is in percent (0-100), as the official ``batch_inference.py``
prints mAP, CP and CR. P/R/F1 use the model's own per-tag thresholds and its firing rule
(``prob > threshold``, strict, float32: :meth:`LabelSet.fired`); the official ``batch_inference.py``
uses ``>=``, which differs only for a score exactly equal to its threshold. Images that fail to load
are excluded from every metric and listed in the report. See :mod:`ram_edge.training.metrics` for
the metric definitions (tags without a positive: no AP, outside the means).
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ram_edge.errors import RamEdgeError
from ram_edge.fileio import atomic_file

from .eval_data import EvalSet
from .metrics import average_precision, precision_recall_f1

# At most this many failed images are listed in to_dict() (all are counted).
MAX_LISTED_FAILURES = 100


@dataclass
class TagMetrics:
    """Metrics of one evaluated tag (percent; AP/recall/F1 are NaN when the tag has no positive)."""

    tag: str
    model_index: int
    threshold: float
    positives: int
    predicted: int
    true_positives: int
    ap: float
    precision: float
    recall: float
    f1: float


@dataclass
class EvalReport:
    """Result of :func:`evaluate`; every metric in percent."""

    model: str
    data: str
    format: str
    images: int
    failed: list[tuple[str, str]]
    mAP: float
    micro: dict[str, float]
    macro: dict[str, float]
    per_tag: list[TagMetrics]
    skipped_tags: list[str] = field(default_factory=list)
    skipped_positives: int = 0
    # What the metrics were computed from (not in to_dict): scores and truth of the evaluated images x tags.
    scores: np.ndarray | None = field(default=None, repr=False)
    targets: np.ndarray | None = field(default=None, repr=False)

    @property
    def tags_evaluated(self) -> int:
        """Tags scored (known to the model)."""
        return len(self.per_tag)

    @property
    def tags_with_positives(self) -> int:
        """Tags with at least one positive among the evaluated images (the tags in mAP and macro means)."""
        return sum(1 for t in self.per_tag if t.positives > 0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (NaN written as null)."""
        return _json_safe(
            {
                "unit": "percent",
                "model": self.model,
                "data": self.data,
                "format": self.format,
                "images": self.images,
                "failed_images": len(self.failed),
                "failed": [{"image": img, "error": err} for img, err in self.failed[:MAX_LISTED_FAILURES]],
                "tags_evaluated": self.tags_evaluated,
                "tags_with_positives": self.tags_with_positives,
                "tags_skipped": len(self.skipped_tags),
                "skipped_tags": list(self.skipped_tags),
                "skipped_positives": self.skipped_positives,
                "mAP": self.mAP,
                "macro": dict(self.macro),
                "micro": dict(self.micro),
                "per_tag": [vars(t).copy() for t in self.per_tag],
            }
        )


def _json_safe(value: Any) -> Any:
    """Replace NaN/inf by None and numpy scalars by Python numbers, recursively."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _threshold_value(value: Any) -> float:
    """A float32 threshold as the shortest decimal that reads back to it (0.65, not 0.6499999761581421)."""
    return float(np.format_float_positional(np.float32(value), unique=True, trim="-"))


def _pct(x: float) -> float:
    return float(x) * 100.0


def evaluate(tagger: Any, evalset: EvalSet, batch_size: int = 8, progress: Any = True) -> EvalReport:
    """Tag every image of `evalset` and score the model on the evaluation tags it knows."""
    labels = tagger.labels
    # Tags unknown to the model are skipped and reported (an error when none is known).
    evalset = evalset.restrict_to(labels.tags)
    cols = np.array([labels.index_of(name) for name in evalset.tag_names], dtype=np.int64)
    sources = [str(p) for p in evalset.images]

    bar = None
    if progress is True:
        from tqdm import tqdm

        bar = tqdm(total=len(sources), unit="img", file=sys.stderr, disable=None, leave=False, desc="eval")
    elif progress not in (None, False):
        bar = progress
    try:
        results, probs = tagger.tag_many(sources, batch_size=batch_size, progress=bar)
    finally:
        if progress is True and bar is not None:
            bar.close()

    ok = np.array([r.ok for r in results], dtype=bool) & np.isfinite(probs).all(axis=1)
    failed = [(sources[i], results[i].error or "non-finite scores") for i in np.flatnonzero(~ok)]
    if not ok.any():
        first = failed[0][1] if failed else "no images"
        raise RamEdgeError(
            f"all {len(sources)} images of {evalset.source or 'the evaluation set'} failed (first: {first}); "
            f"check the image paths (official benchmarks: pass the image folder with --image-root)"
        )
    ok_probs = probs[ok]
    scores = ok_probs[:, cols]
    targets = evalset.targets[ok]
    fired = labels.fired(ok_probs)[:, cols]

    ap = average_precision(scores, targets)
    prf = precision_recall_f1(fired, targets)
    valid = ~np.isnan(ap)
    mean_ap = _pct(ap[valid].mean()) if valid.any() else float("nan")
    per_tag = [
        TagMetrics(
            tag=name,
            model_index=int(cols[j]),
            threshold=_threshold_value(labels.thresholds[cols[j]]),
            positives=int(prf.positives[j]),
            predicted=int(prf.predicted[j]),
            true_positives=int(prf.tp[j]),
            ap=_pct(ap[j]),
            precision=_pct(prf.precision[j]),
            recall=_pct(prf.recall[j]),
            f1=_pct(prf.f1[j]),
        )
        for j, name in enumerate(evalset.tag_names)
    ]
    model = getattr(getattr(tagger, "info", None), "path", None)
    return EvalReport(
        model=str(model) if model is not None else "",
        data=evalset.source,
        format=evalset.format,
        images=int(ok.sum()),
        failed=failed,
        mAP=mean_ap,
        micro={k: _pct(v) for k, v in prf.micro.items()},
        macro={k: _pct(v) for k, v in prf.macro.items()},
        per_tag=per_tag,
        skipped_tags=list(evalset.skipped_tags),
        skipped_positives=evalset.skipped_positives,
        scores=scores,
        targets=targets,
    )


@dataclass
class TunedThresholds:
    """Per-tag thresholds tuned on an evaluation (for every tag of the model, in its order)."""

    thresholds: np.ndarray  # float32, one per model tag; untuned tags keep the model's
    tuned: int  # tags with a positive in the data, whose threshold was tuned
    macro_f1_before: float  # percent, over the tuned tags, on the tuning data
    macro_f1_after: float


def tune_report_thresholds(report: EvalReport, model_thresholds: np.ndarray) -> TunedThresholds:
    """Thresholds maximising each tag's F1 on the evaluated data (tags without a positive keep theirs)."""
    from .metrics import tune_thresholds

    if report.scores is None or report.targets is None:
        raise RamEdgeError("this report holds no scores to tune thresholds on; run evaluate() again")
    cols = np.array([t.model_index for t in report.per_tag], dtype=np.int64)
    current = np.asarray(model_thresholds, np.float32)[cols]
    tuning = tune_thresholds(report.scores, report.targets, default=current)
    full = np.array(model_thresholds, dtype=np.float32, copy=True)
    full[cols] = tuning.thresholds
    tuned = np.asarray(tuning.tuned, bool)
    before = precision_recall_f1(report.scores > current, report.targets)
    after = precision_recall_f1(report.scores > tuning.thresholds, report.targets)
    mean = (lambda f1: _pct(np.nanmean(np.asarray(f1)[tuned])) if tuned.any() else float("nan"))
    return TunedThresholds(full, int(tuned.sum()), mean(before.f1), mean(after.f1))


def write_thresholds(thresholds: np.ndarray, path: str | Path) -> Path:
    """One threshold per line (a checkpoint directory's thresholds.txt format), atomically; a directory gets thresholds.txt."""
    from ram_edge.labels import THRESHOLDS_FILE, _format_threshold

    path = Path(path)
    if path.is_dir():
        path = path / THRESHOLDS_FILE
    with atomic_file(path, "w") as fh:
        fh.write("".join(f"{_format_threshold(v)}\n" for v in np.asarray(thresholds, np.float32)))
    return path


def write_report(report: EvalReport, path: str | Path) -> None:
    """Write the report as JSON (atomic: the file is complete or untouched)."""
    with atomic_file(path, "w") as fh:
        json.dump(report.to_dict(), fh, indent=2, ensure_ascii=False, allow_nan=False)
        fh.write("\n")


PER_TAG_COLUMNS = ("tag", "model_index", "threshold", "positives", "predicted", "true_positives", "ap", "precision", "recall", "f1")


def write_per_tag_csv(report: EvalReport, path: str | Path) -> None:
    """Write one CSV row per evaluated tag (percent; empty cells where a value is undefined), atomically."""
    import csv

    with atomic_file(path, "w") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(PER_TAG_COLUMNS)
        for t in report.per_tag:
            row = []
            for key in PER_TAG_COLUMNS:
                v = getattr(t, key)
                if isinstance(v, float):
                    v = "" if not math.isfinite(v) else (str(v) if key == "threshold" else f"{v:.4f}")
                row.append(v)
            writer.writerow(row)
