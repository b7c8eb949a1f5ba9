"""`ram-edge watch`: tag the frames of a video file, camera, RTSP/HTTP stream or GStreamer pipeline."""

from __future__ import annotations

import json
import signal
import sys

import click

from .options import compute_precision_option, model_options


def _human(item) -> str:
    if not item.result.ok:
        return f"frame {item.frame} ({item.time:.2f} s): error: {item.result.error}"
    tags = ", ".join(f"{t.tag} {t.score:.2f}" for t in item.result.tags) or "(no tags)"
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
@click.option("--chinese", is_flag=True, help="Also the Chinese tag names (with --json).")
@click.option("--json", "as_json", is_flag=True, help='One JSON object per tagged frame: {"frame", "time", "tags"}.')
def watch(source, model, runtime, device, threads, compute_precision, every, fps, max_frames, realtime, reconnect_attempts,
          threshold, top_k, chinese, as_json) -> None:
    """Tag the frames of SOURCE: a video file, a camera index (0) or /dev/videoN, an rtsp:// or http:// URL,
    or a GStreamer pipeline ending in appsink (a Jetson CSI camera: 'nvarguscamerasrc ! ... ! appsink').

    One line per tagged frame on stdout; progress, warnings and the summary on stderr. Ctrl-C or
    SIGTERM ends it cleanly with the summary.
    """
    from tqdm import tqdm

    from ..default_model import default_model_path
    from ..stream import FrameReader, TagStream
    from ..tagger import Tagger

    if every is not None and fps is not None:
        raise click.UsageError("give --every or --fps, not both")
    reader = FrameReader(source, every=every, fps=fps, realtime=realtime, reconnect_attempts=reconnect_attempts)
    reader.open()  # a source that cannot be opened (or a missing OpenCV) fails before the model loads
    tagger = Tagger.load(model or default_model_path(), runtime=runtime, device=device, threads=threads,
                         compute_precision=compute_precision)
    stream = TagStream(tagger, reader, threshold=threshold, top_k=top_k, max_frames=max_frames)

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
