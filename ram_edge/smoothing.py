"""Tags that hold still on video: per-tag smoothing and hysteresis of the probabilities of successive frames
(numpy only, torch-free).

A camera's tags flicker when a score hovers at its threshold: noise and a few pixels of jitter push it over and
back from frame to frame. `TagStabilizer` takes each processed frame's probabilities and

- `smooth=K`: thresholds the mean of each tag's probability over the last K frames (fewer at the start);
- `hysteresis=D`: turns a tag on when that mean is above threshold + D and off when it is at or below threshold - D,
  so a score has to cross the whole band to change the tag. The band is narrowed per tag to half the distance from
  its threshold to 1 (and to 0), so that a tag with a high threshold (0.95) can still turn on.

K=1 and D=0 is the plain rule (on exactly when prob > threshold, the official strict comparison in float32).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import StreamError

MAX_HYSTERESIS = 0.5  # a band half the probability range wide: every tag would need p > t + 0.5


@dataclass(frozen=True)
class Step:
    """One frame through the stabilizer: the (smoothed) scores, which tags are on, and which changed."""

    scores: np.ndarray  # (C,) float32: the mean over the window
    on: np.ndarray  # (C,) bool
    added: np.ndarray  # indices of tags that turned on at this frame
    removed: np.ndarray  # indices of tags that turned off at this frame

    def fired(self, top_k: int | None = None) -> list[tuple[int, float]]:
        """The tags that are on as (index, score), by score descending (ties by index), at most top_k, as
        `LabelSet.decode` orders them."""
        idx = np.flatnonzero(self.on)
        order = np.lexsort((idx, -self.scores[idx]))
        if top_k is not None:
            order = order[:top_k]
        return [(int(idx[j]), float(self.scores[idx[j]])) for j in order]


def check_options(smooth: int, hysteresis: float) -> None:
    """StreamError naming the option when `smooth` (--smooth) or `hysteresis` (--hysteresis) is out of range."""
    if isinstance(smooth, bool) or not isinstance(smooth, (int, np.integer)) or smooth < 1:
        raise StreamError(f"--smooth {smooth!r}: the number of frames to average must be a whole number >= 1 "
                          f"(1: no smoothing)")
    if isinstance(hysteresis, bool) or not isinstance(hysteresis, (int, float, np.floating)) or not np.isfinite(hysteresis):
        raise StreamError(f"--hysteresis {hysteresis!r} is not a number; give a probability margin such as 0.05")
    if hysteresis < 0:
        raise StreamError(f"--hysteresis {hysteresis!r} is negative; give a margin >= 0 (0: plain thresholds)")
    if hysteresis >= MAX_HYSTERESIS:
        raise StreamError(f"--hysteresis {hysteresis!r} is too large: a tag would turn on only above threshold + "
                          f"{hysteresis:g}; give a margin below {MAX_HYSTERESIS:g} (0.02 to 0.1 is typical)")


class TagStabilizer:
    """Per-tag smoothing over the last `smooth` frames and an on/off band of `hysteresis` around each threshold."""

    def __init__(self, thresholds: np.ndarray, smooth: int = 1, hysteresis: float = 0.0) -> None:
        check_options(smooth, hysteresis)
        t = np.asarray(thresholds, dtype=np.float32)
        if t.ndim != 1 or len(t) == 0:
            raise StreamError(f"thresholds must be one value per tag, got shape {t.shape}")
        self.smooth, self.hysteresis, self.thresholds = int(smooth), float(hysteresis), t
        band = np.float32(hysteresis)
        # float32 throughout: with D=0 the levels are the thresholds bit for bit, so the rule is the plain one.
        self.on_level = t + np.minimum(band, (np.float32(1) - t) / np.float32(2))
        self.off_level = t - np.minimum(band, t / np.float32(2))
        self.reset()

    @property
    def active(self) -> bool:
        """False for smooth=1, hysteresis=0: the plain per-frame thresholds."""
        return self.smooth > 1 or self.hysteresis > 0

    def reset(self) -> None:
        """Forget the frames seen so far; every tag off (a new video, a reconnected camera)."""
        self._window = np.zeros((self.smooth, len(self.thresholds)), np.float32)
        self._seen = 0
        self.on = np.zeros(len(self.thresholds), bool)

    def update(self, probs: np.ndarray) -> Step:
        """Add one frame's probabilities (C,) and return the tags that are on after it."""
        row = np.asarray(probs, dtype=np.float32)
        if row.shape != self.thresholds.shape:
            raise StreamError(f"probabilities of shape {row.shape} for {len(self.thresholds)} tags")
        self._window[self._seen % self.smooth] = row
        self._seen += 1
        # The mean of the frames in the window, recomputed each time (a running sum drifts over a long video).
        scores = self._window[: min(self._seen, self.smooth)].mean(axis=0, dtype=np.float64).astype(np.float32)
        was = self.on
        now = np.where(was, scores > self.off_level, scores > self.on_level)
        self.on = now
        return Step(scores, now.copy(), np.flatnonzero(now & ~was), np.flatnonzero(was & ~now))
