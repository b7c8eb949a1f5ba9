"""Video sources as NVIDIA's jetson-inference / jetson-utils tools write them (`csi://0`, `v4l2:///dev/video0`,
`rtsp://host:port/path`, `rtp://@:1234`, `file:///path/video.mp4`, with `--input-width/--input-height/--input-rate/
--input-flip/--input-codec`), and the forms ram-edge took before (a camera index, /dev/videoN, a GStreamer pipeline
ending in appsink, an http(s):// URL, a path).

`parse_source` is pure (no OpenCV, no device opened): SOURCE and the input options -> `SourceSpec`, which names the
capture OpenCV opens (`kind`, capture argument, API preference), the properties to request after opening, and the
flip / resize still to be done on each decoded frame where the source itself cannot do them. The scheme -> builder
mapping is data (`SCHEMES`); `open_capture` opens a spec with OpenCV. torch-free; OpenCV is imported only to open.

Differences from jetson-utils, on purpose: `--input-flip none` on a CSI camera is flip-method 0 (jetson-utils swaps
none and rotate-180 for CSI cameras on JetPack 5+; here the flip is what nvvidconv's flip-method says), and rtsp://
goes to OpenCV's FFmpeg unless `--input-backend gstreamer` asks for an rtspsrc pipeline (or this OpenCV has no FFmpeg).
"""

from __future__ import annotations

import functools
import os
import platform
import re
import shlex
import warnings
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Collection
from urllib.parse import unquote

import numpy as np

from .errors import RamEdgeWarning, StreamError

# OpenCV prints backend warnings ("can't open camera by index") and FFmpeg its errors ("moov atom not found", 8 =
# fatal only) on stderr; ram-edge reports errors itself. Users can still set either variable to see them.
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "8")

# jetson-utils' flip names (videoOptions::FlipMethod) -> nvvidconv's flip-method, which numbers them the same way.
FLIP_METHODS: dict[str, int] = {
    "none": 0, "counterclockwise": 1, "rotate-180": 2, "clockwise": 3,
    "horizontal": 4, "upper-right-diagonal": 5, "vertical": 6, "upper-left-diagonal": 7,
}
# jetson-utils prints horizontal/vertical as these and accepts both spellings.
FLIP_ALIASES = {"horizontal-flip": "horizontal", "vertical-flip": "vertical"}
# videoflip's video-direction for each: its older `method` property left the caps unrotated in GStreamer 1.22 (a
# clockwise turn of 640x480 still negotiated 640x480), video-direction turns them.
_VIDEO_DIRECTION = {"none": "identity", "counterclockwise": "90l", "rotate-180": "180", "clockwise": "90r",
                    "horizontal": "horiz", "upper-right-diagonal": "ur-ll", "vertical": "vert", "upper-left-diagonal": "ul-lr"}

# Each flip as numpy index operations on an HxWxC frame, for sources read without GStreamer.
_NUMPY_FLIPS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "none": lambda a: a,
    "counterclockwise": lambda a: np.rot90(a, 1),
    "rotate-180": lambda a: a[::-1, ::-1],
    "clockwise": lambda a: np.rot90(a, -1),
    "horizontal": lambda a: a[:, ::-1],
    "upper-right-diagonal": lambda a: a[::-1, ::-1].swapaxes(0, 1),  # across the anti-diagonal
    "vertical": lambda a: a[::-1],
    "upper-left-diagonal": lambda a: a.swapaxes(0, 1),  # across the main diagonal: a transpose
}


@dataclass(frozen=True)
class RtpCodec:
    """How one codec arrives over RTP and is decoded (jetson-utils' gstDecoder and gst_select_decoder)."""

    encoding: str  # encoding-name of the application/x-rtp caps
    depay: str
    parse: str | None
    cpu_decoder: str
    jetson_decoder: str  # jetson-utils decodes MJPEG on the CPU even on a Jetson


