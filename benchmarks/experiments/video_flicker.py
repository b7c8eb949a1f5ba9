"""Tags that hold still on video: how often the tags of a jittery, noisy video flip, and how long the tag set takes
to settle after a real scene change, with plain thresholds, --smooth, --hysteresis and both.

    python benchmarks/experiments/video_flicker.py --report benchmarks/results/video_flicker/video_flicker.md
        [--scenes 12] [--scene-frames 30] [--noise 4] [--jitter 3] [--smooth 5] [--hysteresis 0.05] [--seed 0]

The video (MJPG AVI, 30 fps, generated into --workdir or a temporary folder): the shipped default model's example
scenes (ram_edge/assets/default_model/examples/scene-*.png) one after another, each for --scene-frames frames, every
frame shifted by up to --jitter pixels at random (a hand-held camera) and given Gaussian pixel noise of standard
deviation --noise. The default model (onnxruntime) tags every frame once, read back through `FrameReader` as
`ram-edge watch` reads a file; the four settings then run `TagStabilizer` over the same probabilities, and the last
one is checked frame by frame against `Tagger.stream(video, smooth=K, hysteresis=D)`, the path `watch` takes.

Per setting: tag flips per 100 frames (a tag turning on or off; the video's start counts as a change from no tags);
the flips beyond the ones the scene changes need (|settled set before ^ settled set after| per change, a scene's
settled set being its last frame's); the settle delay (frames from a scene change to the scene's last change of the
tag set: 0 when the new set shows at once and holds; near --scene-frames when it never holds still) and the frames
until the set first equals the scene's settled set (the lag); and the mean
Jaccard agreement of each frame's tags with the tags of the clean scene image (no noise, no shift, plain thresholds).
"""

from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


from ram_edge.benchmarks.harness import cpu_features, write_report_files

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "ram_edge" / "assets" / "default_model" / "examples"
FPS = 30


def scene_order(scenes: int, kinds: int, rng: np.random.Generator) -> list[int]:
    """`scenes` example indices: shuffled rounds through all `kinds`, never the same scene twice in a row."""
    order: list[int] = []
    while len(order) < scenes:
        round_ = [int(i) for i in rng.permutation(kinds)]
        if order and kinds > 1 and round_[0] == order[-1]:
            round_[0], round_[1] = round_[1], round_[0]
        order += round_
    return order[:scenes]


def make_video(path: Path, scenes: list[np.ndarray], order: list[int], scene_frames: int, noise: float, jitter: int,
               rng: np.random.Generator) -> Path:
    """MJPG AVI: scene `order[i]` for `scene_frames` frames each, every frame shifted and noised."""
    import cv2

    height, width = scenes[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (width, height))
    if not writer.isOpened():
        raise SystemExit(f"cannot write {path} with OpenCV's MJPG writer")
    for index in order:
        for _ in range(scene_frames):
            dx, dy = (int(v) for v in rng.integers(-jitter, jitter + 1, size=2))
            shift = np.array([[1, 0, dx], [0, 1, dy]], np.float32)
            # A camera that moves sees more of the scene at the edge, not the opposite edge wrapped round: reflect.
            frame = cv2.warpAffine(scenes[index], shift, (width, height), borderMode=cv2.BORDER_REFLECT_101)
            if noise > 0:
                frame = np.clip(frame + rng.normal(0.0, noise, frame.shape), 0, 255).astype(np.uint8)
            writer.write(np.ascontiguousarray(frame))
    writer.release()
    return path


