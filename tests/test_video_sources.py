"""Video sources written as jetson-inference writes them (csi://, v4l2://, rtsp://, rtp://, file://) and the
--input-* options: the capture each form resolves to (tested as strings, no device needed), the flips and resizes
done on frames of sources read without GStreamer, and one-line errors through the real `ram-edge watch`."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from ram_edge.errors import RamEdgeWarning, StreamError
from ram_edge.video_sources import (APPSINK, CODECS, FLIP_METHODS, SCHEMES, SourceSpec, apply_flip, frame_adjuster,
                                    gst_launch_command, open_capture, parse_source)

BGR_TAIL = "videoconvert ! video/x-raw, format=(string)BGR ! " + APPSINK


# ---- the pure mapping: SOURCE + options -> (kind, capture argument, API preference) ----------------------------

def test_csi_is_an_nvarguscamerasrc_pipeline_with_caps_and_flip():
    spec = parse_source("csi://0")
    assert spec.capture == ("gstreamer",
                            "nvarguscamerasrc sensor-id=0 ! video/x-raw(memory:NVMM), width=(int)1280, height=(int)720, "
                            "framerate=(fraction)30/1, format=(string)NV12 ! nvvidconv flip-method=0 ! "
                            "video/x-raw, format=(string)BGRx ! " + BGR_TAIL, "CAP_GSTREAMER")
    assert spec.live and spec.flip == "none" and spec.size is None  # the pipeline flips and sizes, not numpy
    custom = parse_source("csi://1", width=1920, height=1080, rate=59.94, flip="rotate-180")
    assert custom.target.startswith("nvarguscamerasrc sensor-id=1 ! video/x-raw(memory:NVMM), width=(int)1920, "
                                    "height=(int)1080, framerate=(fraction)2997/50, format=(string)NV12 ! "
                                    "nvvidconv flip-method=2 ! ")


@pytest.mark.parametrize("name, method", [
    ("none", 0), ("counterclockwise", 1), ("rotate-180", 2), ("clockwise", 3), ("horizontal", 4),
    ("upper-right-diagonal", 5), ("vertical", 6), ("upper-left-diagonal", 7),
    ("horizontal-flip", 4), ("Vertical-Flip", 6), ("CLOCKWISE", 3),  # jetson-utils' other spelling; any case
])
def test_jetson_flip_names_are_nvvidconv_flip_methods(name, method):
    assert f"nvvidconv flip-method={method} ! " in parse_source("csi://0", flip=name).target
    assert f"nvvidconv flip-method={method} ! " in parse_source("rtp://@:5000", flip=name, jetson=True).target


def test_rtp_listens_on_udp_with_rtp_caps_and_decodes():
    cpu = parse_source("rtp://@:1234", jetson=False)
    assert cpu.capture == ("gstreamer", 'udpsrc port=1234 caps="application/x-rtp, media=(string)video, '
                           'clock-rate=(int)90000, encoding-name=(string)H264" ! rtph264depay ! h264parse ! avdec_h264 ! '
                           + BGR_TAIL, "CAP_GSTREAMER")
    jetson = parse_source("rtp://@:1234", jetson=True)
    assert jetson.target.endswith("! rtph264depay ! h264parse ! nvv4l2decoder ! nvvidconv flip-method=0 ! "
                                  "video/x-raw, format=(string)BGRx ! " + BGR_TAIL)
    multicast = parse_source("rtp://224.0.0.1:5000", codec="h265", flip="clockwise", width=640, height=480, rate=15,
                             jetson=False)
    assert multicast.target == (
        'udpsrc address=224.0.0.1 port=5000 caps="application/x-rtp, media=(string)video, clock-rate=(int)90000, '
        'encoding-name=(string)H265" ! rtph265depay ! h265parse ! avdec_h265 ! videoflip video-direction=90r ! videoscale ! '
        'video/x-raw, width=(int)640, height=(int)480 ! videorate drop-only=true ! video/x-raw, framerate=(fraction)15/1 ! '
        + BGR_TAIL)
    on_jetson = parse_source("rtp://@:5000", flip="vertical", width=640, height=480, jetson=True)
    assert "nvv4l2decoder ! nvvidconv flip-method=6 ! video/x-raw, format=(string)BGRx, width=(int)640, height=(int)480 ! " \
        in on_jetson.target
    for codec, element in [("vp8", "rtpvp8depay ! vp8dec"), ("mjpeg", "rtpjpegdepay ! jpegdec")]:
        assert element in parse_source("rtp://@:5000", codec=codec, jetson=False).target
    assert "rtpjpegdepay ! jpegdec" in parse_source("rtp://@:5000", codec="mjpeg", jetson=True).target  # as jetson-utils
    for bad in ("rtp://@", "rtp://@:0", "rtp://@:99999", "rtp://host"):
        with pytest.raises(StreamError, match=r"rtp:// needs a UDP port .* rtp://@:1234"):
            parse_source(bad)


def test_rtsp_goes_to_ffmpeg_or_to_rtspsrc_when_asked():
    url = "rtsp://user:pw@cam.local:8554/live"
    assert parse_source(url, available={"ffmpeg", "gstreamer"}).capture == ("url", url, "CAP_FFMPEG")
    # JetPack's OpenCV has GStreamer but no FFmpeg: the default follows what this OpenCV can do.
    assert parse_source(url, available={"gstreamer"}).kind == "gstreamer"
    gst = parse_source(url, backend="gstreamer", jetson=False)
    assert gst.capture == ("gstreamer", f'rtspsrc location="{url}" latency=200 ! rtph264depay ! h264parse ! avdec_h264 ! '
                           + BGR_TAIL, "CAP_GSTREAMER")
    assert "rtph265depay ! h265parse ! nvv4l2decoder ! nvvidconv" in parse_source(url, backend="gstreamer", codec="h265",
                                                                                 jetson=True).target
    flipped = parse_source(url, flip="clockwise", width=320, height=240, available={"ffmpeg"})
    assert (flipped.flip, flipped.size) == ("clockwise", (320, 240))  # done on each frame, FFmpeg cannot


def test_v4l2_opens_opencvs_v4l2_backend_with_the_size_and_rate_requested():
    spec = parse_source("v4l2:///dev/video0", width=1280, height=720, rate=30, flip="horizontal")
    assert spec.capture == ("camera", "/dev/video0", "CAP_V4L2")
    assert spec.props == (("CAP_PROP_FRAME_WIDTH", 1280.0), ("CAP_PROP_FRAME_HEIGHT", 720.0), ("CAP_PROP_FPS", 30.0))
    assert spec.flip == "horizontal" and spec.size is None and spec.live
    assert parse_source("v4l2://2").capture == ("camera", 2, "CAP_V4L2")
    assert parse_source("/dev/video3").capture == ("camera", "/dev/video3", "CAP_V4L2")  # the prefix may be dropped
    assert parse_source("0").capture == ("camera", 0, "CAP_ANY")  # an index: the platform's own camera API
    with pytest.raises(StreamError, match=r"v4l2:// takes a device, e.g. v4l2:///dev/video0"):
        parse_source("v4l2://camera")


def test_file_uri_is_the_local_path(tmp_path, monkeypatch):
    video = tmp_path / "my video.avi"
    video.write_bytes(b"not decoded here")
    assert parse_source(f"file://{video}").capture == ("file", str(video), "CAP_ANY")
    assert parse_source(f"file://{tmp_path}/my%20video.avi").target == str(video)
    monkeypatch.chdir(tmp_path)
    assert parse_source("file://my video.avi").target == "my video.avi"  # jetson-inference's relative form
    assert not parse_source(f"file://{video}").live
    with pytest.raises(StreamError, match=r"video file '/no/such/clip.mp4' \(from 'file:///no/such/clip.mp4'\) does not exist"):
        parse_source("file:///no/such/clip.mp4")
    with pytest.raises(StreamError, match="is a folder"):
        parse_source(f"file://{tmp_path}")


def test_unknown_scheme_lists_the_supported_ones():
    with pytest.raises(StreamError) as info:
        parse_source("webrtc://@:8554/my_input")
    message = str(info.value)
    assert "unknown scheme webrtc://" in message and "\n" not in message
    for name in ("csi://0", "v4l2:///dev/video0", "rtsp://", "rtp://@:1234", "file:///path/video.mp4"):
        assert name in message


@pytest.mark.parametrize("source, options, needle", [
    ("FILE", {"rate": 15}, r"--input-rate cannot be applied .* plays at its own frame rate; use --fps 15"),
    ("rtsp://cam/live", {"rate": 10, "available": {"ffmpeg"}}, r"--input-rate cannot be applied .* use --fps 10"),
    ("FILE", {"codec": "h265"}, r"--input-codec applies to rtp://"),
    ("csi://0", {"codec": "h264"}, r"--input-codec applies to rtp://"),
    ("csi://0", {"width": 640}, r"give --input-width and --input-height together"),
    ("csi://0", {"width": 0, "height": 480}, r"--input-width must be a positive whole number"),
    ("csi://0", {"flip": "sideways"}, r"--input-flip 'sideways' is not a flip method; use one of none, counterclockwise"),
    ("rtp://@:5000", {"codec": "av1"}, r"--input-codec 'av1' is not supported; use one of h264"),
    ("rtp://@:5000", {"backend": "ffmpeg"}, r"--input-backend ffmpeg cannot read rtp://; it is read through gstreamer"),
    ("FILE", {"backend": "gstreamer"}, r"--input-backend applies to URLs"),
    ("csi://zero", {}, r"csi:// takes a sensor number"),
])
def test_options_a_source_cannot_honour_are_refused(tmp_path, source, options, needle):
    if source == "FILE":
        source = str(tmp_path / "v.avi")
        Path(source).write_bytes(b"x")
    with pytest.raises(StreamError, match=needle):
        parse_source(source, **options)


def test_every_scheme_has_an_example_that_parses(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("path").mkdir()
    Path("path/video.mp4").write_bytes(b"x")
    for scheme in SCHEMES.values():
        example = scheme.example.replace("file:///path", "file://path")
        assert parse_source(example, available={"ffmpeg", "gstreamer"}).text == example
    assert set(CODECS) >= {"h264", "h265", "mjpeg"} and list(FLIP_METHODS.values()) == list(range(8))


# ---- frames: flips and resizes for sources read without GStreamer -----------------------------------------------

def test_numpy_flips_match_opencv_and_nvvidconv_meaning():
    cv2 = pytest.importorskip("cv2")
    image = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)  # not square: rotations change the shape
    expected = {
        "none": image,
        "counterclockwise": cv2.rotate(image, cv2.ROTATE_90_COUNTERCLOCKWISE),
        "rotate-180": cv2.rotate(image, cv2.ROTATE_180),
        "clockwise": cv2.rotate(image, cv2.ROTATE_90_CLOCKWISE),
        "horizontal": cv2.flip(image, 1),
        "upper-right-diagonal": cv2.flip(cv2.transpose(image), -1),
        "vertical": cv2.flip(image, 0),
        "upper-left-diagonal": cv2.transpose(image),
    }
    for name, want in expected.items():
        got = apply_flip(image, name)
        assert got.flags.c_contiguous and np.array_equal(got, want), name
    # The diagonals by their corners: the upper-left corner stays put across the main diagonal, and the
    # upper-right corner across the other one.
    assert np.array_equal(apply_flip(image, "upper-left-diagonal")[0, 0], image[0, 0])
    assert np.array_equal(apply_flip(image, "upper-right-diagonal")[0, -1], image[0, -1])


def test_frame_adjuster_flips_then_resizes():
    pytest.importorskip("cv2")
    image = np.zeros((40, 60, 3), np.uint8)
    image[:10] = 255  # a white band at the top
    assert frame_adjuster(SourceSpec("file", "x", "x")) is None
    adjust = frame_adjuster(SourceSpec("file", "x", "x", flip="clockwise", size=(80, 120)))
    out = adjust(image)
    assert out.shape == (120, 80, 3)
    assert out[:, -15:].mean() > 200 and out[:, :60].mean() < 5  # the top band is on the right after a clockwise turn


def test_camera_that_gives_another_mode_is_reported_once(monkeypatch):
    cv2 = pytest.importorskip("cv2")
    from ram_edge import video_sources

    class FakeCapture:
        def __init__(self):
            self.values = {cv2.CAP_PROP_FRAME_WIDTH: 640.0, cv2.CAP_PROP_FRAME_HEIGHT: 480.0, cv2.CAP_PROP_FPS: 30.0}

        def get(self, prop):
            return self.values[prop]

    spec = parse_source("0", width=1280, height=720, rate=30)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        video_sources._report_mismatch(FakeCapture(), spec, cv2)
    assert len(caught) == 1 and caught[0].category is RamEdgeWarning
    assert "frame_width 640 instead of 1280, frame_height 480 instead of 720" in str(caught[0].message)
    assert "fps" not in str(caught[0].message)


# ---- real files, real OpenCV -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    cv2 = pytest.importorskip("cv2")
    path = tmp_path_factory.mktemp("sources") / "gradient.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(5):
        frame = np.zeros((48, 64, 3), np.uint8)
        frame[:12] = 250  # a bright band along the top edge
        frame[:, :, 1] = i * 40
        writer.write(frame)
    writer.release()
    return path


def _frames(spec) -> list[np.ndarray]:
    from ram_edge.stream import FrameReader

    with FrameReader(spec) as reader:
        return [f.image for f in reader.frames()]


def test_file_uri_reads_the_file_and_flips_and_resizes_its_frames(video):
    cv2 = pytest.importorskip("cv2")
    plain = _frames(parse_source(str(video)))
    assert len(plain) == 5 and plain[0].shape == (48, 64, 3)
    assert [f.shape for f in _frames(parse_source(f"file://{video}"))] == [(48, 64, 3)] * 5
    turned = _frames(parse_source(f"file://{video}", flip="counterclockwise"))
    assert all(np.array_equal(t, cv2.rotate(p, cv2.ROTATE_90_COUNTERCLOCKWISE)) for t, p in zip(turned, plain))
    resized = _frames(parse_source(f"file://{video}", flip="rotate-180", width=32, height=24))
    assert [f.shape for f in resized] == [(24, 32, 3)] * 5
    assert resized[0][-4:, :, 0].mean() > 200 and resized[0][:4, :, 0].mean() < 50  # the bright band is now at the bottom


def test_gstreamer_forms_are_refused_in_one_line_without_gstreamer():
    cv2 = pytest.importorskip("cv2")
    if re.search(r"^\s*GStreamer:\s*YES", cv2.getBuildInformation(), re.M):
        pytest.skip("this OpenCV has GStreamer: the refusal is for builds without it (pip's opencv-python wheels)")
    for source in ("csi://0", "rtp://@:1234"):
        with pytest.raises(StreamError) as info:
            open_capture(parse_source(source))
        message = str(info.value)
        assert "is read through GStreamer, but this OpenCV" in message and "built without GStreamer" in message
        assert "python3-opencv" in message and "opencv-python wheels have none" in message
        assert "--system-site-packages" in message and "\n" not in message


def _ram_edge() -> list[str]:
    script = Path(sys.executable).with_name("ram-edge")
    return [str(script)] if script.exists() else [sys.executable, "-m", "ram_edge.cli.main"]


@pytest.mark.parametrize("args, needle", [
    (["v4l2:///dev/video99"], "no such camera /dev/video99"),
    (["v4l2://98"], "no such camera /dev/video98"),
    (["file:///no/such/clip.mp4"], "video file '/no/such/clip.mp4'"),
    (["webrtc://@:8554/in"], "unknown scheme webrtc://"),
    (["csi://0", "--input-width", "640"], "give --input-width and --input-height together"),
    (["csi://0"], "GStreamer"),
])
def test_bad_jetson_sources_are_one_line_through_the_real_cli(args, needle):
    cv2 = pytest.importorskip("cv2")
    if args == ["csi://0"] and re.search(r"^\s*GStreamer:\s*YES", cv2.getBuildInformation(), re.M):
        pytest.skip("this OpenCV has GStreamer: csi://0 would try a camera")
    started = time.monotonic()
    env = {k: v for k, v in os.environ.items() if k != "RAM_EDGE_DEBUG"}
    proc = subprocess.run([*_ram_edge(), "watch", *args], capture_output=True, text=True, env=env)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr and proc.stderr.startswith("error: "), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout == "" and time.monotonic() - started < 60


# ---- the pipelines in a real GStreamer (where gst-launch-1.0 and the plugins are installed) -------------------------

def _gst_elements(*names: str) -> None:
    if shutil.which("gst-launch-1.0") is None or shutil.which("gst-inspect-1.0") is None:
        pytest.skip("GStreamer's tools are not installed (apt install gstreamer1.0-tools gstreamer1.0-plugins-good ...)")
    missing = [n for n in names if subprocess.run(["gst-inspect-1.0", n], capture_output=True).returncode != 0]
    if missing:
        pytest.skip(f"GStreamer elements missing: {', '.join(missing)} (plugins-base/good/bad/ugly, libav)")


def test_gst_launch_command_is_the_pipeline_as_shell_words():
    spec = parse_source("rtp://@:5000", jetson=False)
    command = gst_launch_command(spec.target)
    words = shlex.split(command)
    assert words[0] == "gst-launch-1.0" and words[-1] == "fakesink" and " ! ".join(words[1:]).count("!") >= 5
    assert "caps=application/x-rtp, media=(string)video, clock-rate=(int)90000, encoding-name=(string)H264" in words


def test_videoflip_directions_are_the_numpy_flips(tmp_path):
    _gst_elements("videotestsrc", "videoflip", "videoconvert", "filesink")
    from ram_edge.video_sources import _VIDEO_DIRECTION

    def render(flip: str | None) -> np.ndarray:
        out = tmp_path / f"{flip}.raw"
        middle = "" if flip is None else f"videoflip video-direction={_VIDEO_DIRECTION[flip]} ! "
        pipeline = (f"videotestsrc num-buffers=1 pattern=smpte ! video/x-raw,width=64,height=48,format=BGR ! {middle}"
                    f"videoconvert ! video/x-raw,format=BGR ! filesink location={out}")
        subprocess.run(["gst-launch-1.0", "-q", *shlex.split(pipeline)], check=True, capture_output=True, timeout=30)
        return np.fromfile(out, np.uint8)

    base = render(None).reshape(48, 64, 3)  # 64 * 3 and 48 * 3 bytes: rows need no padding either way round
    for flip in FLIP_METHODS:
        ours = apply_flip(base, flip)
        assert np.array_equal(render(flip).reshape(ours.shape), ours), flip


@pytest.mark.slow
def test_rtp_pipeline_decodes_a_real_h264_stream():
    _gst_elements("udpsrc", "udpsink", "x264enc", "rtph264pay", "rtph264depay", "h264parse", "avdec_h264", "videoflip",
                  "videoscale", "videorate")
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    spec = parse_source(f"rtp://@:{port}", flip="clockwise", width=120, height=200, rate=10, jetson=False)
    # The receiver listens until `timeout` ends it: 1 s to start, 3 s of stream, time to spare on a busy machine.
    receiver = subprocess.Popen(["timeout", "8", "gst-launch-1.0", "-v", *shlex.split(spec.target.replace(APPSINK, "fakesink"))],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        sender = ("videotestsrc num-buffers=90 is-live=true ! video/x-raw,width=320,height=240,framerate=30/1 ! videoconvert ! "
                  f"x264enc tune=zerolatency speed-preset=ultrafast ! rtph264pay config-interval=1 pt=96 ! "
                  f"udpsink host=127.0.0.1 port={port}")
        time.sleep(1.0)
        subprocess.run(["gst-launch-1.0", "-q", *shlex.split(sender)], capture_output=True, timeout=30)
        out, _ = receiver.communicate(timeout=30)
    finally:
        receiver.kill()
    sink = re.findall(r"fakesink0\.GstPad:sink: caps = (.*)", out)
    assert sink, out[-2000:]
    assert "width=(int)120, height=(int)200" in sink[0] and "format=(string)BGR" in sink[0]
    assert "framerate=(fraction)10/1" in sink[0]
