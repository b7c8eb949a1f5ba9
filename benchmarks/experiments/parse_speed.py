"""Caption parsing speed: captions per second of `TagParser.parse` on one core.

Uses the official RAM tag list from $RAM_EDGE_SHARED/official-data/ram/data/ram_tag_list.txt
(or ../shared beside the repository) when present, else 4585 synthetic tags of the official
length mix; parses 20,000 synthetic captions (seeded, so runs are comparable) and prints the rate.

    python benchmarks/experiments/parse_speed.py [--captions 20000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import random
import time
from pathlib import Path

from ram_edge.labels import read_lines
from ram_edge.training.parse import TagParser
from ram_edge.training.text_norm import plural_forms

_REPO = Path(__file__).resolve().parents[2]
_FILLER = (
    "a an the of on in with and at near next to is are sitting standing holding two three some "
    "large small red blue white black green old young wooden happy busy beside under over while"
).split()
_SYLLABLES = "ka lo mi ne ru sa ti po be da fi go hu je ki la mo nu pa re si to va we xi yo zu".split()


def official_tags() -> list[str] | None:
    """The official RAM tag list, or None when the shared folder is not there."""
    root = Path(os.environ.get("RAM_EDGE_SHARED", _REPO.parent / "shared"))
    path = root / "official-data" / "ram" / "data" / "ram_tag_list.txt"
    return read_lines(path) if path.is_file() else None


def synthetic_tags(n: int = 4585, seed: int = 0) -> list[str]:
    """n unique made-up tags: ~69% one word, ~30% two, ~1% three (the official mix)."""
    rng = random.Random(seed)
    tags: list[str] = []
    seen: set[str] = set()
    while len(tags) < n:
        words = 1 if rng.random() < 0.69 else 2 if rng.random() < 0.97 else 3
        tag = " ".join("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))) for _ in range(words))
        if tag not in seen:
            seen.add(tag)
            tags.append(tag)
    return tags


def synthetic_captions(tags: list[str], n: int = 20000, seed: int = 0) -> list[str]:
    """n captions of ~12 words: filler words with 2-3 tags, some plural, capitalised, punctuated."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(_FILLER) for _ in range(rng.randint(6, 10))]
        for _ in range(rng.randint(2, 3)):
            tag = rng.choice(tags).split()
            if rng.random() < 0.3:
                tag[-1] = plural_forms(tag[-1].lower())[0]
            pos = rng.randint(0, len(words))
            words[pos:pos] = tag
        text = " ".join(words)
        out.append(text[:1].upper() + text[1:] + rng.choice([".", "!", ",", ""]))
    return out


def main(argv: list[str] | None = None) -> float:
    """Run the benchmark; print and return the best captions/s."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--captions", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    tags = official_tags()
    source = "official RAM tag list" if tags is not None else "synthetic tag list"
    if tags is None:
        tags = synthetic_tags()
    captions = synthetic_captions(tags, args.captions)
    t0 = time.perf_counter()
    parser = TagParser(tags)
    build_s = time.perf_counter() - t0
    best = 0.0
    matched = 0
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        results = parser.parse_many(captions)
        rate = len(captions) / (time.perf_counter() - t0)
        best = max(best, rate)
        matched = sum(map(len, results))
    print(
        f"{source}: {len(tags)} tags, matcher built in {build_s:.2f} s; {len(captions)} captions, "
        f"{matched / len(captions):.2f} tags/caption; best of {args.repeats}: {best:,.0f} captions/s"
    )
    return best


if __name__ == "__main__":
    main()
