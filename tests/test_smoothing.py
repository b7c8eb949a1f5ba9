"""`TagStabilizer` (--smooth K, --hysteresis D) on scripted score sequences whose on/off frames are worked out by
hand, its edge cases, and the flicker benchmark on a few frames."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from ram_edge.errors import StreamError
from ram_edge.smoothing import TagStabilizer, check_options

# Two tags, X (threshold 0.5) and Y (threshold 0.75), over 12 frames. Every score is a multiple of 1/16, so every
# mean below is exact in float32 and the hand-worked comparisons hold bit for bit.
NAMES = ["X", "Y"]
THRESHOLDS = np.array([0.5, 0.75], np.float32)
X = [0.25, 0.5625, 0.4375, 0.5625, 0.4375, 0.6875, 0.75, 0.6875, 0.4375, 0.5625, 0.25, 0.25]
Y = [0.9375, 0.9375, 0.8125, 0.6875, 0.8125, 0.6875, 0.625, 0.625, 0.625, 0.9375, 0.9375, 0.9375]
SCRIPT = np.array([X, Y], np.float32).T  # (12 frames, 2 tags)


def events(smooth: int, hysteresis: float) -> dict[int, tuple[list[str], list[str]]]:
    """frame -> (tags turned on, tags turned off), for the frames where something changed."""
    stabilizer = TagStabilizer(THRESHOLDS, smooth=smooth, hysteresis=hysteresis)
    out = {}
    for frame, probs in enumerate(SCRIPT):
        step = stabilizer.update(probs)
        if len(step.added) or len(step.removed):
            out[frame] = ([NAMES[i] for i in step.added], [NAMES[i] for i in step.removed])
    return out


def test_plain_thresholds_flicker():
    # X > 0.5 at frames 1, 3, 5-7, 9; Y > 0.75 at frames 0-2, 4, 9-11.
    assert events(1, 0.0) == {
        0: (["Y"], []), 1: (["X"], []), 2: ([], ["X"]), 3: (["X"], ["Y"]), 4: (["Y"], ["X"]), 5: (["X"], ["Y"]),
        8: ([], ["X"]), 9: (["X", "Y"], []), 10: ([], ["X"]),
    }


def test_smooth_only():
    # K=4, mean of the last 4 frames (fewer at the start):
    # X: .25 .40625 .41667 .453125 .5 | .53125 .609375 .640625 .640625 .609375 | .484375 .375  -> on at 5, off at 10
    #    (frame 4 is exactly 0.5: not above the threshold)
    # Y: .9375 .9375 .89583 .84375 .8125 | .75 .703125 .6875 .640625 .703125 | .78125 .859375 -> on 0, off 5, on 10
    assert events(4, 0.0) == {0: (["Y"], []), 5: (["X"], ["Y"]), 10: (["Y"], ["X"])}


def test_hysteresis_only():
    # D=0.125: X turns on above .625 and off at or below .375; Y on above .875, off at or below .625.
    # X: .6875 at frame 5 turns it on; .4375 at frame 8 keeps it on; .25 at frame 10 turns it off.
    # Y: on at 0; .6875 at frames 3 and 5 keeps it on; .625 at frame 6 turns it off; .9375 at frame 9 on again.
    assert events(1, 0.125) == {0: (["Y"], []), 5: (["X"], []), 6: ([], ["Y"]), 9: (["Y"], []), 10: ([], ["X"])}


def test_smooth_and_hysteresis():
    # K=2, D=0.125. X means: .25 .40625 .5 .5 .5 .5625 | .71875 .71875 .5625 .5 .40625 | .25
    #   -> on at 6 (first mean above .625), held down to .40625 (> .375), off at 11.
    # Y means: .9375 .9375 .875 .75 .75 .75 .65625 | .625 .625 .78125 | .9375 .9375
    #   -> on at 0, held while above .625, off at 7 (= .625), not back on at 9 (.78125 <= .875), on at 10.
    assert events(2, 0.125) == {0: (["Y"], []), 6: (["X"], []), 7: ([], ["Y"]), 10: (["Y"], []), 11: ([], ["X"])}


def test_flip_counts_fall():
    flips = {k: sum(len(a) + len(r) for a, r in events(*k).values()) for k in [(1, 0.0), (4, 0.0), (1, 0.125), (2, 0.125)]}
    assert flips == {(1, 0.0): 13, (4, 0.0): 5, (1, 0.125): 5, (2, 0.125): 5}


def test_k1_and_d0_are_plain_thresholds_exactly():
    rng = np.random.default_rng(3)
    thresholds = rng.uniform(0.6, 0.99, 50).astype(np.float32)
    frames = rng.uniform(0.5, 1.0, (40, 50)).astype(np.float32)
    frames[::5, :10] = thresholds[:10]  # exactly at the threshold: off, by the strict official rule
    plain = TagStabilizer(thresholds)
    assert not plain.active
    for row in frames:
        step = plain.update(row)
        assert np.array_equal(step.on, row > thresholds) and np.array_equal(step.scores, row)
    # D=0 with smoothing: the plain rule on the smoothed scores, whatever was on before.
    smoothed = TagStabilizer(thresholds, smooth=3, hysteresis=0.0)
    for i, row in enumerate(frames):
        step = smoothed.update(row)
        mean = frames[max(0, i - 2): i + 1].mean(axis=0, dtype=np.float64).astype(np.float32)
        assert np.array_equal(step.scores, mean) and np.array_equal(step.on, mean > thresholds)


def test_band_is_narrowed_so_high_thresholds_can_still_turn_on():
    stabilizer = TagStabilizer(np.array([0.9375, 0.5, 0.0625], np.float32), hysteresis=0.25)
    assert stabilizer.on_level.tolist() == [0.96875, 0.75, 0.3125]  # 0.9375 + half of its 0.0625 headroom
    assert stabilizer.off_level.tolist() == [0.6875, 0.25, 0.03125]
    assert stabilizer.update(np.array([0.98, 0.7, 0.2], np.float32)).on.tolist() == [True, False, False]
    assert stabilizer.update(np.array([0.7, 0.8, 0.32], np.float32)).on.tolist() == [True, True, True]
    assert stabilizer.update(np.array([0.6875, 0.25, 0.04], np.float32)).on.tolist() == [False, False, True]


def test_fired_orders_like_label_decode_and_reset_forgets():
    stabilizer = TagStabilizer(np.full(4, 0.5, np.float32), smooth=2)
    step = stabilizer.update(np.array([0.6, 0.9, 0.2, 0.6], np.float32))
    assert step.fired() == [(1, pytest.approx(0.9)), (0, pytest.approx(0.6)), (3, pytest.approx(0.6))]
    assert [i for i, _ in step.fired(top_k=2)] == [1, 0]
    stabilizer.reset()
    assert stabilizer.update(np.array([0.2, 0.2, 0.2, 0.2], np.float32)).fired() == []  # the 0.9 is forgotten


@pytest.mark.parametrize("smooth, hysteresis, needle", [
    (0, 0.0, r"--smooth 0: the number of frames to average must be a whole number >= 1"),
    (-2, 0.0, r"--smooth -2"),
    (2.5, 0.0, r"--smooth 2.5"),
    (True, 0.0, r"--smooth True"),
    (1, -0.01, r"--hysteresis -0.01 is negative"),
    (1, 0.5, r"--hysteresis 0.5 is too large"),
    (1, 3.0, r"--hysteresis 3.0 is too large"),
    (1, float("nan"), r"--hysteresis nan is not a number"),
])
def test_invalid_options_are_refused_naming_the_option(smooth, hysteresis, needle):
    with pytest.raises(StreamError, match=needle):
        check_options(smooth, hysteresis)
    with pytest.raises(StreamError, match=needle):
        TagStabilizer(THRESHOLDS, smooth=smooth, hysteresis=hysteresis)


def test_wrong_probability_shape_is_an_error():
    with pytest.raises(StreamError, match=r"probabilities of shape \(3,\) for 2 tags"):
        TagStabilizer(THRESHOLDS, smooth=2).update(np.zeros(3, np.float32))


def test_module_is_numpy_only():
    code = ("import sys, ram_edge.smoothing; bad = [m for m in ('torch', 'cv2', 'onnxruntime') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- the benchmark, on a few frames ------------------------------------------------------------------------------

def test_video_flicker_benchmark_writes_the_four_rows(tmp_path):
    pytest.importorskip("cv2")
    pytest.importorskip("onnxruntime")
    from experiment_scripts import load

    video_flicker = load("video_flicker")
    report = tmp_path / "flicker.md"
    video_flicker.main(["--report", str(report), "--scenes", "3", "--scene-frames", "4", "--smooth", "3",
                        "--hysteresis", "0.05", "--workdir", str(tmp_path / "work")])
    text = report.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| setting")]
    assert [r.split("|")[1].strip() for r in rows] == ["off", "smooth", "hysteresis", "both"]
    assert "Commit: " in text and "Machine: " in text and "python benchmarks/experiments/video_flicker.py" in text
    data = json.loads(report.with_suffix(".json").read_text())
    assert [r["setting"] for r in data["rows"]] == ["off", "smooth", "hysteresis", "both"]
    assert all(r["frames"] == 12 and len(r["settle_delays"]) == 2 for r in data["rows"])
    assert data["rows"][0]["smooth"] == 1 and (data["rows"][3]["smooth"], data["rows"][3]["hysteresis"]) == (3, 0.05)


def test_flicker_metrics_by_hand():
    from experiment_scripts import load

    flicker_metrics = load("video_flicker").flicker_metrics

    a, b, c = frozenset("a"), frozenset("ab"), frozenset("c")
    sets = [a, b, a, a, c, c, b, c]  # scene 1: frames 0-3, scene 2: frames 4-7
    metrics = flicker_metrics(sets, [0, 4], [a] * 4 + [c] * 4)
    # flips: +a, +b, -b, 0, (-a +c), 0, (+a +b -c), (-a -b +c) = 1+1+1+0+2+0+3+3
    assert metrics["flips"] == 11 and metrics["needed_flips"] == 1 + 2  # {} -> {a} -> {c}
    assert metrics["settle_delays"] == [3] and metrics["reach_delays"] == [0]
    assert metrics["agreement"] == pytest.approx((1 + 0.5 + 1 + 1 + 1 + 1 + 0 + 1) / 8)
