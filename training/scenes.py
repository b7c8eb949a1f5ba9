"""Synthetic training data: emoji scenes with tags, boxes and noisy web-style captions.

Real RAM weights and datasets are not available to this project, so ram-edge trains its own
small tagger on generated images. Each scene is a background (solid colour, gradient, noise or
a simple texture) with one to a few emoji objects from a fixed vocabulary of everyday
categories, drawn with random size, position, rotation, flip and overlap. Tags are exactly the
categories drawn; captions are generated from templates and then damaged the way web alt-text
is (objects left out, synonyms, wrong objects, typos).

Determinism: scene ``index`` of stream ``seed`` is rendered from ``np.random.default_rng([seed,
index])`` alone, so it is the same whatever the order, worker count or process. The splits are
disjoint ranges of the index space (see :data:`SPLIT_OFFSETS`): ``train``, ``val`` and ``test``
draw from the *seen* categories, ``heldout`` only from the held-out ones
(:func:`split_categories`, 60 categories, seed 0, stratified by group). Hence
``generate(seed, i) == SceneStream(seed=seed)[i]`` == record ``i`` of
``ram-edge data scenes --split train --seed seed``.

The vocabulary depends on the installed emoji font (only glyphs it draws are kept) and on the
``emoji`` package (names and aliases); a written dataset pins it in ``categories.json``.

Needs: the Noto Color Emoji font (Debian: ``apt-get install fonts-noto-color-emoji``; or set
``RAM_EDGE_EMOJI_FONT``) and ``pip install emoji``.
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
import sys
import tarfile
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ram_edge.errors import ConfigError, RamEdgeError
from ram_edge.fileio import atomic_dir

FONT_ENV = "RAM_EDGE_EMOJI_FONT"
FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf",  # Debian, Ubuntu
    "/usr/share/fonts/noto/NotoColorEmoji.ttf",  # Arch
    "/usr/share/fonts/google-noto-color-emoji-fonts/NotoColorEmoji.ttf",  # Fedora
    "/usr/share/fonts/google-noto-emoji/NotoColorEmoji.ttf",
)
# CBDT bitmap fonts only have strikes at one size; Noto Color Emoji's is 109 px.
FONT_SIZE = 109

# Disjoint ranges of the per-scene index space: scene i of a split is generate(seed, offset + i).
SPLIT_OFFSETS = {"train": 0, "val": 1_000_000_000, "test": 2_000_000_000, "heldout": 3_000_000_000}
HELD_OUT = 60
HELD_OUT_SEED = 0


class SceneAssetError(RamEdgeError):
    """The emoji font or the `emoji` package needed to render scenes is missing."""


# ---------------------------------------------------------------- vocabulary

# Curated from Unicode's emoji-test.txt (15.0) groups: everyday things only, no people, faces,
# flags or symbols. Entry syntax: glyph[+glyph...][=name]. Extra glyphs are visual variants of
# one category (dog face and dog are both "dog"); "=name" overrides the name derived from the
# emoji's CLDR name ("_" for spaces), and the CLDR name then becomes an alias.
_TABLE: tuple[tuple[str, str], ...] = (
    ("mammal", "🐒+🐵=monkey 🦍 🐕+🐶=dog 🐺 🦊 🦝 🐈+🐱=cat 🦁 🐅+🐯=tiger 🐆 🐎+🐴=horse 🦄 🦓 🦌 "
               "🐄+🐮=cow 🐖+🐷=pig 🐑=sheep 🐐 🐪 🦒 🐘 🦏 🦛 🐁+🐭=mouse 🐇+🐰=rabbit 🦔 🦇 🐻 🐨 🐼 🦦 🦘"),
    ("bird", "🦃 🐔 🐓 🐤+🐥=chick 🐦 🐧 🕊 🦅 🦆 🦢 🦉 🦩 🦚 🦜"),
    ("sea life & reptile", "🐸 🐊 🐢 🦎 🐍 🐉+🐲=dragon 🦖=t-rex 🐋+🐳=whale 🐬 🐟 🐠 🐡 🦈 🐙 🐚=seashell "
                           "🦀 🦞 🦐 🦑"),
    ("bug", "🐌 🦋 🐛=caterpillar 🐜 🐝=bee 🐞=ladybug 🦗 🕷 🕸 🦂 🦟"),
    ("plant", "💐 🌸 🌹 🥀 🌺 🌻 🌷 🌱 🪴 🌲 🌳 🌴 🌵 🌾 🌿 🍀 🍁 🍂 🍄"),
    ("fruit & vegetable", "🍇 🍈 🍉 🍊 🍋 🍌 🍍 🥭 🍎 🍏 🍐 🍑 🍒 🍓 🫐 🥝 🍅 🥥 🥑 🍆 🥔 🥕 🌽=corn 🌶 🫑 🥒 "
                          "🥦 🧄 🧅 🥜"),
    ("food", "🍞 🥐 🥖=baguette 🥨 🥞 🧇 🧀=cheese 🍖 🍗 🥓 🍔 🍟 🍕 🌭 🥪 🌮 🌯 🥙 🥚 🍳=fried_egg 🥗 🍿 🍚 "
             "🍛 🍜=ramen 🍝 🍣 🥟"),
    ("dessert", "🍦 🍨 🍩 🍪 🎂 🍰 🧁 🥧 🍫 🍬 🍭 🍮 🍯"),
    ("drink & tableware", "🍼 🥛=glass_of_milk ☕=coffee 🫖 🍵=tea 🍾=champagne 🍷 🍸 🍹 🍺 🥤 🧋 🥢 "
                          "🍽=plate 🥄 🔪=knife"),
    ("place & building", "🌍+🌎+🌏=globe 🗺 🧭 ⛰ 🌋 🏖=beach 🏜 🏟 🪨 🏠+🏡=house 🏢 🏥 🏦 🏫 🏭 "
                         "🏰+🏯=castle 🗼 🗽 ⛪ 🕌 ⛲ ⛺ 🏙 🌉=bridge 🎡 🗿"),
    ("vehicle", "🚂 🚄+🚅=high-speed_train 🚇 🚊+🚋=tram 🚌+🚍=bus 🚑 🚒 🚓+🚔=police_car 🚕+🚖=taxi "
                "🚗+🚘=car 🚙 🚚+🚛=truck 🚜 🏎 🏍 🛵 🚲 🛴 🛹 ⛵ 🛶 🚤 🛳+🚢=ship ✈+🛩=airplane 🚁 🚀"),
    ("street & travel", "🚏 ⛽ 🛞 🚥+🚦=traffic_light 🛑 🚧=construction_barrier ⚓ 🛟 🧳"),
    ("sky & weather", "🌙 🌕+🌝=full_moon ☀+🌞=sun 🪐=planet ⭐+🌟=star ☁ ⛅+🌤+🌥=sun_behind_cloud 🌧 "
                      "🌩+⛈=thunderstorm 🌪 🌈 ☂+☔+🌂=umbrella ⚡=lightning ❄ ☃+⛄=snowman 🔥 💧 🌊=wave"),
    ("celebration & game", "🎃 🎄 🎆 🎈 🎉 🎀 🎁 🎟+🎫=ticket 🏆 🏅+🥇+🥈+🥉=medal 🎯 🪁 🎱=billiard_ball "
                           "🎮 🎲=dice 🧩 🧸 🖼 🎨 🧶"),
    ("sport", "⚽ ⚾ 🏀 🏐 🏈 🎾 🥏 🎳 🏓 🏸 🥊 ⛳ ⛸ 🎣 🎿 🛷 🏒"),
    ("clothing & accessory", "👓 🕶 👔 👕 👖 🧣 🧤 🧥 🧦 👗 👙 🩳 👚=blouse 👜 🎒 👞=shoe 👟 👠 👡=sandal "
                             "👢=boot 👑 👒=sun_hat 🎩 🧢=baseball_cap 💄 💍"),
    ("electronics & music", "📣 🔔 🎤 🎧=headphones 📻 🎷 🎸 🎹 🎺 🎻 🥁 📱 ☎ 🔋 💻 🖥 🖨 ⌨ 🖱 💿+📀=cd "
                            "🎥 📺 📷+📸=camera 🕯 💡 🔦 🔍+🔎=magnifying_glass"),
    ("office & paper", "📕+📗+📘+📙=book 📖 📚 📓 📄+📃=document 📰 💵+💴+💶+💷=banknote 🪙 💳 ✉+📨=envelope "
                       "📦 📫+📪+📬+📭=mailbox ✏ 🖊 🖌 💼 📁+📂=folder 📅+📆=calendar 📋 📌 📎 📐 ✂ 🗑 "
                       "🔒+🔓=padlock 🔑"),
    ("tool & science", "🔨 🪓 🗡 💣 🏹 🛡 🪚=saw 🔧 🪛 ⚙ 🧰 🧲 🪜 🧪 🔬 🔭 💉 💊 🩹 🩺"),
    ("household", "🚪 🪞 🪟 🛏 🛋=couch 🪑 🚽 🚿 🛁 🪒 🧹 🧺 🧻=toilet_paper 🪣 🧼 🪥 🧽 🧯 🛒 ⌛+⏳=hourglass "
                  "⌚ ⏰"),
)

# Everyday synonyms the emoji data lacks; used for caption noise and as label synonyms.
_EXTRA_ALIASES: dict[str, tuple[str, ...]] = {
    "t-rex": ("dinosaur", "tyrannosaurus"), "ladybug": ("ladybird",), "bee": ("bumblebee",),
    "couch": ("sofa",), "flying disc": ("frisbee",), "mobile phone": ("smartphone", "cell phone"),
    "running shoe": ("sneaker", "trainer"), "laptop": ("notebook computer",), "dice": ("die",),
    "musical keyboard": ("piano",), "cd": ("compact disc",), "soccer ball": ("football",),
    "rocket": ("spaceship",), "truck": ("lorry",), "cat": ("kitten",),
    "dog": ("puppy",), "fire engine": ("fire truck",), "airplane": ("plane",),
    "koala": ("koala bear",), "desktop computer": ("computer monitor",), "toilet paper": ("toilet roll",),
    "fried egg": ("egg in a pan",), "bus": ("coach",), "padlock": ("lock",), "banknote": ("money", "cash"),
}
_BAD_ALIASES = {
    "harambe", "flipper", "tada", "hocho", "moyai", "dart", "mega", "feet", "zap", "bulb", "mag", "art",
    "direct hit", "busstop", "fuelpump", "date", "school satchel", "cooking", "ewe", "shirt", "boat",
    "computer", "phone", "iphone", "medal sports", "birthday", "three button mouse", "bullettrain side",
}
_BAD_UNICODE_WORDS = ("symbol", "black ", "white ", "lower left", "mans ", "womans ")


@dataclass(frozen=True)
class Category:
    """One tag of the scene vocabulary: its name, primary glyph, synonyms, group and visual variants."""

    name: str
    char: str
    aliases: tuple[str, ...]
    group: str
    variants: tuple[str, ...] = ()  # every glyph drawn for this category, `char` first

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"name": self.name, "char": self.char, "aliases": list(self.aliases), "group": self.group,
                "variants": list(self.variants or (self.char,))}


def find_font() -> Path:
    """Path of the Noto Color Emoji font, or a SceneAssetError naming the fix."""
    env = os.environ.get(FONT_ENV)
    if env:
        if not Path(env).is_file():
            raise SceneAssetError(f"{FONT_ENV}={env} is not a file; point it at NotoColorEmoji.ttf")
        return Path(env)
    for candidate in FONT_CANDIDATES:
        if Path(candidate).is_file():
            return Path(candidate)
    raise SceneAssetError(
        "the Noto Color Emoji font is not installed (needed to render scenes): "
        f"apt-get install fonts-noto-color-emoji, or set {FONT_ENV} to NotoColorEmoji.ttf"
    )


def font_available() -> bool:
    """Whether the emoji font is installed."""
    try:
        find_font()
    except SceneAssetError:
        return False
    return True


@functools.lru_cache(maxsize=1)
def _font() -> ImageFont.FreeTypeFont:
    path = find_font()
    try:
        return ImageFont.truetype(str(path), FONT_SIZE)
    except OSError as exc:
        raise SceneAssetError(f"{path}: cannot load the emoji font at {FONT_SIZE} px ({exc})") from None


# Sprites per glyph: mip levels (each half the previous) in premultiplied RGBa, so that
# bilinear resampling does not pull the black of transparent pixels into the edges.
_SPRITES: dict[str, list[Image.Image] | None] = {}


def _sprite_levels(char: str) -> list[Image.Image] | None:
    """Mip levels of one glyph rendered once at the font's size; None when the font has no glyph."""
    if char in _SPRITES:
        return _SPRITES[char]
    pad = FONT_SIZE // 4
    canvas = Image.new("RGBA", (FONT_SIZE + 3 * pad, FONT_SIZE + 3 * pad), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((pad, pad), char, font=_font(), embedded_color=True)
    bbox = canvas.getbbox()  # a CBDT font draws nothing for a glyph it lacks
    levels = None
    if bbox is not None:
        base = canvas.crop(bbox).convert("RGBa")
        levels = [base]
        while min(levels[-1].size) >= 32:
            levels.append(levels[-1].reduce(2))
    _SPRITES[char] = levels
    return levels


def _emoji_data():
    try:
        import emoji
    except ImportError:
        raise SceneAssetError("the `emoji` package is needed for the scene vocabulary; install it with: pip install 'ram-edge[train]'") from None
    return emoji.EMOJI_DATA


def _plain(text: str) -> str:
    """Lower-case ASCII words: CLDR short names and aliases in tag form."""
    text = text.strip(":").replace("_", " ").replace("\u2019", "'").lower()
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = " ".join(text.split())
    for suffix in (" with face", " face"):
        if text.endswith(suffix) and len(text) > len(suffix):
            return text[: -len(suffix)]
    return text


def _glyph_names(char: str, data) -> tuple[str | None, list[str]]:
    """(CLDR name, [aliases]) of one glyph from the emoji package and the Unicode database."""
    info = data.get(char) or data.get(char + "\ufe0f") or {}
    cldr = _plain(info["en"]) if "en" in info else None
    aliases = [_plain(a) for a in info.get("alias", [])]
    uname = unicodedata.name(char, "").lower()
    if uname and not any(word in uname for word in _BAD_UNICODE_WORDS):
        aliases.append(_plain(uname))
    return cldr, aliases


def _alias_key(text: str) -> str:
    return text.replace("-", " ").replace("'", "")


@functools.lru_cache(maxsize=1)
def _categories() -> tuple[Category, ...]:
    data = _emoji_data()
    raw: list[tuple[str, str, list[str], list[str]]] = []  # (name, group, glyphs, aliases)
    for group, entries in _TABLE:
        for entry in entries.split():
            glyphs, _, override = entry.partition("=")
            glyphs = [g for g in glyphs.split("+") if _sprite_levels(g) is not None]
            if not glyphs:
                continue
            # Only the primary glyph names the category: a variant's names describe the variant
            # ("oncoming bus", "mailbox with no mail"), they are not synonyms.
            cldr, aliases = _glyph_names(glyphs[0], data)
            names = ([cldr] if cldr else []) + aliases
            name = override.replace("_", " ") if override else (names[0] if names else None)
            if not name:
                continue
            raw.append((name, group, glyphs, names))
    taken = {name for name, *_ in raw}
    counts: dict[str, int] = {}
    for name, _, _, names in raw:
        for alias in set(names) | set(_EXTRA_ALIASES.get(name, ())):
            counts[alias] = counts.get(alias, 0) + 1
    out = []
    for name, group, glyphs, names in raw:
        aliases: list[str] = []
        keys = {_alias_key(name)}
        for alias in [*names, *_EXTRA_ALIASES.get(name, ())]:
            # An alias shared by two categories, or naming another one, would make a caption ambiguous.
            if (alias in taken or counts.get(alias, 0) > 1 or alias in _BAD_ALIASES or _alias_key(alias) in keys
                    or any(c.isdigit() for c in alias) or len(alias) < 2 or "|" in alias):
                continue
            keys.add(_alias_key(alias))
            aliases.append(alias)
        out.append(Category(name, glyphs[0], tuple(aliases), group, tuple(glyphs)))
    duplicate = len(out) - len({c.name for c in out})
    if duplicate:  # pragma: no cover - a table edit gone wrong
        raise ConfigError(f"scene vocabulary has {duplicate} duplicate names")
    return tuple(out)


def categories() -> list[Category]:
    """The scene vocabulary: every curated category whose glyph the installed font draws, in table order."""
    return list(_categories())


def split_categories(cats: Sequence[Category], held_out: int = HELD_OUT, seed: int = HELD_OUT_SEED) -> tuple[list[Category], list[Category]]:
    """(seen, held_out): a deterministic held-out set, stratified across groups, both in input order."""
    if not 0 <= held_out <= len(cats):
        raise ConfigError(f"held_out={held_out} must be between 0 and the {len(cats)} categories")
    groups: dict[str, list[Category]] = {}
    for c in cats:
        groups.setdefault(c.group, []).append(c)
    names = sorted(groups)
    # Largest-remainder quotas keep each group's share of the held-out set proportional.
    exact = [held_out * len(groups[g]) / len(cats) for g in names] if cats else []
    quota = [int(x) for x in exact]
    for i in sorted(range(len(names)), key=lambda i: (-(exact[i] - quota[i]), names[i]))[: held_out - sum(quota)]:
        quota[i] += 1
    rng = np.random.default_rng([seed, 0x5CE9E])
    chosen: set[str] = set()
    for g, q in zip(names, quota):
        members = sorted(c.name for c in groups[g])
        chosen.update(members[i] for i in rng.permutation(len(members))[:q])
    return [c for c in cats if c.name not in chosen], [c for c in cats if c.name in chosen]


def split_pool(split: str, held_out: int = HELD_OUT, held_out_seed: int = HELD_OUT_SEED) -> list[Category]:
    """The categories a split draws from: held-out ones for 'heldout', the seen ones otherwise."""
    if split not in SPLIT_OFFSETS:
        raise ConfigError(f"split {split!r} is unknown; valid: {', '.join(SPLIT_OFFSETS)}")
    return list(_split_pool(split == "heldout", held_out, held_out_seed))


@functools.lru_cache(maxsize=8)
def _split_pool(heldout: bool, held_out: int, held_out_seed: int) -> tuple[Category, ...]:
    seen, held = split_categories(_categories(), held_out, held_out_seed)
    return tuple(held if heldout else seen)


# ---------------------------------------------------------------- backgrounds

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (205, 40, 40), "orange": (240, 140, 30), "yellow": (245, 215, 60), "green": (60, 160, 70),
    "dark green": (25, 85, 45), "blue": (45, 95, 210), "light blue": (150, 200, 240), "navy": (25, 35, 95),
    "teal": (30, 140, 140), "purple": (130, 65, 170), "pink": (240, 150, 190), "brown": (125, 80, 45),
    "beige": (225, 210, 175), "white": (246, 246, 246), "gray": (128, 128, 128), "black": (22, 22, 22),
}
_COLOUR_NAMES = tuple(COLOURS)
_BG_KINDS = ("solid", "linear", "radial", "noise", "stripes", "checker", "dots")
_BG_WEIGHTS = np.array([0.22, 0.2, 0.13, 0.15, 0.12, 0.09, 0.09])


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    return xs, ys