def flicker_metrics(sets: list[frozenset], starts: list[int], reference: list[frozenset]) -> dict[str, Any]:
    """Flips, flips beyond the scene changes, settle delays and agreement of per-frame tag sets (see module docstring).

    `starts`: the first frame of each scene; `reference`: each frame's clean-scene tag set.
    """
    frames = len(sets)
    before = [frozenset(), *sets[:-1]]
    changed = [s != b for s, b in zip(sets, before)]
    flips = sum(len(s ^ b) for s, b in zip(sets, before))
    ends = [*starts[1:], frames]
    settled = [sets[end - 1] for end in ends]
    needed = sum(len(a ^ b) for a, b in zip([frozenset(), *settled[:-1]], settled))
    delays, reach = [], []
    for j, (start, end) in list(enumerate(zip(starts, ends)))[1:]:  # the scene changes (the first scene starts the video)
        delays.append(max((f for f in range(start, end) if changed[f]), default=start) - start)
        reach.append(next(f for f in range(start, end) if sets[f] == settled[j]) - start)
    agreement = [len(s & r) / len(s | r) if s | r else 1.0 for s, r in zip(sets, reference)]
    return {"frames": frames, "flips": flips, "needed_flips": needed,
            "flips_per_100": 100.0 * flips / frames, "excess_flips_per_100": 100.0 * (flips - needed) / frames,
            "settle_delays": delays, "settle_mean": float(np.mean(delays)) if delays else 0.0,
            "settle_median": float(np.median(delays)) if delays else 0.0, "settle_max": int(max(delays, default=0)),
            "reach_delays": reach, "reach_mean": float(np.mean(reach)) if reach else 0.0,
            "reach_median": float(np.median(reach)) if reach else 0.0, "agreement": float(np.mean(agreement))}