CODECS: dict[str, RtpCodec] = {
    "h264": RtpCodec("H264", "rtph264depay", "h264parse", "avdec_h264", "nvv4l2decoder"),
    "h265": RtpCodec("H265", "rtph265depay", "h265parse", "avdec_h265", "nvv4l2decoder"),
    "vp8": RtpCodec("VP8", "rtpvp8depay", None, "vp8dec", "nvv4l2decoder"),
    "vp9": RtpCodec("VP9", "rtpvp9depay", None, "vp9dec", "nvv4l2decoder"),
    "mpeg4": RtpCodec("MP4V-ES", "rtpmp4vdepay", "mpeg4videoparse", "avdec_mpeg4", "nvv4l2decoder"),
    "mjpeg": RtpCodec("JPEG", "rtpjpegdepay", None, "jpegdec", "jpegdec"),
}
DEFAULT_CODEC = "h264"
CSI_DEFAULTS = (1280, 720, 30.0)  # jetson-utils' gstCamera defaults for a CSI camera
RTSP_LATENCY_MS = 200  # rtspsrc's jitter buffer: low for live tagging, enough for a Wi-Fi camera
APPSINK = "appsink drop=1 max-buffers=1"  # live: keep the newest frame, never queue

# Backend -> (cv2 API preference, the line of cv2.getBuildInformation() that says whether this OpenCV has it, its name).
BACKENDS: dict[str, tuple[str, str | None, str]] = {
    "ffmpeg": ("CAP_FFMPEG", "FFMPEG", "FFmpeg"),
    "gstreamer": ("CAP_GSTREAMER", "GStreamer", "GStreamer"),
    "v4l2": ("CAP_V4L2", "v4l/v4l2", "V4L2"),
    "opencv": ("CAP_ANY", None, "OpenCV"),  # OpenCV picks (files, camera indices): works with any build
}
_MISSING_BACKEND_FIX = {
    "gstreamer": "pip's opencv-python wheels have none; on a Jetson use JetPack's OpenCV built with GStreamer "
                 "(sudo apt install python3-opencv, a venv made with --system-site-packages, and pip uninstall "
                 "opencv-python opencv-python-headless)",
    "ffmpeg": "use --input-backend gstreamer, or pip install opencv-python-headless (its wheels include FFmpeg)",
    "v4l2": "use a camera index (0) instead, or an OpenCV built with V4L2 (Linux)",
}


@dataclass(frozen=True)
class InputOptions:
    """The --input-* options: what to ask of the source (None: what it delivers)."""

    width: int | None = None
    height: int | None = None
    rate: float | None = None
    flip: str = "none"
    codec: str | None = None
    backend: str | None = None


@dataclass(frozen=True)
class SourceSpec:
    """What a SOURCE argument names and how OpenCV opens it."""

    kind: str  # "file", "camera", "url", "gstreamer"
    target: Any  # path, camera index or device path, URL, pipeline string
    text: str
    backend: str = "opencv"  # how OpenCV reads it: a key of BACKENDS
    props: tuple[tuple[str, float], ...] = ()  # cv2.CAP_PROP_* to request after opening
    flip: str = "none"  # still to do on each decoded frame
    size: tuple[int, int] | None = None  # (width, height) still to resize each decoded frame to
    hint: str = ""  # why opening it may fail, for the error

    @property
    def live(self) -> bool:
        """Cameras, URLs and pipelines are live; files are not."""
        return self.kind != "file"

    @property
    def api(self) -> str:
        """The cv2 API preference, by name (CAP_GSTREAMER, ...)."""
        return BACKENDS[self.backend][0]

    @property
    def capture(self) -> tuple[str, Any, str]:
        """(kind, capture argument, API preference): what `cv2.VideoCapture` is given."""
        return self.kind, self.target, self.api


Builder = Callable[[str, str, InputOptions, bool], SourceSpec]  # (after "scheme://", SOURCE, options, on a Jetson)


@dataclass(frozen=True)
class Scheme:
    """One URI scheme: an example, what it is, and its builders by backend (the first is the default)."""

    name: str
    example: str
    about: str
    builders: dict[str, Builder]


