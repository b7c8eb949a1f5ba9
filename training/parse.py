"""Caption -> tag ids: RAM's text semantic parsing against a label system (pure Python).

Text normalisation (shared with the label-system builder):

* Unicode NFKC, then ``casefold()``; typographic apostrophes become ``'``.
* Tokens are runs of letters/digits. Hyphens and all other punctuation separate tokens, so
  "t-shirt", "T-Shirt" and "t shirt" all give ``("t", "shirt")``; a hyphenated tag also matches
  its closed form ("tshirt"). Inside a word an apostrophe is dropped and a final ``'s`` is removed
  ("rubik's" -> "rubik", "children's" -> "child", "don't" -> "dont").
* Plural nouns are reduced to the singular by rules plus tables (see :func:`lemmatize`), applied
  identically to captions, tag names and synonyms, so singular and plural forms meet.

Documented choices:

* ``glasses`` (and other plural-only nouns: shorts, jeans, pants, tights, scissors, clothes,
  news, goods, woods, ...) is kept as is: the single word "glasses" means eyewear and never fires
  the tag "glass". Multi-word tags ending in a singular ("wine glass") still match their plural
  ("wine glasses") through a derived plural variant of the tag.
* Words ending in -ss, -us, -is are never stripped (glass, bus, tennis); their plurals are
  handled (buses -> bus, classes -> class, irises -> iris).
* Matching is greedy left to right, longest tag first; a token belongs to at most one match.
  A key shared by several tags (after normalisation) fires all of them; a tag's own name beats a
  synonym, which beats a derived variant (plural of the last word, closed hyphen form).
"""

from __future__ import annotations

import json
import re
import sys
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

from ram_edge.errors import LabelError, RamEdgeError

if TYPE_CHECKING:  # pragma: no cover
    from ram_edge.labels import LabelSet

    from .label_system import LabelSystem

# ---------------------------------------------------------------------------- lemmatisation

# Plural -> singular for forms no suffix rule gets right.
IRREGULAR_PLURALS: dict[str, str] = {
    "people": "person", "men": "man", "women": "woman", "children": "child", "mice": "mouse",
    "geese": "goose", "feet": "foot", "teeth": "tooth", "oxen": "ox", "lice": "louse",
    "leaves": "leaf", "knives": "knife", "wives": "wife", "lives": "life", "wolves": "wolf",
    "calves": "calf", "halves": "half", "shelves": "shelf", "loaves": "loaf", "thieves": "thief",
    "elves": "elf", "scarves": "scarf", "hooves": "hoof", "selves": "self", "sheaves": "sheaf",
    "buses": "bus", "busses": "bus", "gases": "gas", "lenses": "lens", "quizzes": "quiz",
    "cacti": "cactus", "fungi": "fungus", "octopi": "octopus", "nuclei": "nucleus", "radii": "radius",
    "stimuli": "stimulus", "alumni": "alumnus", "criteria": "criterion", "phenomena": "phenomenon",
    "bacteria": "bacterium", "crises": "crisis", "analyses": "analysis", "oases": "oasis",
    "theses": "thesis", "diagnoses": "diagnosis", "axes": "axe", "menus": "menu", "emus": "emu",
    "gurus": "guru", "tutus": "tutu", "haikus": "haiku", "gnus": "gnu", "dice": "die",
}

# Irregular plurals that also end compounds (bookshelves, policewomen, minibuses, grandchildren).
# "mice" and "lives" are left out on purpose: pumice, olives.
_IRREGULAR_SUFFIXES: tuple[str, ...] = (
    "women", "men", "wives", "knives", "shelves", "leaves", "children", "teeth", "feet", "geese",
    "people", "wolves", "calves", "buses", "lenses",
)
# Singular words ending in "men" that the compound rule must not touch.
_MEN_SINGULARS = frozenset({
    "omen", "amen", "semen", "specimen", "abdomen", "stamen", "regimen", "acumen", "hymen", "yemen",
    "ramen", "rumen", "lumen", "albumen", "bitumen", "cyclamen", "dolmen",
})

# Never changed: plural-only nouns whose "singular" is another word (glass, short, new, jean, ...)
# and singulars ending in s that no rule protects.
PROTECTED: frozenset[str] = frozenset({
    "glasses", "eyeglasses", "spectacles", "shorts", "tights", "jeans", "pants", "trousers", "leggings",
    "pajamas", "pyjamas", "overalls", "clothes", "scissors", "pliers", "tongs", "shears", "goggles",
    "binoculars", "news", "goods", "woods", "series", "species", "means", "headquarters", "premises",
    "outskirts", "surroundings", "belongings", "thanks", "savings", "earnings", "remains", "barracks",
    "christmas", "atlas", "canvas", "texas", "alias", "bias", "pancreas", "chaos", "cosmos",
    "thermos", "rhinoceros", "asbestos", "kudos", "ethos", "pathos", "mumps", "measles", "diabetes",
    "herpes", "rabies", "billiards", "physics", "mathematics", "politics", "economics", "athletics",
    "gymnastics", "aerobics", "electronics", "ethics", "always", "perhaps", "whereas", "sometimes",
    "besides", "nowadays", "overseas", "lens", "gas", "bus", "yes",
})

