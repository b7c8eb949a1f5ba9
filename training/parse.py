"""Caption -> tag ids: RAM's text semantic parsing against a label system (pure Python).

Text normalisation (NFKC, casefold, tokens, plural lemmas) lives in :mod:`.text_norm`, shared with the
label-system builder.

Documented choices:

* Matching is greedy left to right, longest tag first; a token belongs to at most one match.
  A key shared by several tags (after normalisation) fires all of them; a tag's own name beats a
  synonym, which beats a derived variant (plural of the last word, closed hyphen form).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Iterable, Iterator, Protocol, Sequence

from ram_edge.errors import LabelError, RamEdgeError

from .text_norm import normalize_tokens, phrase_key, phrase_variants


class TagVocabulary(Protocol):
    """What the parser reads from a label system (LabelSystem) or a label set (LabelSet: no synonyms)."""

    tags: list[str]


# ---------------------------------------------------------------------------- the parser

_LEVEL_NAME, _LEVEL_SYNONYM, _LEVEL_VARIANT = 0, 1, 2


class TagParser:
    """Finds the tags of a label system in captions (greedy, longest first, one use per token)."""

    def __init__(self, label_system: TagVocabulary | Sequence[str]) -> None:
        tags, synonyms = _tags_and_synonyms(label_system)
        self.tags: list[str] = tags
        best: dict[tuple[str, ...], tuple[int, set[int]]] = {}

        def add(key: tuple[str, ...], level: int, tag_id: int) -> None:
            cur = best.get(key)
            if cur is None or level < cur[0]:
                best[key] = (level, {tag_id})
            elif level == cur[0]:
                cur[1].add(tag_id)

        for i, name in enumerate(tags):
            key = phrase_key(name)
            if not key:
                raise LabelError(
                    f"tag {i} {name!r} has no letters or digits, so no caption can match it; rename or remove it"
                )
            add(key, _LEVEL_NAME, i)
            for v in phrase_variants(name):
                add(v, _LEVEL_VARIANT, i)
            for syn in synonyms[i]:
                skey = phrase_key(syn)
                if not skey:
                    raise LabelError(
                        f"synonym {syn!r} of tag {i} {name!r} has no letters or digits; remove it from the synonyms"
                    )
                add(skey, _LEVEL_SYNONYM, i)
                for v in phrase_variants(syn):
                    add(v, _LEVEL_VARIANT, i)
        self._keys: dict[tuple[str, ...], tuple[int, ...]] = {k: tuple(sorted(ids)) for k, (_, ids) in sorted(best.items())}
        # First token -> longest key starting with it: most caption tokens start no tag and are
        # skipped with one dict lookup.
        self._max_len: dict[str, int] = {}
        for key in self._keys:
            if len(key) > self._max_len.get(key[0], 0):
                self._max_len[key[0]] = len(key)
        self.max_tag_len = max(len(k) for k in self._keys)

    def __len__(self) -> int:
        """Number of tags."""
        return len(self.tags)

    def spans(self, caption: str) -> list[tuple[int, int, tuple[int, ...]]]:
        """(start, end, tag ids) of each match over the caption's tokens, left to right."""
        toks = normalize_tokens(caption)
        keys, max_len = self._keys, self._max_len
        n = len(toks)
        out = []
        i = 0
        while i < n:
            m = max_len.get(toks[i])
            if m is None:
                i += 1
                continue
            if m > n - i:
                m = n - i
            for length in range(m, 0, -1):
                ids = keys.get(tuple(toks[i : i + length])) if length > 1 else keys.get((toks[i],))
                if ids is not None:
                    out.append((i, i + length, ids))
                    i += length
                    break
            else:
                i += 1
        return out

    def parse(self, caption: str) -> list[int]:
        """Sorted unique tag ids mentioned in one caption."""
        toks = normalize_tokens(caption)
        keys, max_len = self._keys, self._max_len
        n = len(toks)
        found: set[int] = set()
        i = 0
        while i < n:
            m = max_len.get(toks[i])
            if m is None:
                i += 1
                continue
            if m == 1:
                ids = keys.get((toks[i],))
                if ids is not None:
                    found.update(ids)
                i += 1
                continue
            if m > n - i:
                m = n - i
            for length in range(m, 0, -1):
                ids = keys.get(tuple(toks[i : i + length]))
                if ids is not None:
                    found.update(ids)
                    i += length
                    break
            else:
                i += 1
        return sorted(found)

    def parse_many(self, captions: Iterable[str]) -> list[list[int]]:
        """`parse` of each caption, in order."""
        parse = self.parse
        return [parse(c) for c in captions]

    def tag_names(self, ids: Iterable[int]) -> list[str]:
        """Tag names of ids."""
        return [self.tags[i] for i in ids]


