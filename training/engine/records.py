"""Annotation files in and out of the data engine: the JSONL and official-JSON formats training reads.

Input rows are kept whole; the engine replaces "tags" (and drops "tag_ids", which no longer match) and adds
"tag_sources" (per tag, where it came from: "parsed" / "given" for the originals, "generated_tag",
"generated_caption") and, after cleaning, "dropped_tags" (per removed tag, the reason). Image paths in the
output are relative to the output folder, so the folder is itself a dataset (`data.kind: jsonl`) that points at
the original images without copying them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ram_edge.errors import ConfigError

ORIGINAL_SOURCES = ("parsed", "given")
SUMMARY_FILE = "engine.json"


@dataclass
class Record:
    """One annotated image of the engine's input."""

    index: int
    image: Path  # absolute path of the image file
    captions: list[str]
    row: dict[str, Any]  # the input row, all fields
    tags: list[str] = field(default_factory=list)  # current tags, in order of first appearance
    sources: dict[str, list[str]] = field(default_factory=dict)  # tag -> provenance

    def add(self, tag: str, source: str) -> None:
        """Add `tag` (or one more source for it)."""
        if tag not in self.sources:
            self.tags.append(tag)
            self.sources[tag] = []
        if source not in self.sources[tag]:
            self.sources[tag].append(source)


def annotation_file(data: str | Path) -> Path:
    """The annotation file of DATA: a JSONL file, a folder holding annotations.jsonl, or an official JSON list."""
    path = Path(data)
    if path.is_dir():
        path = path / "annotations.jsonl"
    if not path.is_file():
        raise ConfigError(f"{data}: no annotation file; pass a folder with annotations.jsonl, a .jsonl file "
                          "or an official annotation .json")
    return path


def _official_row(row: Any, where: str) -> dict[str, Any]:
    from ram_edge.training.data import check_row

    check_row(row, where, "image_path")
    out = {k: v for k, v in row.items() if k not in ("image_path", "caption")}
    out["image"] = row["image_path"]
    captions = row.get("caption", [])
    out["captions"] = [captions] if isinstance(captions, str) else list(captions)
    return out


def iter_rows(path: Path) -> Iterator[dict[str, Any]]:
    """The rows of a JSONL or official-JSON annotation file, as JSONL-style dicts ("image", "captions", ...)."""
    from ram_edge.fileio import read_text
    from ram_edge.training.data import iter_jsonl_rows

    if path.suffix.lower() == ".json":
        try:
            rows = json.loads(read_text(path, what="annotation file", error=ConfigError))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
        if not isinstance(rows, list):
            raise ConfigError(f"{path}: expected a JSON list of annotations (the official format)")
        for number, row in enumerate(rows):
            yield _official_row(row, f"{path}, item {number}")
        return
    yield from iter_jsonl_rows(path, what="annotation file")


def read_records(data: str | Path, image_root: str | Path | None = None) -> list[Record]:
    """Every record of DATA with its image path resolved (relative paths: against image_root or the file's folder)."""
    path = annotation_file(data)
    root = Path(image_root) if image_root else path.parent
    records = []
    for index, row in enumerate(iter_rows(path)):
        image = Path(row["image"])
        if not image.is_absolute():
            image = root / image
        captions = row.get("captions", row.get("caption", []))
        captions = [captions] if isinstance(captions, str) else list(captions)
        if not all(isinstance(c, str) for c in captions):
            raise ConfigError(f"{path}, record {index}: captions must be strings")
        records.append(Record(index, image.resolve(), captions, row))
    if not records:
        raise ConfigError(f"{path}: no annotations in this file")
    return records


def start_tags(records: list[Record], tags_from: str, label_system) -> None:
    """Fill each record's tags from its captions ("parse") or its own "tags" / "tag_ids" ("given")."""
    if tags_from not in ("parse", "given"):
        raise ConfigError(f"tags_from {tags_from!r} is unknown; valid: parse, given")
    names = list(label_system.tags)
    if tags_from == "parse":
        from ..parse import TagParser

        parser = TagParser(label_system)
        for rec in records:
            for caption in rec.captions:
                for i in parser.parse(caption):
                    rec.add(names[i], "parsed")
        return
    for rec in records:
        given = rec.row.get("tags")
        sources = rec.row.get("tag_sources") or {}
        if given is None and rec.row.get("tag_ids") is not None:
            given = [names[int(i)] for i in rec.row["tag_ids"] if 0 <= int(i) < len(names)]
        for tag in given or []:
            if not isinstance(tag, str):
                raise ConfigError(f"{rec.image}: tag {tag!r} is not a string")
            for source in sources.get(tag) or ["given"]:
                rec.add(tag, source)


def output_row(rec: Record, out_dir: Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The output JSONL row of a record: its input fields, new tags and provenance, image path relative to out_dir."""
    row = {k: v for k, v in rec.row.items() if k not in ("tag_ids", "caption", "image_path")}
    row["image"] = os.path.relpath(rec.image, out_dir.resolve())
    row["captions"] = list(rec.captions)
    row["tags"] = list(rec.tags)
    row["tag_sources"] = {t: list(rec.sources[t]) for t in rec.tags}
    row.update(extra or {})
    return row


def write_output(out: Path, records: list[Record], label_system, summary: dict[str, Any], *, overwrite: bool = False) -> None:
    """OUT/annotations.jsonl, labels.tsv and engine.json (the summary), written in a temporary folder then renamed."""
    from ram_edge.fileio import atomic_dir

    with atomic_dir(out, overwrite=overwrite) as tmp:
        with open(tmp / "annotations.jsonl", "w", encoding="utf-8") as fh:
            for rec in records:
                fh.write(json.dumps(output_row(rec, out), ensure_ascii=False) + "\n")
        label_system.save(tmp / "labels.tsv")
        (tmp / SUMMARY_FILE).write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
