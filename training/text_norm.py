"""Text normalisation shared by caption parsing and the label-system builder (pure Python).

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
"""

from __future__ import annotations

import re
import unicodedata

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


LEMMAS = _LemmaCache()


def normalize_tokens(text: str) -> list[str]:
    """Lemmatised tokens of a text, as the matcher sees them."""
    lem = LEMMAS
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