def _tags_and_synonyms(label_system) -> tuple[list[str], list[list[str]]]:
    """Accept a LabelSystem, a LabelSet (no synonyms) or a plain list of tag names."""
    if isinstance(label_system, (list, tuple)):
        tags = list(label_system)
        synonyms: list[list[str]] = [[] for _ in tags]
    else:
        tags = list(getattr(label_system, "tags", None) or [])
        synonyms = list(getattr(label_system, "synonyms", None) or [[] for _ in tags])
    if not tags:
        raise LabelError("the label system has no tags; load a label file with at least one tag")
    if len(synonyms) != len(tags):
        raise LabelError(f"{len(synonyms)} synonym lists for {len(tags)} tags; give one (possibly empty) list per tag")
    for i, name in enumerate(tags):
        if not isinstance(name, str):
            raise LabelError(f"tag {i} is {type(name).__name__} {name!r}, not a string")
    return tags, [list(s) for s in synonyms]


# ---------------------------------------------------------------------------- caption files


def iter_caption_records(path: str | Path, jsonl: bool | None = None) -> Iterator[tuple[int, dict]]:
    """(line number, record) for each caption line; record["caption"] is a string or list of strings.

    Text files give one record per line (blank lines included, so output lines align with input
    lines); JSONL files (``jsonl=True``, or None and a ``.jsonl`` suffix) one per non-blank line,
    with the caption under "caption" (or "captions") and other fields kept.
    """
    path = Path(path)
    if jsonl is None:
        jsonl = path.suffix.lower() == ".jsonl"
    from ram_edge.fileio import iter_text_lines

    for lineno, line in iter_text_lines(path, what="caption file", error=RamEdgeError):
        if not jsonl:
            yield lineno, {"caption": line}
        elif line.strip():
            yield lineno, _json_record(path, lineno, line)


def _json_record(path: Path, lineno: int, line: str) -> dict:
    """One JSONL caption record, validated."""
    where = f"{path}, line {lineno}"
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise RamEdgeError(f"{where}: not valid JSON ({exc.msg}); write one JSON object per line") from None
    if not isinstance(row, dict):
        raise RamEdgeError(f"{where}: expected a JSON object with a \"caption\" field, got {type(row).__name__}")
    key = "caption" if "caption" in row else "captions" if "captions" in row else None
    if key is None:
        raise RamEdgeError(f"{where}: no \"caption\" field; each line needs \"caption\": a string or a list of strings")
    caption = row.pop(key)
    if isinstance(caption, list):
        bad = [c for c in caption if not isinstance(c, str)]
        if bad:
            raise RamEdgeError(f"{where}: \"{key}\" list holds {type(bad[0]).__name__} {bad[0]!r}; captions must be strings")
    elif not isinstance(caption, str):
        raise RamEdgeError(f"{where}: \"{key}\" is {type(caption).__name__}; give a string or a list of strings")
    row["caption"] = caption
    return row


def iter_captions(path: str | Path, jsonl: bool | None = None) -> Iterator[str]:
    """Every caption string of a caption file (lists flattened)."""
    for _, row in iter_caption_records(path, jsonl):
        caption = row["caption"]
        if isinstance(caption, str):
            yield caption
        else:
            yield from caption


def _progress(iterable, desc: str):
    """tqdm on stderr, off when stderr is not a terminal."""
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, unit=" lines", file=sys.stderr, disable=None, leave=False)
