"""Tag lists, per-class thresholds and output decoding (numpy only, no torch).

Facts reproduced from the official RAM / RAM++ code:

* tag lists are read as UTF-8 with ``str.splitlines()`` and kept verbatim; 2579 of the 4585
  official Chinese names end with a space, which the official output keeps. ``LabelSet`` keeps
  them too (so indices and saved files stay identical), but :meth:`LabelSet.zh_name` strips them.
* thresholds are parsed with ``float()`` and stored as float32 (0.65 -> 0.64999998); 0.68 is used
  for every class when no threshold file is given.
* a tag fires when ``prob > threshold``, strict, in float32.
"""

from __future__ import annotations

import contextlib
import difflib
import heapq
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .errors import LabelError
from .fileio import atomic_file

DEFAULT_THRESHOLD = 0.68

TAGS_FILE = "tags.txt"
TAGS_ZH_FILE = "tags_zh.txt"
THRESHOLDS_FILE = "thresholds.txt"

_MANIFEST_KEYS = ("tags", "tags_zh", "thresholds")


def read_lines(path: str | Path, what: str = "tag/threshold list") -> list[str]:
    """Read a UTF-8 text file as ``splitlines()`` does, names kept verbatim; errors call the file `what`."""
    from .fileio import read_text

    # splitlines() already treats \r\n and \r as one break, like the official text-mode read.
    return read_text(path, what=what, error=LabelError).splitlines()


def _check_names(names: list[str], where: str, what: str) -> None:
    """Reject non-strings, empty names and names that would not survive a save/load round trip."""
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise LabelError(f"{where}, line {i + 1}: {what} must be a string, got {type(name).__name__} {name!r}")
        if not name.strip():
            raise LabelError(f"{where}, line {i + 1}: empty {what}; remove blank lines from the list")
        if name.splitlines() != [name]:
            raise LabelError(f"{where}, line {i + 1}: {what} {name!r} contains a line break; one name per line")


def _check_threshold(value: float, where: str) -> None:
    """A threshold must be a probability; NaN would silently disable a class."""
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise LabelError(f"{where}: threshold {value!r} is not a number in [0, 1]; thresholds are probabilities")


def _format_threshold(value: np.float32) -> str:
    """Shortest decimal text that reads back (float() then float32) as exactly `value`."""
    value = np.float32(value)
    text = np.format_float_positional(value, unique=True, trim="-")
    if np.float32(float(text)) != value:
        # Double rounding (text -> float64 -> float32) can in theory miss; the float64 repr of a
        # float32 is exact, so it always reads back.
        text = repr(float(value))
    return text


def _close_matches(name: str, candidates: list[str], n: int = 3, cutoff: float = 0.6) -> list[str]:
    """difflib.get_close_matches, but ties keep the label-file order instead of reverse-alphabetical."""
    matcher = difflib.SequenceMatcher()
    matcher.set_seq2(name)
    scored = []
    for i, cand in enumerate(candidates):
        matcher.set_seq1(cand)
        if matcher.real_quick_ratio() >= cutoff and matcher.quick_ratio() >= cutoff:
            ratio = matcher.ratio()
            if ratio >= cutoff:
                scored.append((-ratio, i, cand))
    return [cand for _, _, cand in heapq.nsmallest(n, scored)]


def tag_set_f1(fired_a: np.ndarray, fired_b: np.ndarray) -> np.ndarray:
    """Per-image F1 between two boolean (N, C) tag sets (1 where both are empty): how far two models agree."""
    both = (fired_a & fired_b).sum(1)
    either = fired_a.sum(1) + fired_b.sum(1)
    return np.where(either == 0, 1.0, 2 * both / np.maximum(either, 1))


