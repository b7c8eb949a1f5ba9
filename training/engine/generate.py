"""Generation: add the tags a baseline model predicts with high confidence, and (where the checkpoint can caption)
captions from its caption decoder parsed into tags, to each image's original annotations."""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ram_edge.errors import ConfigError, RamEdgeError

from .records import ORIGINAL_SOURCES, Record, annotation_file, read_records, start_tags, write_output

SHARD_SUFFIX = ".json"



@dataclass
class GenerateOptions:
    """How generation decides which predictions become tags."""

    tags_from: str = "parse"  # the originals: "parse" the captions, or the rows' "given" tags
    margin: float = 0.0  # added to each tag's own threshold (stricter than the model's operating point)
    threshold: float | None = None  # one threshold for every tag instead of the model's own
    captions: str = "auto"  # "auto": where the checkpoint can caption; "on": required; "off"
    max_caption_tokens: int = 30
    batch_size: int = 32
    shard_size: int = 1000  # images per resumable shard

    def __post_init__(self) -> None:
        if self.captions not in ("auto", "on", "off"):
            raise ConfigError(f"captions {self.captions!r} is unknown; valid: auto, on, off")
        if self.threshold is not None and not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"threshold {self.threshold} must be between 0 and 1")
        if not -1.0 < self.margin < 1.0:
            raise ConfigError(f"margin {self.margin} must be between -1 and 1")
        if self.batch_size < 1 or self.shard_size < 1:
            raise ConfigError(f"batch size {self.batch_size} and shard size {self.shard_size} must be at least 1")


def generation_thresholds(model_thresholds: np.ndarray, options: GenerateOptions) -> np.ndarray:
    """Per-tag thresholds for adding a generated tag: one global value, or the model's own plus the margin."""
    if options.threshold is not None:
        return np.full(len(model_thresholds), options.threshold, np.float32)
    return np.clip(np.asarray(model_thresholds, np.float32) + options.margin, 1e-4, 1 - 1e-4)


def load_label_system(labels: str | Path | None, tags: list[str]):
    """The label system captions are parsed with: a file, else the model's own tags (no synonyms)."""
    from ..label_system import LabelSystem

    return LabelSystem.load(labels) if labels else LabelSystem(tags=list(tags))


def generate(data: str | Path, model: str | Path, out: str | Path, *, labels: str | Path | None = None,
             options: GenerateOptions | None = None, runtime: str = "auto", device: str | None = None, image_root: str | Path | None = None,
             overwrite: bool = False, progress: bool = True, work_dir: str | Path | None = None, restart: bool = False,
             keep_work: bool = False) -> dict[str, Any]:
    """Write OUT/annotations.jsonl: DATA's annotations plus the model's confident tags and parsed captions
    (resumable through work_dir: each shard of images is kept there once done)."""
    from tqdm import tqdm

    from ram_edge.dir_lock import exclusive_directory
    from ram_edge.fileio import atomic_file, refuse_existing
    from ram_edge.tagger import Tagger

    from ..parse import TagParser
    from .captioner import captioning_status, load_captioner
    from .shards import ShardDir, fingerprint, shard_ranges

    options = options or GenerateOptions()
    out = Path(out)
    refuse_existing(out, overwrite)
    records = read_records(data, image_root)
    tagger = Tagger.load(model, runtime, device)
    system = load_label_system(labels, tagger.tags)
    start_tags(records, options.tags_from, system)
    originals = sum(len(r.tags) for r in records)
    thresholds = generation_thresholds(tagger.labels.thresholds, options)
    captioner, caption_note = None, None
    if options.captions != "off":
        why = captioning_status(model)
        if why is None:
            # The caption decoder runs in torch: on the runtime's CUDA device when there is one, else the CPU.
            cuda = device if device and str(device).lower().startswith("cuda") else None
            captioner = load_captioner(model, options.max_caption_tokens, cuda)
        elif options.captions == "on":
            raise ConfigError(f"--captions needs a checkpoint that can caption: {why}")
        else:
            caption_note = f"no captions generated: {why}"
            print(f"note: {caption_note}", file=sys.stderr)
    parser = TagParser(system) if captioner is not None else None
    work = Path(work_dir) if work_dir else out.with_name(out.name + ".engine-work")
    # The runtime is part of the run: onnxruntime and torch differ in the last bits, which can move a tag across its
    # threshold, and one output should not mix both.
    run_options = {**asdict(options), "labels": str(labels), "runtime": tagger.runtime.name, "captions": captioner is not None}
    with exclusive_directory(work, "pass another --work-dir"):  # one process per work folder
        shards = ShardDir(work, fingerprint([annotation_file(data), *_model_files(model)], run_options), restart=restart)
        failed: list[dict[str, str]] = []
        bar = tqdm(total=len(records), desc="generate", unit="img", file=sys.stderr, disable=None if progress else True)
        with bar:
            for number, (start, end) in enumerate(shard_ranges(len(records), options.shard_size)):
                path = shards.shard_path(number, SHARD_SUFFIX)
                if shards.done(number, SHARD_SUFFIX):
                    part = json.loads(path.read_text(encoding="utf-8"))
                    for entry in part["records"]:
                        _add_generated_tags(records[entry["i"]], entry)
                        _add_generated_caption(records[entry["i"]], entry)
                    bar.update(end - start)
                else:
                    part = _generate_shard(records, start, end, tagger, thresholds, captioner, parser, system, options, bar)
                    with atomic_file(path, "w") as fh:
                        json.dump(part, fh)
                failed.extend(part["failed"])
    tagger.close()
    summary = _summary(records, originals, failed, options, model, caption_note)
    write_output(out, records, system, summary, overwrite=overwrite)
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return summary


