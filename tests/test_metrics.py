"""Tagging metrics against hand-computed values: AP/mAP, P/R/F1, per-tag threshold tuning."""

from __future__ import annotations

import numpy as np
import pytest

from ram_edge.errors import RamEdgeError
from ram_edge.training.metrics import (
    average_precision,
    mean_average_precision,
    precision_recall_f1,
    tune_thresholds,
)

# 4 images x 2 tags.
SCORES = np.array([[0.9, 0.1], [0.8, 0.4], [0.7, 0.3], [0.6, 0.2]], dtype=np.float32)
TARGETS = np.array([[1, 1], [0, 0], [1, 0], [0, 1]], dtype=bool)


def test_average_precision_hand_computed():
    # Tag 0, ranked by score: 0.9 (+), 0.8 (-), 0.7 (+), 0.6 (-).
    #   precision at the positives: 1/1 (rank 1), 2/3 (rank 3)  ->  AP = (1 + 2/3) / 2 = 5/6
    # Tag 1, ranked: 0.4 (-, image 1), 0.3 (-, image 2), 0.2 (+, image 3), 0.1 (+, image 0).
    #   precision at the positives: 1/3 (rank 3), 2/4 (rank 4)  ->  AP = (1/3 + 1/2) / 2 = 5/12
    # mAP = (5/6 + 5/12) / 2 = 15/24 = 0.625
    ap = average_precision(SCORES, TARGETS)
    assert ap == pytest.approx([5 / 6, 5 / 12], abs=1e-12)
    assert mean_average_precision(SCORES, TARGETS) == pytest.approx(0.625, abs=1e-12)


def test_tag_without_positive_is_nan_and_left_out_of_the_mean():
    scores = np.column_stack([SCORES, [0.5, 0.4, 0.3, 0.2]])
    targets = np.column_stack([TARGETS, [0, 0, 0, 0]])
    ap = average_precision(scores, targets)
    assert np.isnan(ap[2]) and ap[:2] == pytest.approx([5 / 6, 5 / 12])
    assert mean_average_precision(scores, targets) == pytest.approx(0.625)
    assert np.isnan(mean_average_precision(scores[:, 2:], targets[:, 2:]))


def test_perfect_ranking_and_ties():
    assert average_precision([[0.9], [0.2], [0.8]], [[1], [0], [1]]) == pytest.approx([1.0])
    # Equal scores: the official ranking is argsort()[::-1]; made stable, the later sample ranks
    # first, so the negative (image 1) is at rank 1 and the positive at rank 2: AP = 1/2.
    assert average_precision([[0.5], [0.5]], [[1], [0]]) == pytest.approx([0.5])
    assert average_precision([[0.5], [0.5]], [[0], [1]]) == pytest.approx([1.0])


def test_average_precision_matches_a_direct_loop():
    rng = np.random.default_rng(0)
    scores = np.round(rng.random((40, 7)), 1)  # many ties
    targets = rng.random((40, 7)) < 0.3
    targets[:, 6] = False
    ap = average_precision(scores, targets)
    for k in range(7):
        order = np.argsort(scores[:, k], kind="stable")[::-1]
        hits, precisions = 0, []
        for rank, i in enumerate(order, start=1):
            if targets[i, k]:
                hits += 1
                precisions.append(hits / rank)
        expected = np.mean(precisions) if precisions else np.nan
        np.testing.assert_allclose(ap[k], expected, rtol=1e-12, equal_nan=True)


def test_precision_recall_f1_hand_computed():
    pred = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [1, 0, 1]], dtype=bool)
    targets = np.array([[1, 1, 0], [0, 1, 0], [1, 0, 0], [1, 0, 0]], dtype=bool)
    prf = precision_recall_f1(pred, targets)
    # Tag 0: TP 2 (images 0, 3), FP 1 (image 1), FN 1 (image 2): P = R = F1 = 2/3.
    # Tag 1: TP 1 (image 1), FP 0, FN 1 (image 0): P = 1, R = 1/2, F1 = 2/3.
    # Tag 2: no positive, one FP (image 3): P = 0, R and F1 undefined (NaN).
    assert prf.tp.tolist() == [2, 1, 0] and prf.fp.tolist() == [1, 0, 1] and prf.fn.tolist() == [1, 1, 0]
    assert prf.precision == pytest.approx([2 / 3, 1.0, 0.0])
    np.testing.assert_allclose(prf.recall, [2 / 3, 0.5, np.nan])
    np.testing.assert_allclose(prf.f1, [2 / 3, 2 / 3, np.nan])
    # Micro: TP 3, FP 2, FN 2 -> P = 3/5, R = 3/5, F1 = 3/5.
    assert prf.micro == pytest.approx({"precision": 0.6, "recall": 0.6, "f1": 0.6})
    # Macro over the tags with positives (0 and 1): CP = (2/3 + 1)/2 = 5/6, CR = (2/3 + 1/2)/2 = 7/12,
    # F1 = 2 CP CR / (CP + CR) = 35/51.
    assert prf.macro == pytest.approx({"precision": 5 / 6, "recall": 7 / 12, "f1": 35 / 51})
    assert prf.positives.tolist() == [3, 2, 0] and prf.predicted.tolist() == [3, 1, 1]


