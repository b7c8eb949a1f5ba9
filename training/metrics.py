"""Multi-label tagging metrics (numpy only): average precision, precision/recall/F1, threshold tuning.

All inputs are ``(N, T)`` matrices: N samples (images) by T tags (columns). Results are fractions
in [0, 1]; :mod:`ram_edge.training.evaluate` turns them into percent, as the official code prints.

Average precision (AP) is the official recognize-anything definition, ``ram/utils/metrics.py``
(``_average_precision``, called by ``get_mAP`` from ``batch_inference.py``; the same function as in
ML-GCN and ASL): rank the samples of one tag by score, descending; AP is the mean, over the positive
samples, of the precision at the rank of each positive (non-interpolated)::

    AP = (1 / P) * sum over positives k of  (positives ranked at or above k) / (rank of k)

Deliberate differences from the official function, none of which changes a value on a tag with
positives and distinct scores:

* Tags with no positive sample have no AP: NaN here, and they are left out of the mean
  (:func:`mean_average_precision`). The official code divides by ``P + 1e-8`` and so gives them
  AP = 0, and averages over every tag. The four official benchmarks have at least one positive for
  every tag (checked on the annotation files), so their mAP is the same under both rules.
* No ``1e-8`` in the denominator (the official value is smaller by a relative ~1e-8 / P).
* Ties: the official ranking is ``scores.argsort()[::-1]`` with numpy's default, unstable sort, so
  the order of equal scores is unspecified. Here it is ``argsort(kind="stable")[::-1]``: among equal
  scores the sample that comes later in the input ranks first. This is the official expression
  made deterministic.

Precision and recall per tag are the official ``get_PR`` ones (``TP / (TP + FP)``,
``TP / (TP + FN)``; 0 where the denominator is 0, as the official ``+ 1e-9`` gives), with these
additions: recall and F1 are NaN for a tag with no positive; F1 = 2PR / (P + R) (0 where P + R = 0).
The official "CP"/"CR" are the means of the per-tag values; here the macro means run over the tags
with at least one positive (the same set as mAP; identical to the official on its benchmarks), and
the macro F1 is the harmonic mean of macro P and R ("CF1" of ML-GCN / ASL; the official prints no
F1). Micro ("overall", OP/OR/OF1) values pool TP, FP and FN over every tag.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ram_edge.errors import RamEdgeError
from ram_edge.labels import DEFAULT_THRESHOLD

# Elements of an (N, chunk) working matrix; keeps the AP computation under ~100 MB.
_CHUNK_ELEMENTS = 4_000_000

OBJECTIVES = ("f1",)


def _as_scores(scores: Any, name: str = "scores") -> np.ndarray:
    """A finite 2-D float array."""
    arr = np.asarray(scores)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise RamEdgeError(f"{name} has shape {arr.shape}; pass an (N samples, T tags) matrix")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise RamEdgeError(f"{name} has dtype {arr.dtype}; pass real numbers")
    if arr.size and not np.isfinite(arr).all():
        raise RamEdgeError(f"{name} contains NaN or infinite values; drop the rows of failed images first")
    return arr


def _as_targets(targets: Any, shape: tuple[int, ...], name: str = "targets") -> np.ndarray:
    """A 0/1 (or bool) matrix of the given shape, as bool."""
    arr = np.asarray(targets)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.shape != shape:
        raise RamEdgeError(f"{name} has shape {arr.shape} but the scores/predictions have {shape}; give one value per sample and tag")
    if arr.dtype != bool:
        if not np.issubdtype(arr.dtype, np.number) or not np.isin(arr, (0, 1)).all():
            raise RamEdgeError(f"{name} must hold only 0/1 or True/False (positive or not)")
        arr = arr.astype(bool)
    return arr


def average_precision(scores: Any, targets: Any) -> np.ndarray:
    """Per-column non-interpolated AP (official RAM / ML-GCN / ASL definition); NaN for columns without a positive."""
    scores = _as_scores(scores)
    targets = _as_targets(targets, scores.shape)
    n, t = scores.shape
    out = np.full(t, np.nan, dtype=np.float64)
    if n == 0:
        return out
    ranks = np.arange(1, n + 1, dtype=np.float64)[:, None]
    step = max(1, _CHUNK_ELEMENTS // n)
    for start in range(0, t, step):
        cols = slice(start, min(t, start + step))
        # Descending order; among ties the later sample first (the stable form of argsort()[::-1]).
        order = np.argsort(scores[:, cols], axis=0, kind="stable")[::-1]
        hits = np.take_along_axis(targets[:, cols], order, axis=0)
        positives = hits.sum(axis=0)
        precision_at_rank = np.cumsum(hits, axis=0) / ranks
        summed = np.where(hits, precision_at_rank, 0.0).sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[cols] = np.where(positives > 0, summed / np.maximum(positives, 1), np.nan)
    return out


def mean_average_precision(scores: Any, targets: Any) -> float:
    """Mean of the per-tag APs over the tags with at least one positive (NaN if there is none)."""
    ap = average_precision(scores, targets)
    valid = ~np.isnan(ap)
    return float(ap[valid].mean()) if valid.any() else float("nan")


@dataclass
class PRF:
    """Per-tag counts and P/R/F1, plus micro (pooled) and macro (mean over tags with positives) summaries."""

    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    micro: dict[str, float]
    macro: dict[str, float]

    @property
    def positives(self) -> np.ndarray:
        """Positives per tag (TP + FN)."""
        return self.tp + self.fn

    @property
    def predicted(self) -> np.ndarray:
        """Predictions per tag (TP + FP)."""
        return self.tp + self.fp


def _f1(p: np.ndarray | float, r: np.ndarray | float) -> np.ndarray:
    """Harmonic mean, 0 where P + R = 0, NaN where either is NaN."""
    p, r = np.asarray(p, dtype=np.float64), np.asarray(r, dtype=np.float64)
    total = p + r
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 2 * p * r / np.where(total > 0, total, 1), np.where(np.isnan(total), np.nan, 0.0))


def precision_recall_f1(pred: Any, targets: Any) -> PRF:
    """Precision, recall and F1 per tag and overall (micro and macro) for boolean predictions."""
    pred_arr = np.asarray(pred)
    if pred_arr.ndim == 1:
        pred_arr = pred_arr[:, None]
    if pred_arr.ndim != 2:
        raise RamEdgeError(f"predictions have shape {pred_arr.shape}; pass an (N samples, T tags) matrix")
    pred_arr = _as_targets(pred_arr, pred_arr.shape, "predictions")
    targets = _as_targets(targets, pred_arr.shape)
    tp = (pred_arr & targets).sum(axis=0).astype(np.int64)
    fp = (pred_arr & ~targets).sum(axis=0).astype(np.int64)
    fn = (~pred_arr & targets).sum(axis=0).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
        recall = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), np.nan)
    f1 = _f1(precision, recall)
    has_pos = (tp + fn) > 0
    tp_all, fp_all, fn_all = int(tp.sum()), int(fp.sum()), int(fn.sum())
    op = tp_all / (tp_all + fp_all) if tp_all + fp_all else 0.0
    orc = tp_all / (tp_all + fn_all) if tp_all + fn_all else float("nan")
    micro = {"precision": float(op), "recall": float(orc), "f1": float(_f1(op, orc))}
    if has_pos.any():
        cp, cr = float(precision[has_pos].mean()), float(recall[has_pos].mean())
        macro = {"precision": cp, "recall": cr, "f1": float(_f1(cp, cr))}
    else:
        macro = {"precision": float("nan"), "recall": float("nan"), "f1": float("nan")}
    return PRF(tp, fp, fn, precision, recall, f1, micro, macro)


@dataclass
class ThresholdTuning:
    """Result of :func:`tune_thresholds`: float32 thresholds, the F1 each reached, which were tuned."""

    thresholds: np.ndarray
    f1: np.ndarray
    tuned: np.ndarray


def _candidates_from_scores(col: np.ndarray) -> np.ndarray:
    """Thresholds that realise every distinct cut of one column under the strict rule `score > t`.

    Between two neighbouring distinct scores lo < hi the midpoint (in float32; lo itself if the
    midpoint rounds up to hi) predicts exactly the samples >= hi. Below the lowest score s the
    candidate is s / 2 (predict everything; probabilities are >= 0).
    """
    u = np.unique(col)
    lo, hi = u[:-1], u[1:]
    mid = ((lo.astype(np.float64) + hi.astype(np.float64)) / 2).astype(np.float32)
    mid = np.where(mid < hi, mid, lo)
    return np.concatenate([[np.float32(u[0] / 2)], mid]).astype(np.float32)


def tune_thresholds(
    scores: Any,
    targets: Any,
    grid: Sequence[float] | np.ndarray | None = None,
    objective: str = "f1",
    default: float | Sequence[float] | np.ndarray = DEFAULT_THRESHOLD,
) -> ThresholdTuning:
    """Per-tag threshold maximising F1 on a validation split (default for tags without a positive).

    Method: for each tag (column) every candidate threshold t is scored by the F1 of the rule
    ``score > t`` (strict, float32: the rule the tagger applies). Candidates are ``grid`` when given
    (values in [0, 1]), else the thresholds between every two neighbouring distinct scores of that
    tag plus one below the lowest (every distinct cut of the ranking is tried). Ties in F1 go to
    the highest threshold (fewest predictions). Tags with no positive in ``targets`` cannot be
    tuned: they get ``default`` (one value, or one per tag such as the model's current thresholds),
    ``tuned`` False and F1 NaN. Scores must be probabilities in [0, 1].
    """
    if objective not in OBJECTIVES:
        raise RamEdgeError(f"unknown threshold objective {objective!r}; valid: {', '.join(OBJECTIVES)}")
    scores = _as_scores(scores).astype(np.float32)
    targets = _as_targets(targets, scores.shape)
    if scores.size and (scores.min() < 0 or scores.max() > 1):
        raise RamEdgeError("scores must be probabilities in [0, 1] to tune thresholds; apply the sigmoid to logits first")
    n, t = scores.shape
    defaults = np.broadcast_to(np.asarray(default, dtype=np.float32), (t,)) if np.ndim(default) == 0 else np.asarray(default, dtype=np.float32)
    if defaults.shape != (t,):
        raise RamEdgeError(f"default thresholds have shape {defaults.shape}; give one value or one per tag ({t})")
    if not (np.isfinite(defaults).all() and (defaults >= 0).all() and (defaults <= 1).all()):
        raise RamEdgeError("default thresholds must be numbers in [0, 1]")
    grid_arr = None
    if grid is not None:
        grid_arr = np.unique(np.asarray(grid, dtype=np.float32))
        if grid_arr.size == 0 or not np.isfinite(grid_arr).all() or grid_arr.min() < 0 or grid_arr.max() > 1:
            raise RamEdgeError("threshold grid must be a non-empty list of numbers in [0, 1], e.g. numpy.linspace(0, 1, 101)")
    thresholds = defaults.astype(np.float32).copy()
    best_f1 = np.full(t, np.nan, dtype=np.float64)
    tuned = np.zeros(t, dtype=bool)
    for j in range(t):
        col, pos = scores[:, j], targets[:, j]
        n_pos = int(pos.sum())
        if n_pos == 0:
            continue
        cand = grid_arr if grid_arr is not None else _candidates_from_scores(col)
        all_sorted = np.sort(col)
        pos_sorted = np.sort(col[pos])
        predicted = n - np.searchsorted(all_sorted, cand, side="right")
        tp = n_pos - np.searchsorted(pos_sorted, cand, side="right")
        f1 = 2.0 * tp / (predicted + n_pos)
        # Highest threshold among the best: search from the top end of the ascending candidates.
        k = len(cand) - 1 - int(np.argmax(f1[::-1]))
        thresholds[j], best_f1[j], tuned[j] = cand[k], f1[k], True
    return ThresholdTuning(thresholds, best_f1, tuned)