# Singular nouns ending in "e" whose plural only adds "s" but that the -ies / -es / -oes rules
# would cut too far (movies -> movy, shoes -> sho, avalanches -> avalanch).
_E_SINGULARS: frozenset[str] = frozenset({
    "movie", "cookie", "brownie", "zombie", "hippie", "selfie", "pixie", "rookie", "calorie", "goalie",
    "hoodie", "smoothie", "budgie", "birdie", "beanie", "collie", "genie", "prairie", "pie", "tie",
    "lie", "necktie", "bowtie", "veggie", "doggie", "kiddie", "nightie", "onesie", "yuppie", "groupie",
    "cutie", "sweetie", "boogie", "auntie", "bookie", "magpie", "walkie", "talkie", "newbie", "foodie",
    "junkie", "sortie", "coterie", "menagerie", "reverie", "rotisserie", "lingerie", "eyrie",
    "shoe", "toe", "canoe", "hoe", "oboe", "floe", "foe", "sloe", "roe", "tiptoe", "mistletoe",
    "horseshoe", "snowshoe", "avalanche", "niche", "quiche", "cliche", "creche", "psyche",
    "cloche", "brioche", "ache", "headache", "toothache", "stomachache", "cache", "mustache",
    "moustache", "microfiche", "douche", "barouche",
    "house", "blouse", "horse", "mouse", "spouse", "cause", "pause", "fuse", "muse", "excuse",
    "warehouse", "greenhouse", "lighthouse", "courthouse", "dollhouse", "doghouse", "birdhouse",
    "treehouse", "farmhouse", "penthouse", "clubhouse", "henhouse", "outhouse", "seahorse",
})
# -us / -is singulars whose plural adds "es" (viruses, campuses, irises).
_US_IS_SINGULARS: frozenset[str] = frozenset({
    "bus", "virus", "campus", "cactus", "circus", "walrus", "octopus", "bonus", "genius", "chorus",
    "lotus", "hippopotamus", "platypus", "citrus", "census", "status", "syllabus", "thesaurus",
    "omnibus", "minibus", "abacus", "hibiscus", "stylus", "crocus", "discus", "sinus", "iris",
    "apparatus", "prospectus", "fetus", "foetus", "uterus", "plus", "surplus", "caucus", "mucus",
    "penis", "trellis", "pelvis", "chassis", "tennis", "nimbus", "cumulus", "torus",
})

_CONSONANTS = frozenset("bcdfghjklmnpqrstvwxz")


def _strip_plural(word: str) -> str:
    """The suffix rules; assumes `word` is already known not to be irregular or protected."""
    n = len(word)
    if n <= 3 or not word.endswith("s") or not word[-2].isalpha():
        # Short words (bus, gas, its, was) are almost never regular plurals worth stripping.
        return word
    if word.endswith(("ss", "us", "is")):
        return word
    if word.endswith("ies"):
        if word[:-1] in _E_SINGULARS or n <= 4:
            return word[:-1]
        return word[:-3] + "y"
    if word.endswith("es"):
        stem1 = word[:-1]  # drop "s"
        stem2 = word[:-2]  # drop "es"
        if stem1 in _E_SINGULARS or stem1.endswith(("shoe", "house")):
            return stem1
        if stem2.endswith(("ss", "sh", "ch", "x", "zz")):
            return stem1 if stem2.endswith("ach") and not stem2.endswith(("each", "oach")) else stem2
        if stem2.endswith(("us", "is")):
            return stem2 if stem2 in _US_IS_SINGULARS or stem2.endswith("bus") else stem1
        if stem2.endswith("o") and stem2[-2:-1] in _CONSONANTS:
            return stem2  # tomatoes, potatoes, heroes, goes, does
        return stem1
    return word[:-1]


def lemmatize(word: str) -> str:
    """Singular form of one normalised (casefolded) token by rules and tables; other words unchanged."""
    if word in PROTECTED:
        return word
    irregular = IRREGULAR_PLURALS.get(word)
    if irregular is not None:
        return irregular
    if len(word) > 4:
        for suffix in _IRREGULAR_SUFFIXES:
            if word.endswith(suffix):
                if suffix == "men" and word in _MEN_SINGULARS:
                    break
                return word[: -len(suffix)] + IRREGULAR_PLURALS[suffix]
    return _strip_plural(word)