def test_precision_recall_f1_edge_cases():
    prf = precision_recall_f1(np.zeros((2, 1), bool), np.array([[1], [0]]))
    assert prf.precision.tolist() == [0.0] and prf.recall.tolist() == [0.0] and prf.f1.tolist() == [0.0]
    assert prf.micro == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    with pytest.raises(RamEdgeError, match="shape"):
        precision_recall_f1(np.zeros((2, 2), bool), np.zeros((2, 3), bool))
    with pytest.raises(RamEdgeError, match="0/1"):
        precision_recall_f1(np.zeros((1, 1), bool), [[2]])


def test_tune_thresholds_from_unique_scores():
    scores = np.column_stack([SCORES, [0.3, 0.2, 0.1, 0.0]])
    targets = np.column_stack([TARGETS, [0, 0, 0, 0]])
    tuning = tune_thresholds(scores, targets, default=0.68)
    # Tag 0 (0.9+, 0.8-, 0.7+, 0.6-): F1 of the top 1..4 = 2/3, 1/2, 4/5, 2/3 -> keep the top 3:
    #   threshold between 0.7 and 0.6 = 0.65.
    # Tag 1 (0.4-, 0.3-, 0.2+, 0.1+): F1 = 0, 0, 2/5, 2/3 -> keep all: threshold 0.1 / 2 = 0.05.
    # Tag 2: no positive -> the default, not tuned.
    assert tuning.thresholds.dtype == np.float32
    assert tuning.thresholds.tolist() == [np.float32(0.65), np.float32(0.05), np.float32(0.68)]
    np.testing.assert_allclose(tuning.f1, [0.8, 2 / 3, np.nan])
    assert tuning.tuned.tolist() == [True, True, False]
    fired = scores.astype(np.float32) > tuning.thresholds
    assert precision_recall_f1(fired, targets).f1[:2] == pytest.approx([0.8, 2 / 3])


def test_tune_thresholds_grid_ties_and_defaults():
    tuning = tune_thresholds(SCORES[:, :1], TARGETS[:, :1], grid=[0.85, 0.5, 0.65, 0.75])
    # grid 0.5 -> F1 2/3; 0.65 -> 4/5; 0.75 -> 1/2; 0.85 -> 2/3.
    assert tuning.thresholds.tolist() == [np.float32(0.65)] and tuning.f1 == pytest.approx([0.8])
    # Both 0.2 and 0.5 separate perfectly: the higher threshold wins.
    assert tune_thresholds([[0.9], [0.1]], [[1], [0]], grid=[0.2, 0.5]).thresholds.tolist() == [np.float32(0.5)]
    per_tag_default = tune_thresholds(np.zeros((3, 2)), np.zeros((3, 2)), default=[0.3, 0.9])
    assert per_tag_default.thresholds.tolist() == [np.float32(0.3), np.float32(0.9)]
    assert not per_tag_default.tuned.any()


def test_tune_thresholds_finds_the_best_cut():
    rng = np.random.default_rng(1)
    scores = np.round(rng.random((60, 6)), 2).astype(np.float32)
    targets = rng.random((60, 6)) < 0.25
    tuning = tune_thresholds(scores, targets)
    for k in range(6):
        col, pos = scores[:, k], targets[:, k]
        best = max(2 * (pos & (col >= u)).sum() / ((col >= u).sum() + pos.sum()) for u in np.unique(col))
        assert tuning.f1[k] == pytest.approx(best)
        fired = col > tuning.thresholds[k]
        assert 2 * (fired & pos).sum() / (fired.sum() + pos.sum()) == pytest.approx(best)


def test_tune_thresholds_rejects_bad_input():
    with pytest.raises(RamEdgeError, match="objective"):
        tune_thresholds(SCORES, TARGETS, objective="accuracy")
    with pytest.raises(RamEdgeError, match="probabilities"):
        tune_thresholds(SCORES * 3, TARGETS)
    with pytest.raises(RamEdgeError, match="grid"):
        tune_thresholds(SCORES, TARGETS, grid=[1.5])
    with pytest.raises(RamEdgeError, match="NaN"):
        average_precision([[np.nan]], [[1]])