def _model_files(model: str | Path) -> list[Path]:
    """The files that make the model (a checkpoint's or bundle's top-level files): what a resumed run must share."""
    path = Path(model)
    return sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]


def _generate_shard(records: list[Record], start: int, end: int, tagger, thresholds: np.ndarray, captioner, parser, system,
                    options: GenerateOptions, bar) -> dict[str, Any]:
    """Records [start, end): generated tags and captions, applied to the records and returned for the shard file."""
    names = tagger.tags
    entries: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    for first in range(start, end, options.batch_size):
        chunk = list(range(first, min(first + options.batch_size, end)))
        good, pixels = _load(tagger, [records[i] for i in chunk], failed)
        if good:
            loaded = {id(rec) for rec in good}
            positions = [i for i in chunk if id(records[i]) in loaded]
            batch = np.stack(pixels)
            probs = tagger.predict(batch)
            found = [{"i": i, "tags": [names[t] for t in np.flatnonzero(row >= thresholds)]} for i, row in zip(positions, probs)]
            for entry in found:
                _add_generated_tags(records[entry["i"]], entry)
            if captioner is not None:
                texts = captioner.caption(batch, [records[i].tags for i in positions])
                for entry, text in zip(found, texts):
                    entry["caption"] = text
                    entry["caption_tags"] = [system.tags[t] for t in parser.parse(text)]
                    _add_generated_caption(records[entry["i"]], entry)
            entries.extend(found)
        bar.update(len(chunk))
    return {"records": entries, "failed": failed}


def _add_generated_tags(rec: Record, entry: dict[str, Any]) -> None:
    """A shard entry's confident predictions, added to its record."""
    for tag in entry["tags"]:
        rec.add(tag, "generated_tag")


def _add_generated_caption(rec: Record, entry: dict[str, Any]) -> None:
    """A shard entry's generated caption (if any) and the tags parsed from it, added to its record."""
    if "caption" in entry:
        rec.row["generated_captions"] = [entry["caption"]]
        rec.captions.append(entry["caption"])
        for tag in entry["caption_tags"]:
            rec.add(tag, "generated_caption")


def _load(tagger, chunk: list[Record], failed: list[dict[str, str]]) -> tuple[list[Record], list[np.ndarray]]:
    """Preprocessed pixels of the readable images; unreadable ones keep their original tags and are reported."""
    good, pixels = [], []
    for rec in chunk:
        try:
            pixels.append(tagger.load_images([rec.image])[0])
            good.append(rec)
        except (RamEdgeError, OSError) as exc:
            failed.append({"image": str(rec.image), "error": str(exc)})
    return good, pixels


def _summary(records: list[Record], originals: int, failed: list[dict[str, str]], options: GenerateOptions,
             model: str | Path, caption_note: str | None) -> dict[str, Any]:
    counts: dict[str, int] = {}
    only_generated = 0
    for rec in records:
        for tag in rec.tags:
            for source in rec.sources[tag]:
                counts[source] = counts.get(source, 0) + 1
            if not any(s in ORIGINAL_SOURCES for s in rec.sources[tag]):
                only_generated += 1
    n = len(records)
    total = sum(len(r.tags) for r in records)
    return {"step": "generate", "model": str(model), "options": asdict(options), "images": n,
            "unreadable": len(failed), "failed": failed[:100], "tags_before": originals, "tags_after": total,
            "tags_per_image_before": originals / n, "tags_per_image_after": total / n,
            "tags_added": only_generated, "tag_sources": counts, "captions_note": caption_note}