# -- options ------------------------------------------------------------------------------------------------------

def canonical_flip(flip: str | None) -> str:
    """A jetson-utils flip name (any case, either spelling of horizontal/vertical) as its key in FLIP_METHODS."""
    name = "none" if flip is None else str(flip).strip().lower()
    name = FLIP_ALIASES.get(name, name)
    if name not in FLIP_METHODS:
        raise StreamError(f"--input-flip {flip!r} is not a flip method; use one of {', '.join(FLIP_METHODS)}")
    return name


def _checked(options: InputOptions) -> InputOptions:
    if (options.width is None) != (options.height is None):
        raise StreamError("give --input-width and --input-height together (a frame size needs both)")
    for name, value in (("--input-width", options.width), ("--input-height", options.height)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
            raise StreamError(f"{name} must be a positive whole number of pixels, got {value!r}")
    number = (int, float, np.integer, np.floating)
    if options.rate is not None and (isinstance(options.rate, bool) or not isinstance(options.rate, number)
                                     or not 0 < options.rate < 1000):
        raise StreamError(f"--input-rate must be a frame rate in (0, 1000) frames per second, got {options.rate!r}")
    codec = None if options.codec is None else str(options.codec).lower()
    if codec is not None and codec not in CODECS:
        raise StreamError(f"--input-codec {options.codec!r} is not supported; use one of {', '.join(CODECS)}")
    if options.backend is not None and options.backend not in BACKENDS:
        raise StreamError(f"--input-backend {options.backend!r} is unknown; use one of {', '.join(BACKENDS)}")
    return replace(options, flip=canonical_flip(options.flip), codec=codec)


def _frame_rate(rate: float) -> str:
    """A GStreamer fraction: 30 -> 30/1, 7.5 -> 15/2."""
    value = Fraction(rate).limit_denominator(1001)
    return f"{value.numerator}/{value.denominator}"


def _no_rate(text: str, options: InputOptions, why: str) -> None:
    if options.rate is not None:
        raise StreamError(f"--input-rate cannot be applied to {text!r}: {why}; use --fps {options.rate:g} to tag at "
                          f"most {options.rate:g} frames per second")


def _no_codec(text: str, options: InputOptions) -> None:
    if options.codec is not None:
        raise StreamError(f"--input-codec applies to rtp:// and to rtsp:// read through GStreamer (--input-backend "
                          f"gstreamer) only; {text!r} finds its codec itself")


def _in_numpy(options: InputOptions) -> dict[str, Any]:
    """The flip and resize a source read by OpenCV without GStreamer leaves to each frame."""
    size = None if options.width is None else (int(options.width), int(options.height))  # type: ignore[arg-type]
    return {"flip": options.flip, "size": size}


# -- GStreamer pipelines ------------------------------------------------------------------------------------------

def _to_appsink(options: InputOptions, jetson: bool) -> list[str]:
    """Decoded video -> flip, scale, rate -> BGR frames in an appsink. nvvidconv (Jetson) flips and scales in one
    element, also from NVMM memory; elsewhere videoflip and videoscale."""
    size = "" if options.width is None else f", width=(int){options.width}, height=(int){options.height}"
    if jetson:
        parts = [f"nvvidconv flip-method={FLIP_METHODS[options.flip]}", f"video/x-raw, format=(string)BGRx{size}"]
    else:
        parts = []
        if options.flip != "none":
            parts.append(f"videoflip video-direction={_VIDEO_DIRECTION[options.flip]}")
        if size:
            parts += ["videoscale", f"video/x-raw{size}"]
    if options.rate is not None:
        parts += ["videorate drop-only=true", f"video/x-raw, framerate=(fraction){_frame_rate(options.rate)}"]
    return parts + ["videoconvert", "video/x-raw, format=(string)BGR", APPSINK]


def _decode(codec: RtpCodec, jetson: bool) -> list[str]:
    return [codec.depay, *([codec.parse] if codec.parse else []), codec.jetson_decoder if jetson else codec.cpu_decoder]


def _gstreamer(text: str, pipeline: list[str], hint: str) -> SourceSpec:
    return SourceSpec("gstreamer", " ! ".join(pipeline), text, backend="gstreamer", hint=hint)


def _csi(rest: str, text: str, options: InputOptions, jetson: bool) -> SourceSpec:
    if not re.fullmatch(r"\d+", rest):
        raise StreamError(f"{text!r}: csi:// takes a sensor number, e.g. csi://0")
    _no_codec(text, options)
    width, height, rate = CSI_DEFAULTS
    width, height = options.width or width, options.height or height
    rate = options.rate or rate
    pipeline = [
        f"nvarguscamerasrc sensor-id={int(rest)}",
        f"video/x-raw(memory:NVMM), width=(int){width}, height=(int){height}, framerate=(fraction){_frame_rate(rate)}, "
        f"format=(string)NV12",
        f"nvvidconv flip-method={FLIP_METHODS[options.flip]}",
        "video/x-raw, format=(string)BGRx",
        "videoconvert",
        "video/x-raw, format=(string)BGR",
        APPSINK,
    ]
    return _gstreamer(text, pipeline, f"is CSI camera {int(rest)} connected (nvgstcapture-1.0 --sensor-id={int(rest)}), "
                                      f"and is {width}x{height} at {rate:g} fps one of its sensor modes?")


def _rtp(rest: str, text: str, options: InputOptions, jetson: bool) -> SourceSpec:
    match = re.fullmatch(r"(@|[^/:@]*):(\d+)/?", rest)
    if not match or not 0 < int(match.group(2)) < 65536:
        raise StreamError(f"{text!r}: rtp:// needs a UDP port to listen on, e.g. rtp://@:1234 (any address) or "
                          f"rtp://224.0.0.1:1234 (a multicast group)")
    host, port = match.groups()
    codec = CODECS[options.codec or DEFAULT_CODEC]
    address = "" if host in ("@", "") else f" address={host}"
    source = (f'udpsrc{address} port={port} caps="application/x-rtp, media=(string)video, clock-rate=(int)90000, '
              f'encoding-name=(string){codec.encoding}"')
    return _gstreamer(text, [source, *_decode(codec, jetson), *_to_appsink(options, jetson)],
                      f"is port {port} free, and is the stream {codec.encoding} (--input-codec)?")


def _rtsp_gstreamer(rest: str, text: str, options: InputOptions, jetson: bool) -> SourceSpec:
    codec = CODECS[options.codec or DEFAULT_CODEC]
    source = f'rtspsrc location="{text}" latency={RTSP_LATENCY_MS}'
    return _gstreamer(text, [source, *_decode(codec, jetson), *_to_appsink(options, jetson)],
                      f"is the stream reachable, and is it {codec.encoding} (--input-codec)?")


def _ffmpeg_url(rest: str, text: str, options: InputOptions, jetson: bool) -> SourceSpec:
    _no_codec(text, options)
    _no_rate(text, options, "an FFmpeg stream arrives at the rate its server sends")
    return SourceSpec("url", text, text, backend="ffmpeg",
                      hint="the stream is unreachable, or OpenCV's FFmpeg cannot read it", **_in_numpy(options))


def _file(rest: str, text: str, options: InputOptions, jetson: bool) -> SourceSpec:
    _no_codec(text, options)
    _no_rate(text, options, "a video file plays at its own frame rate")
    if rest.startswith("localhost/"):
        rest = rest[len("localhost"):]
    path = Path(rest)
    if not path.exists() and Path(unquote(rest)).exists():
        path = Path(unquote(rest))  # file:///my%20video.mp4
    if not rest or not path.exists():
        raise StreamError(f"video file {rest or text!r} (from {text!r}) does not exist; file:// takes a path: "
                          f"file:///abs/video.mp4 or file://relative/video.mp4")
    if path.is_dir():
        raise StreamError(f"video source {text!r} is a folder; tag the images in it with `ram-edge tag {rest}`")
    return SourceSpec("file", str(path), text, backend="opencv",
                      hint="it is not a video OpenCV can decode (or is truncated)", **_in_numpy(options))


def _camera(target: int | str, text: str, options: InputOptions, backend: str) -> SourceSpec:
    _no_codec(text, options)
    props: list[tuple[str, float]] = []
    if options.width is not None:
        props += [("CAP_PROP_FRAME_WIDTH", float(options.width)), ("CAP_PROP_FRAME_HEIGHT", float(options.height))]  # type: ignore[arg-type]
    if options.rate is not None:
        props.append(("CAP_PROP_FPS", float(options.rate)))
    # The camera itself is asked for the size; a size it cannot give is reported after opening, not stretched to.
    return SourceSpec("camera", target, text, backend=backend, props=tuple(props), flip=options.flip,
                      hint="no such camera, or it is in use by another program")


def _v4l2(rest: str, text: str, options: InputOptions, jetson: bool) -> SourceSpec:
    if re.fullmatch(r"\d+", rest):
        device: int | str = int(rest)
    elif re.fullmatch(r"/dev/\S+", rest):
        device = rest
    else:
        raise StreamError(f"{text!r}: v4l2:// takes a device, e.g. v4l2:///dev/video0 (or v4l2://0)")
    return _camera(device, text, options, "v4l2")


SCHEMES: dict[str, Scheme] = {s.name: s for s in (
    Scheme("csi", "csi://0", "MIPI CSI camera through nvarguscamerasrc (GStreamer, Jetson)", {"gstreamer": _csi}),
    Scheme("v4l2", "v4l2:///dev/video0", "V4L2 camera (USB webcam) through OpenCV's V4L2 backend", {"v4l2": _v4l2}),
    Scheme("rtsp", "rtsp://host:port/path", "RTSP stream (OpenCV's FFmpeg, or rtspsrc with --input-backend gstreamer)",
           {"ffmpeg": _ffmpeg_url, "gstreamer": _rtsp_gstreamer}),
    Scheme("rtsps", "rtsps://host:port/path", "RTSP over TLS", {"ffmpeg": _ffmpeg_url, "gstreamer": _rtsp_gstreamer}),
    Scheme("rtp", "rtp://@:1234", "RTP over UDP, codec by --input-codec (GStreamer)", {"gstreamer": _rtp}),
    Scheme("file", "file:///path/video.mp4", "video file", {"opencv": _file}),
    Scheme("http", "http://host/video.mjpg", "HTTP stream or file (OpenCV's FFmpeg)", {"ffmpeg": _ffmpeg_url}),
    Scheme("https", "https://host/video.m3u8", "HTTPS stream or file (OpenCV's FFmpeg)", {"ffmpeg": _ffmpeg_url}),
    Scheme("rtmp", "rtmp://host/app/stream", "RTMP stream (OpenCV's FFmpeg)", {"ffmpeg": _ffmpeg_url}),
    Scheme("udp", "udp://@:5000", "MPEG-TS over UDP (OpenCV's FFmpeg)", {"ffmpeg": _ffmpeg_url}),
)}

_SCHEME = re.compile(r"^([a-z][a-z0-9+.-]*)://(.*)$", re.I | re.S)


# -- shorthands without a scheme (the forms ram-edge took before, and jetson-utils' dropped prefixes) ---------------

def _index(text: str, options: InputOptions, jetson: bool) -> SourceSpec:
    return _camera(int(text), text, options, "opencv")  # OpenCV picks the camera API of this platform


def _pipeline(text: str, options: InputOptions, jetson: bool) -> SourceSpec:
    _no_codec(text, options)
    _no_rate(text, options, "the pipeline sets its own rate (add videorate ! video/x-raw, framerate=R/1 to it)")
    return SourceSpec("gstreamer", text, text, backend="gstreamer",
                      hint="the pipeline failed to start (check it with gst-launch-1.0)", **_in_numpy(options))


SHORTHANDS: list[tuple[re.Pattern, Callable[[str, InputOptions, bool], SourceSpec]]] = [
    (re.compile(r"\d+"), _index),
    (re.compile(r"/dev/video\d+"), lambda text, o, j: _v4l2(text, text, o, j)),
    (re.compile(r".*!.*appsink.*|.* ! .*", re.S), _pipeline),
]


# -- the pure function --------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def on_jetson() -> bool:
    """True on an NVIDIA Jetson (L4T): decode with nvv4l2decoder, convert with nvvidconv."""
    return Path("/etc/nv_tegra_release").exists() or "tegra" in platform.release().lower()


def available_backends() -> frozenset[str]:
    """The backends this OpenCV was built with (all of them when OpenCV is absent: opening will say so)."""
    try:
        build = _build_information()
    except ImportError:
        return frozenset(BACKENDS)
    return frozenset(name for name in BACKENDS if _has_backend(build, name))


@functools.lru_cache(maxsize=1)
def _build_information() -> str:
    import cv2

    return cv2.getBuildInformation()


def _has_backend(build: str, name: str) -> bool:
    label = BACKENDS[name][1]
    return label is None or re.search(rf"^\s*{re.escape(label)}:\s*YES", build, re.M) is not None


def parse_source(source: str | int | os.PathLike | SourceSpec, *, width: int | None = None, height: int | None = None,
                 rate: float | None = None, flip: str | None = None, codec: str | None = None,
                 backend: str | None = None, jetson: bool | None = None,
                 available: Collection[str] | None = None) -> SourceSpec:
    """SOURCE and the --input-* options -> what OpenCV opens and what is left to do per frame (see module docstring).

    `jetson` (None: this machine) picks nvvidconv / nvv4l2decoder for GStreamer pipelines; `available` (None: this
    OpenCV's) are the backends an rtsp:// URL may default to.
    """
    if isinstance(source, SourceSpec):
        return source
    options = _checked(InputOptions(width, height, rate, flip or "none", codec, backend))
    jetson = on_jetson() if jetson is None else jetson
    text = str(source).strip()
    if isinstance(source, int):
        text = str(int(source))
    match = _SCHEME.match(text)
    if match is None:
        if options.backend is not None:
            raise StreamError(f"--input-backend applies to URLs (rtsp://...); {text!r} is opened the one way it can be")
        for pattern, build in SHORTHANDS:
            if pattern.fullmatch(text):
                return build(text, options, jetson)
        if not Path(text).exists():
            raise StreamError(f"video source {text!r} does not exist; give a video file, a camera index (0), /dev/videoN, "
                              f"one of {', '.join(s.example for s in SCHEMES.values() if s.name != 'rtsps')}, "
                              f"or a GStreamer pipeline ending in appsink")
        return _file(text, text, options, jetson)
    scheme = SCHEMES.get(match.group(1).lower())
    if scheme is None:
        raise StreamError(f"video source {text!r}: unknown scheme {match.group(1)}://; supported: "
                          f"{', '.join(f'{s.name}:// ({s.example})' for s in SCHEMES.values())}")
    if options.backend is not None:
        if options.backend not in scheme.builders:
            raise StreamError(f"--input-backend {options.backend} cannot read {scheme.name}://; it is read through "
                              f"{' or '.join(scheme.builders)}")
        chosen = options.backend
    else:
        have = available_backends() if available is None else frozenset(available)
        # The first backend this OpenCV has (rtsp://: FFmpeg, else GStreamer, as JetPack's OpenCV lacks FFmpeg).
        chosen = next((b for b in scheme.builders if b in have), next(iter(scheme.builders)))
    return scheme.builders[chosen](match.group(2), text, options, jetson)


# -- per frame ----------------------------------------------------------------------------------------------------

def apply_flip(image: np.ndarray, flip: str) -> np.ndarray:
    """`image` (HxW or HxWxC) flipped / rotated as nvvidconv's flip-method of that name does, C-contiguous."""
    out = _NUMPY_FLIPS[canonical_flip(flip)](image)
    return out if out is image else np.ascontiguousarray(out)


def frame_adjuster(spec: SourceSpec) -> Callable[[np.ndarray], np.ndarray] | None:
    """The flip and resize `spec` leaves to each decoded frame, as one function; None when there is nothing to do."""
    if spec.flip == "none" and spec.size is None:
        return None

    def adjust(image: np.ndarray) -> np.ndarray:
        image = apply_flip(image, spec.flip)
        if spec.size is not None and (image.shape[1], image.shape[0]) != spec.size:
            import cv2

            shrink = spec.size[0] * spec.size[1] < image.shape[0] * image.shape[1]
            image = cv2.resize(image, spec.size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        return image

    return adjust


def gst_launch_command(pipeline: str) -> str:
    """A shell command that runs `pipeline` with gst-launch-1.0 (appsink -> fakesink), to try it by hand."""
    tokens = shlex.split(pipeline.replace(APPSINK, "fakesink"))
    # gst-launch-1.0 takes the pipeline as words; caps with parentheses need the shell's quotes, `!` does not.
    return " ".join(["gst-launch-1.0", *(t if t == "!" else shlex.quote(t) for t in tokens)])


# -- opening ------------------------------------------------------------------------------------------------------

def open_capture(spec: SourceSpec, timeout_s: float = 10.0) -> Any:
    """An opened cv2.VideoCapture for `spec`; StreamError when this OpenCV lacks its backend or cannot open it."""
    import cv2

    if spec.backend == "v4l2":
        node = spec.target if isinstance(spec.target, str) else f"/dev/video{spec.target}"
        if not Path(node).exists():
            # OpenCV would only say it cannot open it; that the device node is missing is the user's next clue.
            raise StreamError(f"cannot open video source {spec.text!r}: no such camera {node}; list the cameras with "
                              f"`v4l2-ctl --list-devices` or `ls /dev/video*`")
    if not _has_backend(_build_information(), spec.backend):
        name = BACKENDS[spec.backend][2]
        raise StreamError(f"{spec.text!r} is read through {name}, but this OpenCV ({cv2.__version__}) was built without "
                          f"{name}: {_MISSING_BACKEND_FIX[spec.backend]}")
    api = getattr(cv2, spec.api)
    if spec.kind == "url":
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(timeout_s * 1000), cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(timeout_s * 1000)]
        cap = cv2.VideoCapture(spec.target, api, params)
    else:
        cap = cv2.VideoCapture(spec.target, api)
    if not cap.isOpened():
        cap.release()
        hint = spec.hint or "OpenCV cannot open it"
        if spec.kind == "gstreamer" and spec.text != spec.target:
            hint += f"; try the pipeline with: {gst_launch_command(spec.target)}"
        raise StreamError(f"cannot open video source {spec.text!r}: {hint}")
    for name, value in spec.props:
        cap.set(getattr(cv2, name), value)
    _report_mismatch(cap, spec, cv2)
    return cap


def _report_mismatch(cap: Any, spec: SourceSpec, cv2: Any) -> None:
    """Warn when a camera gives another size or rate than it was asked for (V4L2 picks its nearest mode)."""
    asked = dict(spec.props)
    got = {name: cap.get(getattr(cv2, name)) for name in asked}
    off = [f"{name.removeprefix('CAP_PROP_').lower()} {got[name]:g} instead of {value:g}" for name, value in asked.items()
           if got[name] > 0 and abs(got[name] - value) > 0.01 * value]
    if off:
        warnings.warn(f"camera {spec.text!r} gives {', '.join(off)} (not a mode it offers: v4l2-ctl --list-formats-ext "
                      f"lists them); tagging what it gives", RamEdgeWarning, stacklevel=3)
