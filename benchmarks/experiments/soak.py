"""Soak run: 10,000 frames through `ram-edge watch` and 10,000 images through `Tagger.tag`, resident memory
sampled along the way (target: growth under 5% from start to end).

    python benchmarks/experiments/soak.py --workdir /tmp/soak [--frames 10000] [--images 10000] [--report benchmarks/results/soak/soak.md]

"Start" is after a warm-up (the first 200 frames / images: allocator pools and runtime caches fill
there); "end" is after the last. `watch` runs as its own process (sampled from /proc/PID/status);
`Tagger.tag` runs in this process, one image per call, as a service would call it. Not part of CI.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ram_edge.fileio import atomic_file

from ram_edge.benchmarks.harness import cpu_features

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "ram_edge" / "assets" / "default_model" / "examples"
WARMUP = 200
TARGET_GROWTH = 0.05


def _rss_mb(pid: int | str = "self") -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def make_video(path: Path, frames: int) -> Path:
    """An MJPG AVI of `frames` frames cycling through the example scenes, each slightly shifted."""
    import cv2
    from PIL import Image

    if path.is_file():
        return path
    scenes = [np.asarray(Image.open(p).convert("RGB"))[:, :, ::-1] for p in sorted(EXAMPLES.glob("*.png"))]
    writer = cv2.VideoWriter(str(path.with_suffix(".tmp.avi")), cv2.VideoWriter_fourcc(*"MJPG"), 30, (160, 160))
    for i in range(frames):
        writer.write(np.ascontiguousarray(np.roll(scenes[i % len(scenes)], i % 7, axis=1)))
    writer.release()
    path.with_suffix(".tmp.avi").rename(path)
    return path


def soak_watch(video: Path, frames: int) -> dict[str, Any]:
    """`ram-edge watch VIDEO --json` in its own process; RSS after the warm-up, every 1000 frames, at the end."""
    proc = subprocess.Popen([sys.executable, "-m", "ram_edge.cli.main", "watch", str(video), "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    samples, lines, started = {}, 0, time.perf_counter()
    assert proc.stdout is not None
    for line in proc.stdout:
        json.loads(line)
        lines += 1
        if lines == WARMUP or lines % 1000 == 0:
            samples[lines] = _rss_mb(proc.pid)
        if lines == frames:
            samples[lines] = _rss_mb(proc.pid)
    _, err = proc.communicate()
    seconds = time.perf_counter() - started
    if proc.returncode:
        raise SystemExit(f"ram-edge watch failed ({proc.returncode}): {err[-2000:]}")
    start, end = samples[WARMUP], samples[max(samples)]
    return {"what": f"ram-edge watch ({frames} frames, video file, --json)", "items": lines, "seconds": seconds,
            "rss_start_mb": start, "rss_end_mb": end, "growth": (end - start) / start, "samples": samples,
            "summary": err.strip().splitlines()[-1]}


def soak_tagger(images: int) -> dict[str, Any]:
    """`Tagger.tag([path])` `images` times in this process (the default model on onnxruntime)."""
    from ram_edge import Tagger
    from ram_edge.default_model import default_model_path

    paths = sorted(EXAMPLES.glob("*.png"))
    samples, started = {}, time.perf_counter()
    with Tagger.load(default_model_path(), runtime="ort") as tagger:
        for i in range(1, images + 1):
            result = tagger.tag([paths[i % len(paths)]])[0]
            assert result.ok
            if i == WARMUP or i % 1000 == 0 or i == images:
                samples[i] = _rss_mb()
    seconds = time.perf_counter() - started
    start, end = samples[WARMUP], samples[images]
    return {"what": f"Tagger.tag, one image per call ({images} calls, ort)", "items": images, "seconds": seconds,
            "rss_start_mb": start, "rss_end_mb": end, "growth": (end - start) / start, "samples": samples}


def write_report(path: Path, result: dict[str, Any]) -> None:
    """Markdown + JSON."""
    cpu = result["cpu"]
    lines = ["# Soak run: resident memory over 10,000 frames and 10,000 images", "",
             f"Machine: {cpu['model']}, {cpu['cores']} cores ({', '.join(cpu['features']) or 'no AVX-512'}); "
             f"default model on onnxruntime; date {result['date']}  ",
             f"Command: `{result['command']}`; start = after {WARMUP} warm-up items; target: growth < {TARGET_GROWTH:.0%}", "",
             "| run | items | seconds | RSS start (MB) | RSS end (MB) | growth | verdict |", "|---|---:|---:|---:|---:|---:|---|"]
    for row in result["runs"]:
        verdict = "pass" if row["growth"] < TARGET_GROWTH else "MISS"
        lines.append(f"| {row['what']} | {row['items']} | {row['seconds']:.0f} | {row['rss_start_mb']:.1f} | {row['rss_end_mb']:.1f} "
                     f"| {100 * row['growth']:+.2f}% | {verdict} |")
    lines += ["", "RSS samples (items: MB):", ""]
    for row in result["runs"]:
        lines.append(f"- {row['what']}: " + ", ".join(f"{k}: {v:.1f}" for k, v in row["samples"].items()))
    for row in result["runs"]:
        if "summary" in row:
            lines.append(f"- watch's own summary: `{row['summary']}`")
    with atomic_file(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    with atomic_file(path.with_suffix(".json"), "w") as fh:
        json.dump(result, fh, indent=1)


def main(argv: list[str] | None = None) -> None:
    """Run both soaks and write the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--frames", type=int, default=10_000)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--report", type=Path, default=REPO / "benchmarks" / "results" / "soak" / "soak.md")
    args = parser.parse_args(argv)
    for name in ("frames", "images"):
        if getattr(args, name) <= WARMUP:
            parser.error(f"--{name} must be more than the {WARMUP} warm-up items that memory growth is measured after")
    args.workdir.mkdir(parents=True, exist_ok=True)
    video = make_video(args.workdir / f"soak-{args.frames}.avi", args.frames)
    runs = [soak_watch(video, args.frames)]
    print(json.dumps({k: v for k, v in runs[-1].items() if k != "samples"}), file=sys.stderr, flush=True)
    runs.append(soak_tagger(args.images))
    print(json.dumps({k: v for k, v in runs[-1].items() if k != "samples"}), file=sys.stderr, flush=True)
    result = {"date": datetime.date.today().isoformat(), "cpu": cpu_features(), "runs": runs,
              "command": " ".join(["python benchmarks/experiments/soak.py", *(argv if argv is not None else sys.argv[1:])])}
    write_report(args.report, result)
    print(f"wrote {args.report}", file=sys.stderr)


if __name__ == "__main__":
    main()
