"""`ram-edge bench A B [C ...]`: several models timed on one machine in interleaved rounds, one table.

Each measurement is `ram-edge bench MODEL --json` in a fresh process (no model's memory or thread pool
is left behind for the next); rounds alternate the order (A B C, then C B A, ...) so that a machine
that speeds up or slows down during the run favours no model. A model's figure is the median over
rounds of its p50 per image; the speed-up is against the first model.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ram_edge.errors import RamEdgeError


@dataclass
class SpeedRow:
    """One model's measurements over the rounds."""

    model: str
    runtime: str
    rounds: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ms_per_image(self) -> float | None:
        """Median over rounds of the p50 latency per image."""
        values = [r["latency_image_ms"]["p50"] for r in self.rounds]
        return float(np.median(values)) if values else None

    @property
    def spread(self) -> float | None:
        """(max - min) / median of the per-round figures: how much the rounds disagree."""
        values = [r["latency_image_ms"]["p50"] for r in self.rounds]
        if len(values) < 2:
            return None
        return float((max(values) - min(values)) / np.median(values))

    def summary(self, first: "SpeedRow") -> dict[str, Any]:
        """The table row: what ran, how fast, the speed-up against `first`."""
        last = self.rounds[-1] if self.rounds else {}
        ms, base = self.ms_per_image, first.ms_per_image
        return {
            "model": self.model, "runtime": last.get("runtime", self.runtime), "format": last.get("format"),
            "precision": last.get("precision"), "compute_precision": last.get("compute_precision"),
            "device": last.get("device"), "batch": last.get("batch_size"), "ms_per_image": ms,
            "img_per_s": None if not ms else 1000.0 / ms, "round_spread": self.spread,
            "speedup_vs_first": None if not (ms and base) else base / ms,
            "size_mb": last.get("model_size_mb"), "peak_rss_mb": last.get("peak_rss_mb"),
            "rounds": len(self.rounds), "error": self.errors[-1] if self.errors and not self.rounds else None,
        }


def bench_in_process(model: str, runtime: str, options: Sequence[str]) -> dict[str, Any]:
    """`ram-edge bench MODEL --runtime RUNTIME OPTIONS --json` in a fresh process; a failure returns {'error': ...}."""
    args = [sys.executable, "-m", "ram_edge.cli.main", "bench", model, "--runtime", runtime, *options, "--json"]
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode:
        return {"error": (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1].removeprefix("error: ")}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def interleaved_order(count: int, rounds: int) -> list[tuple[int, int]]:
    """(round, model index) in the order they run: forward in even rounds, backward in odd ones."""
    order = []
    for r in range(rounds):
        indices = range(count) if r % 2 == 0 else reversed(range(count))
        order += [(r, i) for i in indices]
    return order


def bench_side_by_side(models: Sequence[tuple[str, str]], options: Sequence[str] = (), *, rounds: int = 2,
                       measure: Callable[[str, str, Sequence[str]], dict[str, Any]] = bench_in_process,
                       progress: bool = True) -> list[dict[str, Any]]:
    """Time every (model, runtime) in `rounds` interleaved rounds; one summary row per model, speed-ups against the first."""
    from tqdm import tqdm

    if len(models) < 2:
        raise RamEdgeError("a side-by-side bench needs two or more models (for one, `ram-edge bench MODEL`)")
    if rounds < 1:
        raise RamEdgeError(f"--rounds {rounds}: give 1 or more rounds")
    rows = [SpeedRow(model, runtime) for model, runtime in models]
    order = interleaved_order(len(rows), rounds)
    with tqdm(total=len(order), desc="bench", unit="run", file=sys.stderr, disable=None if progress else True) as bar:
        for _, index in order:
            row = rows[index]
            result = measure(row.model, row.runtime, options)
            if "error" in result:
                row.errors.append(result["error"])
            else:
                row.rounds.append(result)
            bar.update(1)
    return [row.summary(rows[0]) for row in rows]


def table_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The side-by-side table as aligned text lines."""
    def cell(value: Any, digits: int = 2) -> str:
        if value is None:
            return "–"
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    header = ["model", "runtime", "precision", "computes in", "batch", "ms/image", "img/s", "speed-up", "rounds ±", "size MB"]
    body = []
    for row in rows:
        if row["ms_per_image"] is None:
            body.append([row["model"], row["runtime"], "–", "–", "–", "failed: " + str(row["error"]), "", "", "", ""])
            continue
        spread = "–" if row["round_spread"] is None else f"{100 * row['round_spread']:.0f}%"
        body.append([row["model"], row["runtime"], cell(row["precision"]), cell(row["compute_precision"]), cell(row["batch"]),
                     cell(row["ms_per_image"]), cell(row["img_per_s"], 1), f"{row['speedup_vs_first']:.2f}x", spread,
                     cell(row["size_mb"], 1)])
    widths = [max(len(str(line[i])) for line in [header, *body]) for i in range(len(header))]
    return ["  ".join(str(v).ljust(w) for v, w in zip(line, widths)).rstrip() for line in [header, *body]]