@dataclass(eq=False)
class LabelSet:
    """The class names (English, optional Chinese) and float32 per-class thresholds of a model."""

    tags: list[str]
    tags_zh: list[str] | None
    thresholds: np.ndarray

    def __post_init__(self) -> None:
        self.tags = list(self.tags)
        if self.tags_zh is not None:
            self.tags_zh = list(self.tags_zh)
        if not self.tags:
            raise LabelError("tag list is empty; a model needs at least one class")
        _check_names(self.tags, "tag list", "tag name")
        try:
            thresholds = np.array(self.thresholds, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise LabelError(f"thresholds are not numbers ({exc})") from None
        if thresholds.shape != (len(self.tags),):
            raise LabelError(
                f"thresholds have shape {thresholds.shape} but the tag list has {len(self.tags)} tags; "
                f"give one threshold per tag"
            )
        bad = np.flatnonzero(~(np.isfinite(thresholds) & (thresholds >= 0) & (thresholds <= 1)))
        if bad.size:
            i = int(bad[0])
            _check_threshold(float(thresholds[i]), f"class {i} ({self.tags[i]!r})")
        self.thresholds = thresholds
        if self.tags_zh is not None:
            if len(self.tags_zh) != len(self.tags):
                raise LabelError(
                    f"Chinese list has {len(self.tags_zh)} names but the tag list has {len(self.tags)} tags; "
                    f"give one Chinese name per tag, in the same order"
                )
            _check_names(self.tags_zh, "Chinese list", "Chinese name")
        # First occurrence wins, as a lookup by name can only return one class.
        self._index: dict[str, int] = {}
        for i, name in enumerate(self.tags):
            self._index.setdefault(name, i)

    def __len__(self) -> int:
        """Number of classes."""
        return len(self.tags)

    def __eq__(self, other: object) -> bool:
        """Same names and bit-identical float32 thresholds."""
        if not isinstance(other, LabelSet):
            return NotImplemented
        return (
            self.tags == other.tags
            and self.tags_zh == other.tags_zh
            and self.thresholds.dtype == other.thresholds.dtype
            and np.array_equal(self.thresholds.view(np.uint32), other.thresholds.view(np.uint32))
        )

    __hash__ = None  # mutable container

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.tags)

    @classmethod
    def from_files(
        cls,
        tags_path: str | Path,
        zh_path: str | Path | None = None,
        thresholds_path: str | Path | None = None,
        num_classes: int | None = None,
    ) -> "LabelSet":
        """Read a tag list, optional Chinese list and optional threshold file (default 0.68 each)."""
        tags_path = Path(tags_path)
        tags = read_lines(tags_path)
        if not tags:
            raise LabelError(f"{tags_path}: tag list is empty; pass the tag list the model was trained with")
        _check_names(tags, str(tags_path), "tag name")
        if num_classes is not None and len(tags) != int(num_classes):
            raise LabelError(
                f"tag list {tags_path} has {len(tags)} tags but the checkpoint has {int(num_classes)} classes; "
                f"pass the tag list the model was trained with"
            )
        tags_zh = None
        if zh_path is not None:
            zh_path = Path(zh_path)
            tags_zh = read_lines(zh_path)
            if len(tags_zh) != len(tags):
                raise LabelError(
                    f"Chinese list {zh_path} has {len(tags_zh)} names but tag list {tags_path} has {len(tags)} tags; "
                    f"the Chinese list needs one name per tag, in the same order"
                )
            _check_names(tags_zh, str(zh_path), "Chinese name")
        if thresholds_path is None:
            thresholds = np.full(len(tags), DEFAULT_THRESHOLD, dtype=np.float32)
        else:
            thresholds_path = Path(thresholds_path)
            lines = read_lines(thresholds_path)
            values = []
            for lineno, text in enumerate(lines, start=1):
                where = f"{thresholds_path}, line {lineno}"
                try:
                    value = float(text)
                except ValueError:
                    raise LabelError(f"{where}: {text!r} is not a number; write one threshold in [0, 1] per line") from None
                _check_threshold(value, where)
                values.append(value)
            if len(values) != len(tags):
                raise LabelError(
                    f"threshold file {thresholds_path} has {len(values)} values but tag list {tags_path} has "
                    f"{len(tags)} tags; the threshold file needs one value per tag, in the same order"
                )
            thresholds = np.array(values, dtype=np.float32)
        return cls(tags, tags_zh, thresholds)

    def save_dir(self, directory: str | Path) -> None:
        """Write tags.txt, tags_zh.txt (if any) and thresholds.txt; nothing is replaced on failure."""
        directory = Path(directory)
        contents = {
            TAGS_FILE: "".join(f"{t}\n" for t in self.tags),
            THRESHOLDS_FILE: "".join(f"{_format_threshold(v)}\n" for v in self.thresholds),
        }
        if self.tags_zh is not None:
            contents[TAGS_ZH_FILE] = "".join(f"{t}\n" for t in self.tags_zh)
        # All temporary files are written before any is renamed, so a failure while writing
        # leaves the previous files (or none) in place rather than a mismatched mix.
        with contextlib.ExitStack() as stack:
            for name, text in contents.items():
                fh = stack.enter_context(atomic_file(directory / name, "w"))
                fh.write(text)
        if self.tags_zh is None:
            # A stale Chinese list from an earlier save would be read back as belonging to this set.
            with contextlib.suppress(FileNotFoundError):
                (directory / TAGS_ZH_FILE).unlink()

    @classmethod
    def load_dir(cls, directory: str | Path, num_classes: int | None = None) -> "LabelSet":
        """Read a directory written by :meth:`save_dir`."""
        directory = Path(directory)
        if not directory.is_dir():
            raise LabelError(f"{directory}: label directory not found; pass the folder holding {TAGS_FILE}")
        for required in (TAGS_FILE, THRESHOLDS_FILE):
            if not (directory / required).is_file():
                raise LabelError(
                    f"{directory}: missing {required}; a label directory holds {TAGS_FILE}, {THRESHOLDS_FILE} "
                    f"and optionally {TAGS_ZH_FILE}"
                )
        zh = directory / TAGS_ZH_FILE
        return cls.from_files(
            directory / TAGS_FILE, zh if zh.exists() else None, directory / THRESHOLDS_FILE, num_classes=num_classes
        )

    def with_threshold(self, value: float) -> "LabelSet":
        """A copy with one global threshold for every class."""
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise LabelError(f"global threshold {value!r} is not a number; pass a value in [0, 1]") from None
        _check_threshold(value, "global threshold")
        return LabelSet(
            list(self.tags),
            None if self.tags_zh is None else list(self.tags_zh),
            np.full(len(self.tags), value, dtype=np.float32),
        )

    def _unknown_message(self, name: str) -> str:
        """'unknown tag X: close matches: a, b, c' for one name."""
        matches = _close_matches(name, self.tags)
        hint = f"close matches: {', '.join(matches)}" if matches else "no close matches"
        return f"unknown tag {name!r}: {hint}"

    def index_of(self, name: str) -> int:
        """Class index of an English tag name (exact match)."""
        try:
            return self._index[name]
        except (KeyError, TypeError):
            raise LabelError(f"{self._unknown_message(name)}; tag names must match the tag list exactly") from None

    def subset(self, names: Iterable[str]) -> tuple["LabelSet", np.ndarray]:
        """The label set restricted to `names` (label-file order, duplicates removed) and its int64 indices."""
        if isinstance(names, str):
            # A bare string would otherwise be split into single characters.
            names = [names]
        names = list(names)
        unknown = []
        indices = set()
        for name in names:
            idx = self._index.get(name) if isinstance(name, str) else None
            if idx is None:
                if name not in unknown:
                    unknown.append(name)
            else:
                indices.add(idx)
        if unknown:
            details = "; ".join(self._unknown_message(n) for n in unknown)
            raise LabelError(f"{details}; tag names must match the tag list exactly (case and spaces)")
        if not indices:
            raise LabelError("empty tag subset; give at least one tag name from the tag list")
        idx = np.array(sorted(indices), dtype=np.int64)
        sub = LabelSet(
            [self.tags[i] for i in idx],
            None if self.tags_zh is None else [self.tags_zh[i] for i in idx],
            self.thresholds[idx].copy(),
        )
        return sub, idx

    def _as_probs(self, probs: np.ndarray) -> np.ndarray:
        """Validate the (N, C) shape; float32 because the official comparison is float32."""
        probs = np.asarray(probs, dtype=np.float32)
        if probs.ndim != 2 or probs.shape[1] != len(self.tags):
            raise LabelError(
                f"probabilities have shape {probs.shape}; expected (N, {len(self.tags)}) for this tag list "
                f"of {len(self.tags)} tags (is the tag list the one the model was trained with?)"
            )
        return probs

    def fired(self, probs: np.ndarray) -> np.ndarray:
        """Boolean (N, C) mask: prob > threshold, strict, in float32 (the official rule)."""
        return self._as_probs(probs) > self.thresholds

    def decode(self, probs: np.ndarray, top_k: int | None = None) -> list[list[tuple[int, float]]]:
        """Per image, the fired (index, prob) pairs by prob descending (ties by index), at most top_k."""
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1):
            raise LabelError(f"top_k must be a positive integer or None, got {top_k!r}")
        probs = self._as_probs(probs)
        mask = probs > self.thresholds
        out = []
        for row, row_mask in zip(probs, mask):
            idx = np.flatnonzero(row_mask)
            p = row[idx]
            order = np.lexsort((idx, -p))
            if top_k is not None:
                order = order[:top_k]
            out.append([(int(idx[j]), float(p[j])) for j in order])
        return out

    def zh_name(self, i: int) -> str:
        """Chinese name of class i with surrounding whitespace stripped (the official output keeps it)."""
        if self.tags_zh is None:
            raise LabelError("this label set has no Chinese names; load it with the Chinese tag list")
        return self.tags_zh[i].strip()

    def to_manifest(self) -> dict[str, Any]:
        """JSON-ready dict; thresholds read back bit-exactly as float32."""
        return {
            "tags": list(self.tags),
            "tags_zh": None if self.tags_zh is None else list(self.tags_zh),
            # The shortest float32 text as a Python float: json writes it back as that same text.
            "thresholds": [float(_format_threshold(v)) for v in self.thresholds],
        }

    @classmethod
    def from_manifest(cls, data: dict[str, Any]) -> "LabelSet":
        """Inverse of :meth:`to_manifest`."""
        if not isinstance(data, dict):
            raise LabelError(f"label manifest: expected a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(_MANIFEST_KEYS))
        missing = [k for k in ("tags", "thresholds") if k not in data]
        if unknown or missing:
            raise LabelError(
                f"label manifest: unknown key(s) {unknown}, missing key(s) {missing}; "
                f"expected keys {list(_MANIFEST_KEYS)}"
            )
        tags, tags_zh, thresholds = data["tags"], data.get("tags_zh"), data["thresholds"]
        if not isinstance(tags, list):
            raise LabelError(f"label manifest: 'tags' must be a list of strings, got {type(tags).__name__}")
        if tags_zh is not None and not isinstance(tags_zh, list):
            raise LabelError(f"label manifest: 'tags_zh' must be a list of strings or null, got {type(tags_zh).__name__}")
        if not isinstance(thresholds, list):
            raise LabelError(f"label manifest: 'thresholds' must be a list of numbers, got {type(thresholds).__name__}")
        for i, v in enumerate(thresholds):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise LabelError(f"label manifest: thresholds[{i}] = {v!r} is not a number")
        return cls(tags, tags_zh, np.array(thresholds, dtype=np.float32))
