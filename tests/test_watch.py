"""`ram-edge watch` and `Tagger.stream`: a generated video of the default model's example scenes, frame
selection, newest-frame-wins under a slow runtime, SIGTERM, reconnection of a lost live source, bad
sources; and `Tagger` on BGR / strided arrays and caller-owned pixel buffers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2", reason="the video extra is needed: pip install 'ram-edge[video]'")
pytest.importorskip("onnxruntime", reason="the ort extra is needed: pip install 'ram-edge[ort]'")

from PIL import Image  # noqa: E402

from conftest import run_cli  # noqa: E402
from ram_edge import Tagger  # noqa: E402
from ram_edge.default_model import default_model_path  # noqa: E402
from ram_edge.errors import ImageError, StreamError  # noqa: E402
from ram_edge.stream import FrameReader, parse_source  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "ram_edge" / "assets" / "default_model" / "examples"
KNOWN = json.loads((EXAMPLES / "examples.json").read_text())
SCENES = sorted(KNOWN)
REPEAT, FPS = 3, 10


def write_video(path: Path, repeat: int = REPEAT, loops: int = 1) -> Path:
    """MJPG AVI at 10 fps: each example scene for `repeat` frames, `loops` times over."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (160, 160))
    assert writer.isOpened()
    for _ in range(loops):
        for name in SCENES:
            bgr = np.ascontiguousarray(np.asarray(Image.open(EXAMPLES / name).convert("RGB"))[:, :, ::-1])
            for _ in range(repeat):
                writer.write(bgr)
    writer.release()
    return path


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "scenes.avi")


@pytest.fixture(scope="module")
def tagger():
    with Tagger.load(default_model_path(), runtime="ort") as t:
        yield t


def decoded_frames(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames


def test_watch_every_n_frames_gives_the_scene_tags(video, tagger):
    result = run_cli("watch", video, "--every", REPEAT, "--json")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["frame"] for r in rows] == list(range(0, len(SCENES) * REPEAT, REPEAT))
    assert [r["time"] for r in rows] == pytest.approx([i / FPS for i in range(0, len(SCENES) * REPEAT, REPEAT)])
    frames = decoded_frames(video)
    for row, name in zip(rows, SCENES):
        names = [t["tag"] for t in row["tags"]]
        assert set(KNOWN[name]) & set(names), (name, names)  # what the scene shows
        expected = tagger.tag([frames[row["frame"]]], channels="bgr")[0].to_dict()["tags"]
        assert row["tags"] == expected  # the same tag objects as `tag --json` on the same pixels
    assert "18 frame(s) read, 6 tagged, 12 skipped" in result.stderr


def test_stream_api_fps_and_max_frames(video, tagger):
    stream = tagger.stream(video, fps=2)
    items = list(stream)
    assert [i.frame for i in items] == [0, 5, 10, 15]
    assert stream.stats.read == 18 and stream.stats.tagged == 4 and stream.stats.dropped == 0
    assert items[1].to_dict()["time"] == 0.5 and set(items[0].to_dict()) == {"frame", "time", "tags"}
    assert [i.frame for i in tagger.stream(video, max_frames=2)] == [0, 1]
    with pytest.raises(StreamError, match="not both"):
        tagger.stream(video, every=2, fps=1)


class SlowRuntime:
    """A real runtime (onnxruntime) made deliberately slower than the video's frame rate."""

    thread_safe = False

    def __init__(self, inner, delay: float) -> None:
        self.inner, self.delay, self.calls = inner, delay, 0

    def run(self, batch):
        self.calls += 1
        time.sleep(self.delay)
        return self.inner.run(batch)

    def close(self):
        self.inner.close()


def test_slow_tagging_drops_frames_instead_of_queueing(video):
    from ram_edge.artifacts import describe
    from ram_edge.runtimes.ort_runtime import OrtRuntime

    path = default_model_path()
    slow = Tagger(describe(path), SlowRuntime(OrtRuntime(path), delay=0.25))
    stream = slow.stream(video, realtime=True)  # the file at its 10 fps, like a camera
    started = time.monotonic()
    items = list(stream)
    elapsed = time.monotonic() - started
    stats = stream.stats
    assert stats.read == 18 and stats.dropped > 0 and stats.max_pending == 1
    assert stats.read == stats.tagged + stats.dropped + stats.skipped + stats.errors
    indices = [i.frame for i in items]
    assert indices == sorted(indices) and len(indices) == stats.tagged < 18
    # Queued frames would take 18 x 0.25 s; dropping keeps up with the 1.8 s video (plus the last frame's tagging).
    assert elapsed < 18 * 0.25


