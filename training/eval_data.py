"""Evaluation data sets: the official benchmark files and ram-edge's JSONL, read into an :class:`EvalSet`.

Official benchmark format (``datasets/<name>/`` of the recognize-anything repository), as found in
the files themselves and in the official ``batch_inference.py`` / ``ram/utils/metrics.py``:

* ``<name>_taglist.txt``: one benchmark tag per line (the official code ``strip()``s each line).
  Names may repeat (``imagenet_multi_1000`` has 1000 lines, 998 distinct names: "crane" and
  "maillot" twice); repeated names are one column here, their positives merged (OR), as the
  official code maps every tag name to all of its columns.
* ``<name>_annots.txt``: one image per line, ``path[,label[,label...]]`` split on ``,``; an image
  with no label has no comma (``imagenet_multi``). Two kinds of label exist:

  - **names** (``openimages_common_214_ram``, ``openimages_rare_200_ram``): every label is a line
    of the tag list, e.g. ``test/0000c64e1253d68f,Auto racing``; up to 5 labels per image;
  - **0-based indices** (``hico_600``, ``imagenet_multi_1000``): one field of space-separated
    positions in the tag list, e.g. ``HICO_test2015_00000002.jpg,131 139 143``.

  A file is read as names when every label is a tag-list line, else as indices when every label
  field is whitespace-separated integers within the list; anything else is an error naming the
  line. (The Tag2Text id files, ``*_tag2text_idannots.txt`` + ``*_tag2text_tagidlist.txt``, hold
  Tag2Text class ids that read as names; none of them is a RAM tag name.)
* Image paths are relative to the benchmark's image folder (official: ``datasets/<name>/imgs``),
  and the OpenImages ones have no extension: the official loader appends ``.jpg``. Here a path
  without a suffix gets ``.jpg`` appended unless a file of the exact name exists. Blank lines are
  skipped. The images are not distributed with the repository.

JSONL format (ours): one JSON object per line, ``{"image": "path", "tags": ["name", ...]}`` (other
keys are ignored; blank lines skipped). Relative image paths are relative to the JSONL file's folder
(or to ``image_root`` when given). The evaluated tags are the tags of an optional tag list file, else
every tag that occurs in the file, in order of first appearance.

Tags are matched to a model BY NAME, exactly (case and spaces). Benchmark tags the model does not
know are excluded and recorded in :attr:`EvalSet.skipped_tags` (with the number of positive labels
dropped with them), as the official closed-set evaluation can only score tags of the model.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from ram_edge.errors import LabelError

FORMATS = ("auto", "official", "jsonl")

_INDEX_FIELD = re.compile(r"\d+(?:\s+\d+)*")


@dataclass
class EvalSet:
    """Images, the evaluated tag names and the (N images, T tags) boolean ground truth."""

    images: list[Path]
    tag_names: list[str]
    targets: np.ndarray
    skipped_tags: list[str] = field(default_factory=list)
    skipped_positives: int = 0
    source: str = ""
    format: str = ""

    def __post_init__(self) -> None:
        self.targets = np.asarray(self.targets, dtype=bool)
        if self.targets.shape != (len(self.images), len(self.tag_names)):
            raise LabelError(
                f"evaluation set {self.source or '(in memory)'}: targets have shape {self.targets.shape} but there are "
                f"{len(self.images)} images and {len(self.tag_names)} tags; give one row per image and one column per tag"
            )
        if len(set(self.tag_names)) != len(self.tag_names):
            raise LabelError(f"evaluation set {self.source or '(in memory)'}: tag names repeat; merge their columns first")

    def __len__(self) -> int:
        """Number of images."""
        return len(self.images)

    def restrict_to(self, model_tags: Sequence[str]) -> "EvalSet":
        """Keep the tags the model knows (exact name); the others go to `skipped_tags` with their positive count."""
        known = set(model_tags)
        keep = np.array([name in known for name in self.tag_names], dtype=bool)
        if keep.all():
            return self
        dropped = [n for n, k in zip(self.tag_names, keep) if not k]
        if not keep.any():
            examples = ", ".join(repr(n) for n in dropped[:5])
            raise LabelError(
                f"{self.source}: none of the {len(dropped)} evaluation tags is in the model's tag list (e.g. {examples}); "
                f"tags are matched by exact name, so evaluate a model whose tag list holds these tags (benchmarks of "
                f"unseen tags such as openimages_rare_200 and hico_600 need an open-set model)"
            )
        return replace(
            self,
            tag_names=[n for n, k in zip(self.tag_names, keep) if k],
            targets=self.targets[:, keep],
            skipped_tags=list(self.skipped_tags) + dropped,
            skipped_positives=self.skipped_positives + int(self.targets[:, ~keep].sum()),
        )


def _read_text_lines(path: Path, what: str) -> list[str]:
    """Lines of a UTF-8 file, with errors that say which input is wrong."""
    from ram_edge.fileio import read_text

    return read_text(path, what=what, error=LabelError).splitlines()


def _resolve_image(root: Path, rel: str) -> Path:
    """root/rel; without a suffix, '.jpg' is appended (official loader) unless that exact file exists."""
    path = Path(rel)
    if not path.is_absolute():
        path = root / path
    if path.suffix == "" and not path.exists():
        path = path.with_name(path.name + ".jpg")
    return path


def find_taglist(annots: str | Path) -> Path:
    """The tag list beside an official annotation file (`X_annots.txt` -> `X_taglist.txt`)."""
    annots = Path(annots)
    name = annots.name
    for suffix, replacement in (("_idannots.txt", "_tagidlist.txt"), ("_annots.txt", "_taglist.txt")):
        if name.endswith(suffix):
            candidate = annots.with_name(name[: -len(suffix)] + replacement)
            if candidate.is_file():
                return candidate
            raise LabelError(f"{annots}: the tag list {candidate.name} is not beside it; pass the tag list with --taglist")
    raise LabelError(f"{annots}: cannot guess the tag list (the name does not end in _annots.txt); pass it with --taglist")


def read_official(
    annots: str | Path,
    taglist: str | Path | None = None,
    *,
    image_root: str | Path | None = None,
    model_tags: Sequence[str] | None = None,
) -> EvalSet:
    """Read an official benchmark (annotations + tag list, by names or 0-based indices) into an EvalSet."""
    annots = Path(annots)
    taglist = find_taglist(annots) if taglist is None else Path(taglist)
    raw_tags = [line.strip() for line in _read_text_lines(taglist, "benchmark tag list")]
    for lineno, name in enumerate(raw_tags, start=1):
        if not name:
            raise LabelError(f"{taglist}, line {lineno}: empty tag name; remove blank lines from the tag list")
    if not raw_tags:
        raise LabelError(f"{taglist}: tag list is empty; pass the benchmark's *_taglist.txt")
    if image_root is None:
        imgs = annots.parent / "imgs"
        root = imgs if imgs.is_dir() else annots.parent
    else:
        root = Path(image_root)

    rows: list[tuple[int, str, list[str]]] = []
    for lineno, line in enumerate(_read_text_lines(annots, "benchmark annotations"), start=1):
        if not line.strip():
            continue
        fields = line.strip().split(",")
        path = fields[0].strip()
        if not path:
            raise LabelError(f"{annots}, line {lineno}: no image path before the first comma; each line is path[,label...]")
        rows.append((lineno, path, [f.strip() for f in fields[1:] if f.strip()]))
    if not rows:
        raise LabelError(f"{annots}: no images; an annotation file has one 'path[,label...]' line per image")

    names = set(raw_tags)
    by_name = all(label in names for _, _, labels in rows for label in labels)
    if by_name:
        def columns(lineno: int, labels: list[str]) -> list[str]:
            return labels
        mode = "names"
    else:
        def columns(lineno: int, labels: list[str]) -> list[str]:
            out = []
            for label in labels:
                if label in names:
                    out.append(label)
                    continue
                if not _INDEX_FIELD.fullmatch(label):
                    raise LabelError(
                        f"{annots}, line {lineno}: label {label!r} is not a tag of {taglist.name} nor a list of 0-based "
                        f"indices into it; fix the line or pass the matching tag list with --taglist"
                    )
                for token in label.split():
                    idx = int(token)
                    if idx >= len(raw_tags):
                        raise LabelError(
                            f"{annots}, line {lineno}: tag index {idx} is out of range for {taglist.name} "
                            f"({len(raw_tags)} tags, 0-based); pass the matching tag list with --taglist"
                        )
                    out.append(raw_tags[idx])
            return out
        mode = "indices"

    tag_names = list(dict.fromkeys(raw_tags))
    col = {name: i for i, name in enumerate(tag_names)}
    targets = np.zeros((len(rows), len(tag_names)), dtype=bool)
    images = []
    for i, (lineno, path, labels) in enumerate(rows):
        images.append(_resolve_image(root, path))
        for name in columns(lineno, labels):
            targets[i, col[name]] = True
    evalset = EvalSet(images, tag_names, targets, source=str(annots), format=f"official ({mode})")
    return evalset if model_tags is None else evalset.restrict_to(model_tags)


def read_jsonl(
    path: str | Path,
    *,
    taglist: str | Path | None = None,
    image_root: str | Path | None = None,
    model_tags: Sequence[str] | None = None,
) -> EvalSet:
    """Read `{"image": path, "tags": [names]}` lines (paths relative to the file's folder) into an EvalSet."""
    path = Path(path)
    root = path.parent if image_root is None else Path(image_root)
    vocab: list[str] | None = None
    if taglist is not None:
        vocab = [line.strip() for line in _read_text_lines(Path(taglist), "tag list") if line.strip()]
        if not vocab:
            raise LabelError(f"{taglist}: tag list is empty; give one tag name per line")
    images: list[Path] = []
    labels: list[list[str]] = []
    allowed = None if vocab is None else set(vocab)
    for lineno, line in enumerate(_read_text_lines(path, "JSONL annotations"), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LabelError(f"{where}: not valid JSON ({exc.msg}); each line is {{\"image\": path, \"tags\": [names]}}") from None
        if not isinstance(record, dict):
            raise LabelError(f"{where}: expected a JSON object {{\"image\": path, \"tags\": [names]}}, got {type(record).__name__}")
        image, tags = record.get("image"), record.get("tags")
        if not isinstance(image, str) or not image:
            raise LabelError(f"{where}: \"image\" must be a non-empty path string")
        if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
            raise LabelError(f"{where}: \"tags\" must be a list of tag-name strings (an empty list for no tag)")
        if allowed is not None:
            outside = [t for t in tags if t not in allowed]
            if outside:
                raise LabelError(f"{where}: tag(s) {outside} are not in the tag list {taglist}; add them or fix the names")
        p = Path(image)
        images.append(p if p.is_absolute() else root / p)
        labels.append(tags)
    if not images:
        raise LabelError(f"{path}: no images; write one {{\"image\": path, \"tags\": [names]}} object per line")
    if vocab is None:
        vocab = list(dict.fromkeys(t for tags in labels for t in tags))
        if not vocab:
            raise LabelError(f"{path}: no image has a tag, so there is nothing to evaluate; give the true tags of each image")
    tag_names = list(dict.fromkeys(vocab))
    col = {name: i for i, name in enumerate(tag_names)}
    targets = np.zeros((len(images), len(tag_names)), dtype=bool)
    for i, tags in enumerate(labels):
        for t in tags:
            targets[i, col[t]] = True
    evalset = EvalSet(images, tag_names, targets, source=str(path), format="jsonl")
    return evalset if model_tags is None else evalset.restrict_to(model_tags)


def detect_format(path: str | Path) -> str:
    """'jsonl' for a .jsonl file or one whose first non-blank line starts with '{', else 'official'."""
    path = Path(path)
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        return "jsonl"
    try:
        with open(path, "rb") as fh:
            for raw in fh:
                if raw.strip():
                    return "jsonl" if raw.lstrip().startswith(b"{") else "official"
    except FileNotFoundError:
        raise LabelError(f"{path}: evaluation data not found; pass an official *_annots.txt or a .jsonl file") from None
    except IsADirectoryError:
        raise LabelError(f"{path}: is a directory; pass an official *_annots.txt or a .jsonl file") from None
    except OSError as exc:
        raise LabelError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return "official"


def load_evalset(
    path: str | Path,
    format: str = "auto",
    *,
    taglist: str | Path | None = None,
    image_root: str | Path | None = None,
    model_tags: Sequence[str] | None = None,
) -> EvalSet:
    """Read evaluation data in the given format ('auto' detects official vs JSONL)."""
    if format not in FORMATS:
        raise LabelError(f"unknown evaluation data format {format!r}; valid: {', '.join(FORMATS)}")
    if format == "auto":
        format = detect_format(path)
    if format == "jsonl":
        return read_jsonl(path, taglist=taglist, image_root=image_root, model_tags=model_tags)
    return read_official(path, taglist, image_root=image_root, model_tags=model_tags)