_SINGULAR_TO_PLURAL = {s: p for p, s in IRREGULAR_PLURALS.items() if p not in ("busses",)}


def plural_forms(word: str) -> list[str]:
    """Likely plural surface forms of a singular token (used to derive tag variants)."""
    if word in _SINGULAR_TO_PLURAL:
        return [_SINGULAR_TO_PLURAL[word]]
    if word.endswith(("s", "x", "z", "ch", "sh")):
        return [word + "es"]
    if word.endswith("y") and word[-2:-1] in _CONSONANTS:
        return [word[:-1] + "ies"]
    if word.endswith("o") and word[-2:-1] in _CONSONANTS:
        return [word + "s", word + "es"]
    if word.endswith("fe"):
        return [word + "s", word[:-2] + "ves"]
    if word.endswith("f"):
        return [word + "s", word[:-1] + "ves"]
    return [word + "s"]


# ---------------------------------------------------------------------------- tokenisation

# Letters and digits (not "_"), with apostrophes allowed inside a word.
_TOKEN_RE = re.compile(r"[^\W_]+(?:'[^\W_]+)*")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "\u0060": "'", "\u00b4": "'"})


def normalize_text(text: str) -> str:
    """NFKC + casefold, typographic apostrophes made ASCII."""
    return unicodedata.normalize("NFKC", text).casefold().translate(_APOSTROPHES)


def tokenize(text: str) -> list[str]:
    """Surface tokens of a text: normalised, split on everything but letters/digits, 's dropped."""
    out = []
    for tok in _TOKEN_RE.findall(normalize_text(text)):
        if "'" in tok:
            if tok.endswith("'s"):
                tok = tok[:-2]
            tok = tok.replace("'", "")
        out.append(tok)
    return out


class _LemmaCache(dict):
    """token -> lemma, filled on first use; the caption vocabulary repeats, the rules are slow."""

    limit = 1 << 20

    def __missing__(self, token: str) -> str:
        if len(self) >= self.limit:
            # Keeps memory bounded over huge corpora; correctness does not depend on the cache.
            self.clear()
        lemma = self[token] = lemmatize(token)
        return lemma


_LEMMAS = _LemmaCache()


def normalize_tokens(text: str) -> list[str]:
    """Lemmatised tokens of a text, as the matcher sees them."""
    lem = _LEMMAS
    return [lem[t] for t in tokenize(text)]


def phrase_key(text: str) -> tuple[str, ...]:
    """The matcher key of a tag name or synonym (its lemmatised token tuple)."""
    return tuple(normalize_tokens(text))


def phrase_variants(text: str) -> list[tuple[str, ...]]:
    """Derived keys of a tag phrase: closed hyphen form and plural of the last word."""
    key = phrase_key(text)
    if not key:
        return []
    variants: list[tuple[str, ...]] = []
    chunks = normalize_text(text).split()
    if any("-" in c for c in chunks):
        closed = phrase_key(" ".join(c.replace("-", "") for c in chunks))
        if closed and closed != key:
            variants.append(closed)
    for base in [key] + variants[:1]:
        last = base[-1]
        if last in PROTECTED:
            continue  # already a plural-only word (glasses, shorts)
        for plural in plural_forms(last):
            lemma = lemmatize(plural)
            # A single word whose plural is a different word (glass/glasses, new/news) keeps only its singular.
            if lemma != last and not (len(base) == 1 and lemma in PROTECTED):
                variants.append(base[:-1] + (lemma,))
    out = []
    for v in variants:
        if v != key and v not in out:
            out.append(v)
    return out


# ---------------------------------------------------------------------------- the parser

_LEVEL_NAME, _LEVEL_SYNONYM, _LEVEL_VARIANT = 0, 1, 2


class TagParser:
    """Finds the tags of a label system in captions (greedy, longest first, one use per token)."""

    def __init__(self, label_system: "LabelSystem | LabelSet | Sequence[str]") -> None:
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
    try:
        fh = open(path, encoding="utf-8", newline=None)
    except FileNotFoundError:
        raise RamEdgeError(f"{path}: caption file not found; check the path") from None
    except IsADirectoryError:
        raise RamEdgeError(f"{path}: is a directory; pass a text file (one caption per line) or a JSONL file") from None
    except OSError as exc:
        raise RamEdgeError(f"{path}: cannot read ({exc.strerror or exc})") from None
    with fh:
        lineno = 0
        try:
            for lineno, line in enumerate(fh, start=1):
                line = line.rstrip("\n")
                if not jsonl:
                    yield lineno, {"caption": line}
                    continue
                if not line.strip():
                    continue
                yield lineno, _json_record(path, lineno, line)
        except UnicodeDecodeError as exc:
            raise RamEdgeError(
                f"{path}, line {lineno + 1}: not valid UTF-8 ({exc.reason}); save the caption file as UTF-8"
            ) from None


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
