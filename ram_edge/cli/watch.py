"""`ram-edge watch`: tag the frames of a video file, camera, RTSP/RTP/HTTP stream or GStreamer pipeline."""

from __future__ import annotations

import json
import signal
import sys

import click

from ..video_sources import CODECS, FLIP_ALIASES, FLIP_METHODS
from .options import compute_precision_option, model_options


def _human(item) -> str:
    if not item.result.ok:
        return f"frame {item.frame} ({item.time:.2f} s): error: {item.result.error}"
    tags = ", ".join(f"{t.tag} {t.score:.2f}" for t in item.result.tags) or "(no tags)"
    if item.added is not None:
        change = ", ".join([*(f"+{n}" for n in item.added), *(f"-{n}" for n in item.removed)])
        return f"frame {item.frame} ({item.time:.2f} s): {change} | {tags}"
    return f"frame {item.frame} ({item.time:.2f} s): {tags}"


@click.command()
@click.argument("source")
@model_options
@compute_precision_option
@click.option("--every", type=click.IntRange(min=1), default=None, help="Tag every N-th frame of the source.")
@click.option("--fps", type=click.FloatRange(min=0, min_open=True), default=None, help="Tag at most F frames per second of source time.")
@click.option("--max-frames", type=click.IntRange(min=1), default=None, help="Stop after tagging N frames.")
@click.option("--realtime/--no-realtime", default=None,
              help="Keep only the newest frame when tagging is slower than the source [on for cameras and streams; "
                   "off for files, which are tagged frame by frame; --realtime plays a file at its frame rate].")
@click.option("--reconnect", "reconnect_attempts", type=click.IntRange(min=1), default=5, show_default=True,
              help="Attempts (with backoff) to reopen a live source that dropped before giving up.")
@click.option("--threshold", type=click.FloatRange(0.0, 1.0), default=None, help="One threshold for every tag instead of the per-tag ones.")
@click.option("--top-k", type=click.IntRange(min=1), default=None, help="At most K tags per frame.")
@click.option("--input-width", type=click.IntRange(min=1), default=None,
              help="Frame width to ask of the source (with --input-height): a camera's mode; files and streams are resized.")
@click.option("--input-height", type=click.IntRange(min=1), default=None, help="Frame height to ask of the source.")
@click.option("--input-rate", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Frame rate to ask of a camera (csi://, v4l2://) or GStreamer stream; for files and FFmpeg streams use --fps.")
@click.option("--input-flip", type=click.Choice([*FLIP_METHODS, *FLIP_ALIASES], case_sensitive=False), default=None,
              help="Flip or rotate the frames (jetson-utils' names; nvvidconv's flip-method 0-7 on a Jetson pipeline).")
@click.option("--input-codec", type=click.Choice(list(CODECS), case_sensitive=False), default=None,
              help="Codec of an rtp:// stream (or rtsp:// with --input-backend gstreamer) [h264].")
@click.option("--input-backend", type=click.Choice(["ffmpeg", "gstreamer"]), default=None,
              help="How OpenCV reads a URL: rtsp:// through ffmpeg (default when present) or a gstreamer rtspsrc pipeline.")
@click.option("--smooth", type=int, default=1, show_default=True,
              help="Threshold each tag's mean probability over the last K tagged frames (1: no smoothing).")
@click.option("--hysteresis", type=float, default=0.0, show_default=True,
              help="A tag turns on above threshold + D and off at or below threshold - D (0: plain thresholds).")
@click.option("--events", is_flag=True,
              help='Print a line only when the tag set changes: {"frame", "time", "added", "removed", "tags"} with --json.')
@click.option("--chinese", is_flag=True, help="Also the Chinese tag names (with --json).")
@click.option("--json", "as_json", is_flag=True, help='One JSON object per tagged frame: {"frame", "time", "tags"}.')
def watch(source, model, runtime, device, threads, compute_precision, every, fps, max_frames, realtime, reconnect_attempts,
          threshold, top_k, input_width, input_height, input_rate, input_flip, input_codec, input_backend, smooth,
          hysteresis, events, chinese, as_json) -> None:
    """Tag the frames of SOURCE, written as NVIDIA's jetson-inference tools write it: csi://0 (a Jetson CSI camera),
    v4l2:///dev/video0 or /dev/video0 or a camera index (0), rtsp://host:port/path, rtp://@:1234,
    file:///path/video.mp4 or a path, an http(s):// URL, or a GStreamer pipeline ending in appsink.

    One line per tagged frame on stdout (with --events, per change of the tag set); progress, warnings and the
    summary on stderr. Ctrl-C or SIGTERM ends it cleanly with the summary.
    """
    from tqdm import tqdm

    from ..default_model import default_model_path
    from ..smoothing import check_options
    from ..stream import FrameReader, TagStream
    from ..tagger import Tagger
    from ..video_sources import parse_source

    if every is not None and fps is not None:
        raise click.UsageError("give --every or --fps, not both")
    check_options(smooth, hysteresis)  # one `error:` line naming the option, before the source opens and the model loads
    spec = parse_source(source, width=input_width, height=input_height, rate=input_rate, flip=input_flip,
                        codec=input_codec, backend=input_backend)
    reader = FrameReader(spec, every=every, fps=fps, realtime=realtime, reconnect_attempts=reconnect_attempts)
    reader.open()  # a source that cannot be opened (or a missing OpenCV) fails before the model loads
    tagger = Tagger.load(model or default_model_path(), runtime=runtime, device=device, threads=threads,
                         compute_precision=compute_precision)
    try:
        stream = TagStream(tagger, reader, threshold=threshold, top_k=top_k, max_frames=max_frames, smooth=smooth,
                           hysteresis=hysteresis, events=events)
    except BaseException:
        reader.stop()
        tagger.close()
        raise

    def _stop(signum, _frame) -> None:
        stream.stop()

    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        reader.start()
        with tqdm(total=reader.frame_count, unit="frame", file=sys.stderr, disable=None, leave=False) as bar:
            for item in stream:
                line = json.dumps(item.to_dict(chinese), ensure_ascii=False) if as_json else _human(item)
                click.echo(line)
                sys.stdout.flush()
                bar.n = reader.stats.read
                bar.refresh()
                if not item.result.ok:
                    click.echo(f"warning: frame {item.frame}: {item.result.error}", err=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        reader.stop()
        tagger.close()
        click.echo(f"watch {source}: {reader.stats.summary()}", err=True)
    if reader.stats.errors:
        sys.exit(1)