def _colour(rng: np.random.Generator, exclude: str | None = None) -> tuple[str, np.ndarray]:
    while True:
        name = _COLOUR_NAMES[int(rng.integers(len(_COLOUR_NAMES)))]
        if name != exclude:
            break
    # Jitter so that a colour name covers a range of shades, not one RGB value.
    rgb = np.clip(np.array(COLOURS[name], np.float32) + rng.uniform(-18, 18, 3), 0, 255)
    return name, rgb.astype(np.float32)


def _two_tone(mask: np.ndarray, c1: np.ndarray, c2: np.ndarray) -> Image.Image:
    return Image.fromarray(np.stack([c1, c2]).astype(np.uint8)[mask.astype(np.uint8)])


def _blend(t: np.ndarray, c1: np.ndarray, c2: np.ndarray) -> Image.Image:
    """c1 -> c2 along t in [0, 1]; a 256-entry lookup keeps the per-pixel work in 2-D uint8."""
    lut = (c1[None] + (c2 - c1)[None] * np.linspace(0, 1, 256, dtype=np.float32)[:, None]).astype(np.uint8)
    return Image.fromarray(lut[(t * 255).astype(np.uint8)])


def render_background(rng: np.random.Generator, size: int) -> tuple[Image.Image, str]:
    """(RGB image, phrase such as 'blue and white striped') for a random background."""
    kind = _BG_KINDS[int(rng.choice(len(_BG_KINDS), p=_BG_WEIGHTS))]
    n1, c1 = _colour(rng)
    n2, c2 = _colour(rng, exclude=n1)
    xs, ys = _grid(size)
    if kind == "solid":
        return Image.new("RGB", (size, size), tuple(int(v) for v in c1)), n1
    if kind == "linear":
        angle = rng.uniform(0, 2 * math.pi)
        t = xs * math.cos(angle) + ys * math.sin(angle)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        return _blend(t, c1, c2), f"{n1} and {n2} gradient"
    if kind == "radial":
        cx, cy = rng.uniform(0.2, 0.8, 2) * size
        t = np.sqrt((xs - cx) ** 2 + (ys - cy) ** 2) / (size * rng.uniform(0.5, 1.0))
        t = np.minimum(t, 1.0)
        return _blend(t, c1, c2), f"{n1} and {n2} radial gradient"
    if kind == "noise":
        # Blotches from upsampled coarse noise plus fine grain; uniform ints are far cheaper than normals.
        coarse = Image.fromarray(rng.integers(0, 256, (max(2, size // 10),) * 2 + (3,), dtype=np.uint8)).resize((size, size), Image.BILINEAR)
        amp = rng.uniform(20, 60)
        img = c1 + (np.asarray(coarse, np.float32) - 128) * (amp / 128) + rng.integers(-12, 13, (size, size, 1)).astype(np.float32)
        word = ("grainy", "noisy", "speckled", "mottled")[int(rng.integers(4))]
        return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)), f"{word} {n1}"
    if kind == "stripes":
        angle = rng.uniform(0, math.pi)
        half = rng.uniform(4, 20) * size / 160
        t = xs * math.cos(angle) + ys * math.sin(angle)
        return _two_tone((np.floor(t / half) % 2).astype(bool), c1, c2), f"{n1} and {n2} striped"
    if kind == "checker":
        cell = rng.uniform(8, 40) * size / 160
        return _two_tone(((np.floor(xs / cell) + np.floor(ys / cell)) % 2).astype(bool), c1, c2), f"{n1} and {n2} checkered"
    period = rng.uniform(12, 40) * size / 160
    radius = period * rng.uniform(0.15, 0.4)
    dx = (xs % period) - period / 2
    dy = ((ys + (xs // period) % 2 * period / 2) % period) - period / 2  # staggered rows
    return _two_tone(dx * dx + dy * dy < radius * radius, c1, c2), f"{n2} polka-dot {n1}" if rng.random() < 0.5 else f"{n1} and {n2} dotted"


def _distractors(img: Image.Image, rng: np.random.Generator) -> None:
    # Untagged shapes teach the model that not every blob is an object.
    size = img.size[0]
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(1, 4))):
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        w, h = rng.uniform(0.05, 0.25, 2) * size
        x, y = rng.uniform(0, size - w), rng.uniform(0, size - h)
        shape = int(rng.integers(3))
        if shape == 0:
            draw.ellipse((x, y, x + w, y + h), fill=colour)
        elif shape == 1:
            draw.rectangle((x, y, x + w, y + h), fill=colour)
        else:
            draw.line((x, y, x + w, y + h), fill=colour, width=max(1, int(rng.integers(1, 5) * size / 160)))


# ---------------------------------------------------------------- objects


def _transform_sprite(char: str, longest: float, angle: float, flip: bool) -> Image.Image:
    """The glyph scaled so its longest side is `longest` px, rotated by `angle` degrees, cropped tight (RGBA)."""
    levels = _sprite_levels(char)
    if levels is None:
        raise SceneAssetError(f"the emoji font has no glyph for {char!r}")
    # Downscale from the smallest mip level still at least as large: bilinear stays alias-free.
    level = levels[0]
    for candidate in levels[1:]:
        if max(candidate.size) >= longest:
            level = candidate
    w, h = level.size
    scale = longest / max(w, h)
    rad = math.radians(angle)
    cos, sin = math.cos(rad), math.sin(rad)
    ow = int(math.ceil(abs(w * scale * cos) + abs(h * scale * sin))) + 2
    oh = int(math.ceil(abs(w * scale * sin) + abs(h * scale * cos))) + 2
    sx = -scale if flip else scale
    # Output pixel -> input pixel: inverse of (scale, flip, rotate) about the centres.
    a, b = cos / sx, sin / sx
    d, e = -sin / scale, cos / scale
    cx, cy = ow / 2, oh / 2
    data = (a, b, w / 2 - a * cx - b * cy, d, e, h / 2 - d * cx - e * cy)
    out = level.transform((ow, oh), Image.AFFINE, data, Image.BILINEAR).convert("RGBA")
    bbox = out.getbbox()
    return out.crop(bbox) if bbox else out


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> int:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0


def _area(box: tuple[int, int, int, int]) -> int:
    return (box[2] - box[0]) * (box[3] - box[1])


# ---------------------------------------------------------------- captions

_NUMBERS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine", 10: "ten"}
_IRREGULAR = {
    "mouse": "mice", "sheep": "sheep", "fish": "fish", "deer": "deer", "goose": "geese", "knife": "knives",
    "leaf": "leaves", "wolf": "wolves", "moose": "moose", "shrimp": "shrimp", "octopus": "octopuses",
    "cactus": "cacti", "bus": "buses", "hippopotamus": "hippos", "rhinoceros": "rhinos", "tomato": "tomatoes",
    "potato": "potatoes", "mango": "mangoes", "volcano": "volcanoes", "dice": "dice", "t-rex": "t-rexes",
    "shelf": "shelves", "scarf": "scarves", "calf": "calves", "bison": "bison", "cd": "cds",
}
# Mass nouns and names that are already plural take "some" or no article and are never counted.
_MASS = {
    "bread", "cheese", "bacon", "popcorn", "sushi", "spaghetti", "ramen", "coffee", "tea", "champagne",
    "fire", "corn", "toilet paper", "lightning", "cooked rice", "curry rice", "green salad", "broccoli",
    "garlic", "hot pepper", "sheaf of rice", "herb", "glass of milk", "candy", "custard", "meat on bone",
}
# Sports named by the game rather than the object: always bare ("tennis", never "a tennis").
_ACTIVITIES = {"bowling", "tennis", "ice hockey", "badminton", "ping pong", "field hockey", "lacrosse", "cricket game"}
_SINGULAR_S = ("ss", "us", "is", "os")
_CONNECTORS = (" of ", " with ", " and ", " behind ", " on ", " in ", " at ")


def is_plural_form(name: str) -> bool:
    """Whether a tag name is already plural ('grapes', 'french fries', 'dice')."""
    last = name.split()[-1]
    return name == "dice" or (last.endswith("s") and not last.endswith(_SINGULAR_S) and name not in _IRREGULAR)


def is_countable(name: str) -> bool:
    """Whether a scene may show several of this category with a count in the caption."""
    return not (name in _MASS or name in _ACTIVITIES or is_plural_form(name) or any(c in f" {name} " for c in _CONNECTORS))


def pluralize(name: str) -> str:
    """English plural of a tag name (its last word)."""
    words = name.split()
    last = words[-1]
    if last in _IRREGULAR:
        plural = _IRREGULAR[last]
    elif last.endswith(("s", "x", "z", "ch", "sh")):
        plural = last + "es"
    elif last.endswith("y") and len(last) > 1 and last[-2] not in "aeiou":
        plural = last[:-1] + "ies"
    else:
        plural = last + "s"
    return " ".join(words[:-1] + [plural])


def with_article(phrase: str) -> str:
    """'a dog', 'an apple', 'a unicorn'."""
    lower = phrase.lower()
    vowel = lower[:1] in "aeiou" and not lower.startswith(("uni", "use", "eu", "one"))
    if lower.startswith(("hour", "honest")):
        vowel = True
    return f"{'an' if vowel else 'a'} {phrase}"


def object_phrase(word: str, count: int, rng: np.random.Generator) -> str:
    """'a cat', 'two cats', 'some grapes', 'several apples'."""
    if word in _ACTIVITIES:
        return word
    if is_plural_form(word) or word in _MASS:
        return word if rng.random() < 0.5 else f"some {word}"
    if count <= 1:
        return with_article(word)
    r = rng.random()
    if count > 2 and r < 0.15:
        number = "several"
    elif r < 0.25:
        number = str(count)
    else:
        number = _NUMBERS.get(count, str(count))
    return f"{number} {pluralize(word)}"


def join_list(items: Sequence[str], rng: np.random.Generator) -> str:
    """'a, b and c' (sometimes with an Oxford comma, sometimes with '&')."""
    if len(items) == 1:
        return items[0]
    conj = " & " if rng.random() < 0.1 else (", and " if len(items) > 2 and rng.random() < 0.3 else " and ")
    return ", ".join(items[:-1]) + conj + items[-1]


@dataclass(frozen=True)
class CaptionConfig:
    """How many captions each scene gets and how noisy they are (rates are probabilities)."""

    n_captions: int = 2
    missing: float = 0.15  # per mentioned object: leave it out (at least one object stays)
    synonym: float = 0.2  # per mentioned object: use an alias instead of the tag name
    wrong: float = 0.05  # per caption: mention one object that is not in the image
    typo: float = 0.0  # per caption: misspell one word
    background: float = 0.5  # per caption: describe the background too

    def __post_init__(self) -> None:
        for name in ("missing", "synonym", "wrong", "typo", "background"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"caption rate {name}={getattr(self, name)} must be in [0, 1]")
        if self.n_captions < 1:
            raise ConfigError(f"n_captions={self.n_captions} must be at least 1")


_BG_TEMPLATES = (
    "a photo of {objs} on {a_bg} background", "{objs} on {a_bg} background",
    "an illustration of {objs} against {a_bg} backdrop", "{objs} in front of {a_bg} background",
    "{a_bg} background with {objs}", "stock image: {objs}, {bg} background",
)
_TEMPLATES = (
    "a photo of {objs}", "there {be} {objs}", "a picture showing {objs}", "an emoji of {objs}",
    "a drawing of {objs}", "{objs}", "close-up of {objs}", "this image contains {objs}",
    "a cartoon of {objs}", "clipart of {objs}",
)
_PAIR_TEMPLATES = ("{a} next to {b}", "there {be} {a} next to {b}", "{a} beside {b}", "{a} {rel} {b}", "a photo of {a} {rel} {b}")


def _typo(text: str, rng: np.random.Generator) -> str:
    words = text.split(" ")
    candidates = [i for i, w in enumerate(words) if len(w) >= 4 and w.isalpha()]
    if not candidates:
        return text
    i = candidates[int(rng.integers(len(candidates)))]
    w = words[i]
    j = int(rng.integers(1, len(w) - 1))
    op = int(rng.integers(3))
    words[i] = (w[:j] + w[j + 1] + w[j] + w[j + 2:]) if op == 0 else (w[:j] + w[j + 1:]) if op == 1 else (w[:j] + w[j] + w[j:])
    return " ".join(words)


def _relation(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> str:
    dx = (b[0] + b[2]) / 2 - (a[0] + a[2]) / 2
    dy = (b[1] + b[3]) / 2 - (a[1] + a[3]) / 2
    if abs(dx) >= abs(dy):
        return "to the left of" if dx > 0 else "to the right of"
    return "above" if dy > 0 else "below"


def make_captions(rng: np.random.Generator, objects: Sequence[tuple[Category, int, tuple[int, int, int, int]]],
                  background: str, pool: Sequence[Category], config: CaptionConfig) -> list[str]:
    """Noisy web-style captions for (category, count, first box) triples and a background phrase."""
    present = {c.name for c, _, _ in objects}
    out: list[str] = []
    for _ in range(config.n_captions):
        # A few redraws keep a scene's captions distinct when the noise allows it.
        for _attempt in range(3):
            caption = _one_caption(rng, objects, background, pool, config, present)
            if caption not in out:
                break
        out.append(caption)
    return out


def _one_caption(rng: np.random.Generator, objects, background: str, pool: Sequence[Category], config: CaptionConfig,
                 present: set[str]) -> str:
    order = [objects[i] for i in rng.permutation(len(objects))]
    kept = [o for o in order if rng.random() >= config.missing] or [order[int(rng.integers(len(order)))]]
    mentions: list[tuple[str, int, tuple[int, int, int, int] | None]] = []
    for cat, count, box in kept:
        word = cat.name
        if cat.aliases and rng.random() < config.synonym:
            word = cat.aliases[int(rng.integers(len(cat.aliases)))]
        mentions.append((word, count, box))
    if rng.random() < config.wrong:
        others = [c for c in pool if c.name not in present]
        if others:
            wrong = others[int(rng.integers(len(others)))]
            mentions.insert(int(rng.integers(len(mentions) + 1)), (wrong.name, 1, None))
    phrases = [object_phrase(w, n, rng) for w, n, _ in mentions]
    first_plural = mentions[0][1] > 1 or is_plural_form(mentions[0][0])
    be = "are" if first_plural else "is"  # agrees with the first item, as speech does
    style = rng.random()
    if style < 0.06:
        caption = " ".join("#" + w.replace(" ", "").replace("-", "") for w, _, _ in mentions)
    elif style < 0.12:
        caption = ", ".join(w for w, _, _ in mentions)
    elif len(mentions) == 2 and mentions[0][2] and mentions[1][2] and style < 0.4:
        template = _PAIR_TEMPLATES[int(rng.integers(len(_PAIR_TEMPLATES)))]
        caption = template.format(a=phrases[0], b=phrases[1], be=be, rel=_relation(mentions[0][2], mentions[1][2]))
    elif rng.random() < config.background:
        a_bg = with_article(background).split(" ", 1)[0]
        caption = _BG_TEMPLATES[int(rng.integers(len(_BG_TEMPLATES)))].format(
            objs=join_list(phrases, rng), bg=background, a_bg=f"{a_bg} {background}")
    else:
        caption = _TEMPLATES[int(rng.integers(len(_TEMPLATES)))].format(objs=join_list(phrases, rng), be=be)
    if rng.random() < config.typo:
        caption = _typo(caption, rng)
    r = rng.random()
    if r < 0.3:
        caption = caption[:1].upper() + caption[1:]
    if r > 0.8:
        caption += "." if r < 0.95 else "!"
    return caption


# ---------------------------------------------------------------- scenes


@dataclass
class EncodedScene:
    """A scene whose image is already encoded (what writers and worker processes pass around)."""

    image: bytes
    ext: str  # "png" or "jpg"
    record: dict[str, Any]


@dataclass
class Scene:
    """A rendered scene: RGB image, tags (unique, in drawing order), one box per drawn object, captions."""

    image: Image.Image
    tags: list[str]
    boxes: list[tuple[int, int, int, int]]  # pixel (x0, y0, x1, y1), x1/y1 exclusive
    captions: list[str]
    box_tags: list[str] = field(default_factory=list)  # the tag of each box
    background: str = ""
    index: int | None = None
    seed: int | None = None

    def record(self) -> dict[str, Any]:
        """The JSON fields written beside the image."""
        rec: dict[str, Any] = {"captions": list(self.captions), "tags": list(self.tags),
                               "boxes": [list(b) for b in self.boxes], "box_tags": list(self.box_tags),
                               "background": self.background}
        if self.seed is not None:
            rec["seed"] = self.seed
        if self.index is not None:
            rec["index"] = self.index
        return rec

    def encode(self, image_format: str = "png") -> EncodedScene:
        """PNG or JPEG (quality 95) bytes plus the record."""
        buf = io.BytesIO()
        if image_format == "png":
            self.image.save(buf, "PNG")
        elif image_format in ("jpg", "jpeg"):
            image_format = "jpg"
            self.image.save(buf, "JPEG", quality=95)
        else:
            raise ConfigError(f"image format {image_format!r} is unknown; valid: png, jpg")
        return EncodedScene(buf.getvalue(), image_format, self.record())


def render_scene(rng: np.random.Generator, categories: Sequence[Category], size: int = 160, min_objects: int = 1,
                 max_objects: int = 5, captions: CaptionConfig | None = None, min_frac: float = 0.18,
                 max_frac: float = 0.70, max_rotation: float = 30.0, max_occlusion: float = 0.4) -> Scene:
    """Render one scene: background, objects (size min_frac..max_frac of the side), tags, boxes and captions."""
    if not categories:
        raise ConfigError("render_scene needs at least one category")
    if not 1 <= min_objects <= max_objects:
        raise ConfigError(f"need 1 <= min_objects ({min_objects}) <= max_objects ({max_objects})")
    if size < 16:
        raise ConfigError(f"scene size {size} is too small; use at least 16 px")
    captions = captions or CaptionConfig()
    image, bg_phrase = render_background(rng, size)
    if rng.random() < 0.3:
        _distractors(image, rng)

    n = int(rng.integers(min_objects, max_objects + 1))
    picks: list[Category] = []
    chosen: set[str] = set()
    for _ in range(n):
        repeatable = [c for c in picks if is_countable(c.name)]
        if repeatable and rng.random() < 0.3:
            picks.append(repeatable[int(rng.integers(len(repeatable)))])
            continue
        cat = categories[int(rng.integers(len(categories)))]
        for _ in range(8):
            if cat.name not in chosen or len(chosen) >= len(categories):
                break
            cat = categories[int(rng.integers(len(categories)))]
        picks.append(cat)
        chosen.add(cat.name)

    # Crowded scenes get smaller objects so that everything stays visible.
    hi = min(max_frac, max(min_frac, 1.0 / math.sqrt(n)))
    base_frac: dict[str, float] = {}
    boxes: list[tuple[int, int, int, int]] = []
    box_tags: list[str] = []
    first_box: dict[str, tuple[int, int, int, int]] = {}
    counts: dict[str, int] = {}
    for cat in picks:
        if cat.name not in base_frac:
            base_frac[cat.name] = math.exp(rng.uniform(math.log(min_frac), math.log(hi)))
        frac = min(hi, max(min_frac, base_frac[cat.name] * rng.uniform(0.85, 1.15)))
        glyph = cat.variants[int(rng.integers(len(cat.variants)))] if len(cat.variants) > 1 else cat.char
        angle = rng.uniform(-max_rotation, max_rotation) if rng.random() < 0.7 else 0.0
        flip = bool(rng.random() < 0.3)
        sprite = _transform_sprite(glyph, frac * size, angle, flip)
        placed = None
        for attempt in range(12):
            if attempt and attempt % 4 == 0:  # no room: shrink and retry
                frac = max(min_frac * 0.6, frac * 0.8)
                sprite = _transform_sprite(glyph, frac * size, angle, flip)
            w, h = sprite.size
            x = int(rng.integers(0, max(1, size - w + 1)))
            y = int(rng.integers(0, max(1, size - h + 1)))
            box = (x, y, min(size, x + w), min(size, y + h))
            if all(_overlap(box, old) <= max_occlusion * _area(old) for old in boxes):
                placed = box
                break
        if placed is None:
            continue  # tags list only what is visible
        image.paste(sprite, placed[:2], sprite)
        boxes.append(placed)
        box_tags.append(cat.name)
        first_box.setdefault(cat.name, placed)
        counts[cat.name] = counts.get(cat.name, 0) + 1

    by_name = {c.name: c for c in picks}
    objects = [(by_name[t], counts[t], first_box[t]) for t in first_box]
    caps = make_captions(rng, objects, bg_phrase, categories, captions) if objects else ["an empty background"]
    return Scene(image, list(first_box), boxes, caps, box_tags, bg_phrase)


def _caption_config(captions: CaptionConfig | dict[str, Any] | None) -> CaptionConfig:
    if captions is None:
        return CaptionConfig()
    if isinstance(captions, CaptionConfig):
        return captions
    try:
        return CaptionConfig(**captions)
    except TypeError as exc:
        raise ConfigError(f"caption options {captions}: {exc}; valid: {', '.join(asdict(CaptionConfig()))}") from None


def generate(seed: int, index: int, categories: Sequence[Category] | None = None, **render_options: Any) -> Scene:
    """Scene `index` of stream `seed` (the seen categories unless given); same inputs, same scene."""
    if seed < 0 or index < 0:
        raise ConfigError(f"seed ({seed}) and index ({index}) must be non-negative")
    if categories is None:
        categories = _split_pool(False, HELD_OUT, HELD_OUT_SEED)
    render_options["captions"] = _caption_config(render_options.get("captions"))
    scene = render_scene(np.random.default_rng([seed, index]), categories, **render_options)
    scene.index, scene.seed = index, seed
    return scene


class SceneStream:
    """Scenes by index for on-the-fly training data (map-style: stream[i]; iterable; torch-free)."""

    def __init__(self, seed: int = 0, split: str = "train", size: int = 160, min_objects: int = 1, max_objects: int = 5,
                 categories: Sequence[Category | str] | None = None, held_out: int = HELD_OUT,
                 held_out_seed: int = HELD_OUT_SEED, captions: CaptionConfig | dict[str, Any] | None = None,
                 length: int | None = None, **render_options: Any) -> None:
        if split not in SPLIT_OFFSETS:
            raise ConfigError(f"split {split!r} is unknown; valid: {', '.join(SPLIT_OFFSETS)}")
        if categories is None:
            cats = split_pool(split, held_out, held_out_seed)
        else:
            # Names (from a YAML config) are resolved against the vocabulary.
            known = {c.name: c for c in _categories()}
            cats = []
            for c in categories:
                if isinstance(c, Category):
                    cats.append(c)
                elif c in known:
                    cats.append(known[c])
                else:
                    raise ConfigError(f"scene category {c!r} is not in the vocabulary (see `ram-edge data scenes` categories.json)")
        self.categories: list[Category] = list(cats)
        self.seed, self.split, self.offset, self.length = int(seed), split, SPLIT_OFFSETS[split], length
        self.options = {"size": size, "min_objects": min_objects, "max_objects": max_objects,
                        "captions": _caption_config(captions), **render_options}

    @property
    def tags(self) -> list[str]:
        """Names of the categories this stream draws from."""
        return [c.name for c in self.categories]

    def __getitem__(self, index: int) -> Scene:
        if index < 0 or (self.length is not None and index >= self.length):
            raise IndexError(index)
        return generate(self.seed, self.offset + index, self.categories, **self.options)

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError("this SceneStream is unbounded; pass length= to give it a length")
        return self.length

    def __iter__(self) -> Iterator[Scene]:
        index = 0
        while self.length is None or index < self.length:
            yield self[index]
            index += 1


# ---------------------------------------------------------------- writers


def _progress(total: int | None, progress: bool, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, disable=None if progress else True, dynamic_ncols=True)


def _encoded(item: Scene | EncodedScene, image_format: str) -> EncodedScene:
    return item if isinstance(item, EncodedScene) else item.encode(image_format)


def _key_width(total: int | None) -> int:
    return max(6, len(str(max(0, (total or 0) - 1))))


def write_jsonl(out_dir: str | Path, scenes: Iterable[Scene | EncodedScene], *, total: int | None = None,
                image_format: str = "png", overwrite: bool = False, extra_files: dict[str, bytes] | None = None,
                progress: bool = True) -> Path:
    """Folder + JSONL: images/000000.png and annotations.jsonl, made in a temporary folder then renamed."""
    out_dir = Path(out_dir)
    width = _key_width(total)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp, _progress(total, progress, "scenes") as bar:
        (tmp / "images").mkdir()
        with open(tmp / "annotations.jsonl", "w", encoding="utf-8") as ann:
            for i, item in enumerate(scenes):
                enc = _encoded(item, image_format)
                rel = f"images/{i:0{width}d}.{enc.ext}"
                (tmp / rel).write_bytes(enc.image)
                ann.write(json.dumps({"image": rel, **enc.record}, ensure_ascii=False) + "\n")
                bar.update(1)
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)
    return out_dir


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0  # fixed metadata: same scenes, same bytes
    tar.addfile(info, io.BytesIO(data))


def write_wds(out_dir: str | Path, scenes: Iterable[Scene | EncodedScene], *, total: int | None = None,
              shard_size: int = 1000, image_format: str = "png", overwrite: bool = False,
              extra_files: dict[str, bytes] | None = None, progress: bool = True) -> list[Path]:
    """WebDataset shards shard-000000.tar with 000000.png + 000000.json, made in a temporary folder then renamed."""
    if shard_size < 1:
        raise ConfigError(f"shard size {shard_size} must be at least 1")
    out_dir = Path(out_dir)
    width = _key_width(total)
    names: list[str] = []
    with atomic_dir(out_dir, overwrite=overwrite) as tmp, _progress(total, progress, "scenes") as bar:
        tar = None
        try:
            for i, item in enumerate(scenes):
                if i % shard_size == 0:
                    if tar is not None:
                        tar.close()
                    names.append(f"shard-{i // shard_size:06d}.tar")
                    tar = tarfile.open(tmp / names[-1], "w", format=tarfile.USTAR_FORMAT)
                enc = _encoded(item, image_format)
                key = f"{i:0{width}d}"
                _tar_add(tar, f"{key}.{enc.ext}", enc.image)
                _tar_add(tar, f"{key}.json", json.dumps({"image": f"{key}.{enc.ext}", **enc.record}, ensure_ascii=False).encode("utf-8"))
                bar.update(1)
        finally:
            if tar is not None:
                tar.close()
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)
    return [out_dir / n for n in names]


def iter_jsonl(path: str | Path) -> Iterator[tuple[dict[str, Any], Image.Image]]:
    """(record, RGB image) pairs of a folder written by write_jsonl."""
    path = Path(path)
    with open(path / "annotations.jsonl", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                rec = json.loads(line)
                with Image.open(path / rec["image"]) as img:
                    yield rec, img.convert("RGB")


def iter_wds(path: str | Path) -> Iterator[tuple[dict[str, Any], Image.Image]]:
    """(record, RGB image) pairs of the shards written by write_wds, in order."""
    for shard in sorted(Path(path).glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            members = {m.name: m for m in tar.getmembers()}
            for name in sorted(n for n in members if n.endswith(".json")):
                rec = json.loads(tar.extractfile(members[name]).read())
                with Image.open(io.BytesIO(tar.extractfile(members[rec["image"]]).read())) as img:
                    yield rec, img.convert("RGB")


# ---------------------------------------------------------------- datasets (the CLI's engine)

_WORKER: dict[str, Any] = {}


def _worker_init(stream: SceneStream, image_format: str) -> None:
    _WORKER["stream"], _WORKER["format"] = stream, image_format


def _worker_render(index: int) -> EncodedScene:
    return _WORKER["stream"][index].encode(_WORKER["format"])


def _render_parallel(stream: SceneStream, count: int, image_format: str, workers: int) -> Iterator[EncodedScene]:
    if workers <= 1:
        for i in range(count):
            yield stream[i].encode(image_format)
        return
    import multiprocessing

    with multiprocessing.get_context().Pool(workers, initializer=_worker_init, initargs=(stream, image_format)) as pool:
        # imap keeps index order, so the output does not depend on the worker count.
        yield from pool.imap(_worker_render, range(count), chunksize=max(1, min(64, count // (workers * 4) or 1)))


def labels_tsv(cats: Sequence[Category]) -> str:
    """A label-system TSV (tag, synonyms joined by '|') for the given categories."""
    lines = ["tag\tsynonyms"] + [f"{c.name}\t{'|'.join(c.aliases)}" for c in cats]
    return "\n".join(lines) + "\n"


@dataclass
class DatasetReport:
    """What write_dataset wrote."""

    out_dir: Path
    count: int
    split: str
    seed: int
    fmt: str
    categories: int
    seen: int
    held_out: int
    shards: list[Path] = field(default_factory=list)


def write_dataset(out_dir: str | Path, count: int, *, seed: int = 0, split: str = "train", size: int = 160, fmt: str = "jsonl",
                  shard_size: int = 1000, image_format: str = "png", workers: int = 1, min_objects: int = 1,
                  max_objects: int = 5, captions: CaptionConfig | dict[str, Any] | None = None,
                  overwrite: bool = False, progress: bool = True) -> DatasetReport:
    """Render `count` scenes of a split into out_dir as JSONL or WebDataset, with categories.json and labels.tsv."""
    if count < 1:
        raise ConfigError(f"count {count} must be at least 1")
    if fmt not in ("jsonl", "wds"):
        raise ConfigError(f"format {fmt!r} is unknown; valid: jsonl, wds")
    if workers < 1:
        raise ConfigError(f"workers {workers} must be at least 1")
    stream = SceneStream(seed=seed, split=split, size=size, min_objects=min_objects, max_objects=max_objects, captions=captions)
    all_cats = categories()
    seen, held = split_categories(all_cats, HELD_OUT, HELD_OUT_SEED)
    held_names = {c.name for c in held}
    meta = {
        "format": "ram-edge-scenes/1", "split": split, "seed": seed, "count": count, "size": size,
        "index_offset": SPLIT_OFFSETS[split], "held_out": HELD_OUT, "held_out_seed": HELD_OUT_SEED,
        "min_objects": min_objects, "max_objects": max_objects, "captions": asdict(stream.options["captions"]),
        "font": find_font().name, "split_tags": stream.tags,
        "categories": [{**c.to_dict(), "held_out": c.name in held_names} for c in all_cats],
    }
    extra = {"categories.json": (json.dumps(meta, ensure_ascii=False, indent=1) + "\n").encode("utf-8"),
             "labels.tsv": labels_tsv(stream.categories).encode("utf-8")}
    items = _render_parallel(stream, count, image_format, workers)
    shards: list[Path] = []
    if fmt == "jsonl":
        write_jsonl(out_dir, items, total=count, image_format=image_format, overwrite=overwrite, extra_files=extra, progress=progress)
    else:
        shards = write_wds(out_dir, items, total=count, shard_size=shard_size, image_format=image_format,
                           overwrite=overwrite, extra_files=extra, progress=progress)
    return DatasetReport(Path(out_dir), count, split, seed, fmt, len(all_cats), len(seen), len(held), shards)