def test_sigterm_ends_watch_cleanly_with_a_summary(tmp_path):
    long_video = write_video(tmp_path / "long.avi", repeat=10, loops=2)  # 12 s at 10 fps
    proc = subprocess.Popen([sys.executable, "-m", "ram_edge.cli.main", "watch", str(long_video), "--realtime", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()
    assert json.loads(first)["frame"] == 0
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "frame(s) read" in err
    read = int(err.split("frame(s) read")[0].split()[-1])
    assert read < 120  # ended early, not at the end of the video


def test_lost_live_source_is_reopened_then_given_up(video, tmp_path):
    source = shutil.copy(video, tmp_path / "camera.avi")
    reader = FrameReader(source, live=True, reconnect_attempts=2, backoff=(0.01, 0.02))
    seen = 0
    with pytest.raises(StreamError, match="lost video source .* after 2 attempt"):
        with reader:
            for _ in reader.frames():
                seen += 1
                if reader.stats.reconnects >= 1 and Path(source).exists():
                    os.remove(source)  # the camera goes away for good
    assert seen > 0 and reader.stats.reconnects >= 2 and reader.stats.read > 18


@pytest.mark.parametrize("make, needle", [
    (lambda p: p / "missing.mp4", "does not exist"),
    (lambda p: p, "is a folder"),
    (lambda p: (p / "noise.mp4").write_bytes(os.urandom(4096)) and p / "noise.mp4", "cannot open video source"),
    (lambda p: (p / "empty.avi").write_bytes(b"") or p / "empty.avi", "cannot open video source"),
    (lambda p: "/dev/video99", "no such camera"),
])
def test_bad_sources_are_one_clear_error(tmp_path, make, needle):
    source = make(tmp_path)
    started = time.monotonic()
    # A real process: FFmpeg and OpenCV write their own lines to file descriptor 2, past Python's sys.stderr.
    proc = subprocess.run([sys.executable, "-m", "ram_edge.cli.main", "watch", str(source)], capture_output=True, text=True)
    assert proc.returncode == 2 and needle in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and time.monotonic() - started < 30, proc.stderr


def test_parse_source_kinds(video):
    assert parse_source("0").kind == "camera" and parse_source(2).target == 2
    assert parse_source("/dev/video1").kind == "camera"
    assert parse_source("rtsp://cam.local/stream").kind == "url" and parse_source("rtsp://x").live
    pipeline = "nvarguscamerasrc ! video/x-raw(memory:NVMM), width=1280, height=720 ! nvvidconv ! video/x-raw, format=BGRx ! videoconvert ! appsink"
    assert parse_source(pipeline).kind == "gstreamer"
    assert parse_source(str(video)).kind == "file" and not parse_source(str(video)).live


# ---- Tagger on arrays and caller-owned buffers --------------------------------------------------

def test_bgr_and_strided_arrays_equal_the_file(tagger):
    path = EXAMPLES / SCENES[1]
    expected = tagger.tag([path])[0].tags
    rgb = np.asarray(Image.open(path).convert("RGB"))
    assert tagger.tag([rgb])[0].tags == expected
    assert tagger.tag([np.ascontiguousarray(rgb[:, :, ::-1])], channels="bgr")[0].tags == expected
    padded = np.zeros((160, 200, 4), np.uint8)  # a row-padded RGBA-like buffer: the RGB view has odd strides
    padded[:, :160, :3] = rgb
    view = padded[:, :160, :3]
    assert not view.flags.c_contiguous and tagger.tag([view])[0].tags == expected
    with pytest.raises(ImageError, match="channels"):
        tagger.tag([rgb], channels="rgba")


def test_tag_pixels_reads_a_buffer_without_copying(tagger):
    path = EXAMPLES / SCENES[2]
    expected = tagger.tag([path])[0].tags
    rgb = np.asarray(Image.open(path).convert("RGB"))
    stride = 160 * 3 + 64  # rows padded, as camera buffers often are
    buffer = bytearray(stride * 160)
    rows = np.ndarray((160, stride), np.uint8, buffer=buffer)
    rows[:, : 160 * 3] = rgb[:, :, ::-1].reshape(160, -1)  # BGR, like OpenCV
    assert tagger.tag_pixels(memoryview(buffer), 160, 160, row_stride=stride, channels="bgr").tags == expected
    with pytest.raises(ImageError, match="too small"):
        tagger.tag_pixels(memoryview(buffer)[:1000], 160, 160, row_stride=stride)
    with pytest.raises(ImageError, match="bad geometry"):
        tagger.tag_pixels(buffer, 160, 160, row_stride=100)


# ---- sources as jetson-inference writes them, and steady tags (--smooth, --hysteresis, --events) ------------------

def test_file_uri_and_input_flip_tag_the_flipped_frames(video, tagger):
    frames = decoded_frames(video)
    result = run_cli("watch", f"file://{video}", "--every", REPEAT, "--json", "--input-flip", "rotate-180")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == len(SCENES)
    for row in rows:
        expected = tagger.tag([cv2.rotate(frames[row["frame"]], cv2.ROTATE_180)], channels="bgr")[0].to_dict()["tags"]
        assert row["tags"] == expected
    api = [i.result.tags for i in tagger.stream(f"file://{video}", every=REPEAT, input_flip="clockwise", input_width=96,
                                                  input_height=128)]
    turned = [cv2.resize(cv2.rotate(frames[f], cv2.ROTATE_90_CLOCKWISE), (96, 128), interpolation=cv2.INTER_AREA)
              for f in range(0, len(frames), REPEAT)]
    assert api == [r.tags for r in tagger.tag(turned, channels="bgr")]


def _sets(items) -> list[frozenset]:
    return [frozenset(t.tag for t in i.result.tags) for i in items]


def test_stream_smoothing_is_the_stabilizer_on_each_frames_probabilities(video, tagger):
    from ram_edge.smoothing import TagStabilizer

    items = list(tagger.stream(video, smooth=3, hysteresis=0.05, top_k=2))
    stabilizer = TagStabilizer(tagger.labels.thresholds, smooth=3, hysteresis=0.05)
    expected = [stabilizer.update(tagger.scores([f], channels="bgr")[0]).fired(top_k=2) for f in decoded_frames(video)]
    assert [[(t.tag, t.score) for t in i.result.tags] for i in items] == \
        [[(tagger.tags[k], pytest.approx(p)) for k, p in row] for row in expected]
    plain = [i.to_dict() for i in tagger.stream(video)]
    assert [i.to_dict() for i in tagger.stream(video, smooth=1, hysteresis=0.0)] == plain  # K=1, D=0: off
    with pytest.raises(StreamError, match="--smooth 0"):
        tagger.stream(video, smooth=0)
    with pytest.raises(StreamError, match="--hysteresis 0.9 is too large"):
        tagger.stream(video, hysteresis=0.9)


def test_events_are_the_frames_where_the_tag_set_changes(video, tagger):
    sets = _sets(tagger.stream(video, smooth=2))
    changes = [(f, s) for f, s in enumerate(sets) if s != (sets[f - 1] if f else frozenset())]
    events = list(tagger.stream(video, smooth=2, events=True))
    assert [(e.frame, frozenset(t.tag for t in e.result.tags)) for e in events] == changes
    previous: frozenset = frozenset()
    for event in events:
        now = frozenset(t.tag for t in event.result.tags)
        assert set(event.added) == now - previous and set(event.removed) == previous - now
        assert list(event.to_dict()) == ["frame", "time", "added", "removed", "tags"]
        previous = now


def test_watch_events_json_and_human(video):
    result = run_cli("watch", video, "--events", "--json", "--smooth", 2, "--hysteresis", 0.05)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert rows and all(list(r) == ["frame", "time", "added", "removed", "tags"] for r in rows)
    assert all(r["added"] or r["removed"] for r in rows) and len(rows) < 18
    assert [r["frame"] for r in rows] == sorted(r["frame"] for r in rows)
    assert "18 frame(s) read, 18 tagged" in result.stderr
    human = run_cli("watch", video, "--events", "--smooth", 2, "--hysteresis", 0.05)
    assert human.exit_code == 0 and len(human.stdout.splitlines()) == len(rows)
    for line, row in zip(human.stdout.splitlines(), rows):  # frame 3 (0.30 s): +bell, +chicken, -fallen leaf | bell 0.93, ...
        change = ", ".join([*(f"+{n}" for n in row["added"]), *(f"-{n}" for n in row["removed"])])
        assert line.startswith(f"frame {row['frame']} ({row['time']:.2f} s): {change} | "), line


@pytest.mark.parametrize("args, needle", [
    (["--smooth", "0"], "error: --smooth 0: the number of frames to average must be a whole number >= 1"),
    (["--hysteresis", "-0.1"], "error: --hysteresis -0.1 is negative"),
    (["--hysteresis", "0.6"], "error: --hysteresis 0.6 is too large"),
    (["--input-rate", "10"], "use --fps 10 to tag at most 10 frames per second"),
    (["--input-codec", "h264"], "--input-codec applies to rtp://"),
])
def test_watch_refuses_bad_stream_options_in_one_line(video, args, needle):
    result = run_cli("watch", video, *args)
    assert result.exit_code == 2 and needle in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == ""