def git_commit() -> str:
    """HEAD's commit, and whether the working tree differed from it (read-only git calls)."""
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "diff-index", "--quiet", "HEAD", "--"], capture_output=True).returncode
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return commit + (" (with uncommitted changes)" if dirty else "")


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Generate the video, tag it once, run the four settings; the result dictionary of the report."""
    from PIL import Image

    from ram_edge import Tagger
    from ram_edge.default_model import default_model_path
    from ram_edge.smoothing import TagStabilizer
    from ram_edge.stream import FrameReader

    rng = np.random.default_rng(args.seed)
    paths = sorted(EXAMPLES.glob("scene-*.png"))
    scenes = [np.ascontiguousarray(np.asarray(Image.open(p).convert("RGB"))[:, :, ::-1]) for p in paths]
    order = scene_order(args.scenes, len(scenes), rng)
    video = make_video(workdir / "flicker.avi", scenes, order, args.scene_frames, args.noise, args.jitter, rng)
    starts = [i * args.scene_frames for i in range(len(order))]
    settings = {"off": (1, 0.0), "smooth": (args.smooth, 0.0), "hysteresis": (1, args.hysteresis),
                "both": (args.smooth, args.hysteresis)}
    with Tagger.load(default_model_path(), runtime="ort") as tagger:
        thresholds, tags = tagger.labels.thresholds, tagger.tags
        clean = [frozenset(tags[i] for i in np.flatnonzero(row > thresholds)) for row in tagger.scores(scenes, channels="bgr")]
        started = time.perf_counter()
        probs = []
        with FrameReader(video) as reader:
            for frame in reader.frames():
                probs.append(tagger.scores([frame.image], channels="bgr")[0])  # one frame per call, as watch tags
        seconds = time.perf_counter() - started
        if len(probs) != len(order) * args.scene_frames:
            raise SystemExit(f"read {len(probs)} frames back from {video}, wrote {len(order) * args.scene_frames}")
        reference = [clean[order[f // args.scene_frames]] for f in range(len(probs))]
        rows, per_frame = [], {}
        for name, (smooth, hysteresis) in settings.items():
            stabilizer = TagStabilizer(thresholds, smooth=smooth, hysteresis=hysteresis)
            sets = [frozenset(tags[i] for i in np.flatnonzero(stabilizer.update(p).on)) for p in probs]
            per_frame[name] = sets
            rows.append({"setting": name, "smooth": smooth, "hysteresis": hysteresis,
                         **flicker_metrics(sets, starts, reference)})
        # The numbers above are the ones `ram-edge watch --smooth K --hysteresis D` shows: check on the real path.
        streamed = [frozenset(t.tag for t in item.result.tags)
                    for item in tagger.stream(video, smooth=args.smooth, hysteresis=args.hysteresis)]
        if streamed != per_frame["both"]:
            bad = next(i for i, (a, b) in enumerate(zip(streamed, per_frame["both"])) if a != b) if len(streamed) == len(probs) else "count"
            raise SystemExit(f"Tagger.stream disagrees with the offline TagStabilizer at frame {bad}")
    return {"date": datetime.date.today().isoformat(), "cpu": cpu_features(), "commit": git_commit(),
            "parameters": {"scenes": len(order), "scene_frames": args.scene_frames, "noise": args.noise,
                           "jitter": args.jitter, "seed": args.seed, "fps": FPS, "smooth": args.smooth,
                           "hysteresis": args.hysteresis, "order": [paths[i].name for i in order]},
            "model": "default model (ram_edge/assets/default_model), onnxruntime", "tagging_seconds": seconds,
            "stream_check": f"Tagger.stream(smooth={args.smooth}, hysteresis={args.hysteresis:g}) gave the same tag sets on "
                            f"all {len(probs)} frames as the offline 'both' row",
            "rows": rows}


def write_report(path: Path, result: dict[str, Any]) -> None:
    """Markdown + JSON beside it."""
    p, cpu = result["parameters"], result["cpu"]
    frames = p["scenes"] * p["scene_frames"]
    lines = [
        "# Tag flicker on video: --smooth and --hysteresis", "",
        f"Machine: {cpu['model']}, {cpu['cores']} cores; {result['model']}; date {result['date']}  ",
        f"Command: `{result['command']}`  ",
        f"Commit: {result['commit']}", "",
        f"Video: {p['scenes']} scenes x {p['scene_frames']} frames = {frames} frames at {p['fps']} fps (160x160 MJPG), "
        f"the example scenes in the order {', '.join(n.removesuffix('.png') for n in p['order'])}; every frame shifted "
        f"by up to {p['jitter']} px and given Gaussian noise of sigma {p['noise']:g} (seed {p['seed']}). Tagging every "
        f"frame took {result['tagging_seconds']:.1f} s. {result['stream_check']}.", "",
        "| setting | --smooth | --hysteresis | tag flips / 100 frames | flips beyond the scene changes / 100 frames "
        "| frames until the new scene's tags first show, mean / median | settle delay: frames until the last change, "
        "mean / median (max) "
        "| agreement with the clean scene's tags (Jaccard) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        lines.append(f"| {row['setting']} | {row['smooth']} | {row['hysteresis']:g} | {row['flips_per_100']:.1f} "
                     f"| {row['excess_flips_per_100']:.1f} | {row['reach_mean']:.1f} / {row['reach_median']:g} "
                     f"| {row['settle_mean']:.1f} / {row['settle_median']:g} ({row['settle_max']}) "
                     f"| {row['agreement']:.3f} |")
    lines += [
        "",
        "Tag flips count every tag turning on or off between frames (the first frame counts as a change from no tags). "
        "The scene changes need |settled set before ^ settled set after| flips each (a scene's settled set: its last "
        "frame's); the rest is flicker. After each scene change: the frames until the tag set first equals the "
        "scene's settled set (how far the tags lag), and the settle delay, the frames until the last change of the "
        "tag set within that scene (0 when the new tags show at once and hold, close to the scene length "
        f"({p['scene_frames']}) when they never hold still). Agreement: mean Jaccard similarity of each frame's "
        "tags with the tags of the clean scene image (plain thresholds), a check that steadier tags are still the "
        "scene's tags. Per-scene delays are in the JSON beside this file.",
    ]
    write_report_files(path, "\n".join(lines) + "\n", result)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and write the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--report", type=Path, default=REPO / "benchmarks" / "results" / "video_flicker" / "video_flicker.md")
    parser.add_argument("--workdir", type=Path, default=None, help="where the video is written [a temporary folder]")
    parser.add_argument("--scenes", type=int, default=12)
    parser.add_argument("--scene-frames", type=int, default=30)
    parser.add_argument("--noise", type=float, default=4.0, help="standard deviation of the pixel noise (0-255 scale)")
    parser.add_argument("--jitter", type=int, default=3, help="largest shift of a frame, in pixels")
    parser.add_argument("--smooth", type=int, default=5)
    parser.add_argument("--hysteresis", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.scenes < 2 or args.scene_frames < 1:
        parser.error("--scenes must be at least 2 (a scene change to measure) and --scene-frames at least 1")
    if args.noise < 0 or args.jitter < 0:
        parser.error("--noise and --jitter must be >= 0")
    with tempfile.TemporaryDirectory(prefix="video_flicker-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        result = run(args, workdir)
    result["command"] = " ".join(["python benchmarks/experiments/video_flicker.py", *(argv if argv is not None else sys.argv[1:])])
    write_report(args.report, result)
    print(f"wrote {args.report}", file=sys.stderr)


if __name__ == "__main__":
    main()
