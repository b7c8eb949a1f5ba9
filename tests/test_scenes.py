"""Emoji scene generator: vocabulary, held-out split, determinism, labels, captions, writers, CLI."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

pytest.importorskip("emoji", reason="the scene vocabulary needs the emoji package: pip install emoji")

from ram_edge.training import scenes as S  # noqa: E402

if not S.font_available():
    pytest.skip("the Noto Color Emoji font is not installed: apt-get install fonts-noto-color-emoji "
                f"(or set {S.FONT_ENV})", allow_module_level=True)


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def _mentions(caption: str, cat: S.Category, with_aliases: bool = True) -> bool:
    words = [cat.name, *(cat.aliases if with_aliases else ())]
    forms = {_norm(w) for w in words} | {_norm(S.pluralize(w)) for w in words}
    return any(f in _norm(caption) for f in forms)


@pytest.fixture(scope="module")
def cats():
    return S.categories()


def test_vocabulary(cats):
    assert len(cats) >= 300
    names = [c.name for c in cats]
    assert len(set(names)) == len(names)
    for c in cats:
        assert c.name == c.name.lower().strip() and not any(ch.isdigit() for ch in c.name)
        assert c.char == c.variants[0] and c.name not in c.aliases
        assert all(S._sprite_levels(g) is not None for g in c.variants)  # only glyphs the font draws
        # single code points: no flags (regional indicators), skin tones or ZWJ sequences
        assert all(len(g) == 1 and not 0x1F1E6 <= ord(g) <= 0x1F1FF for g in c.variants)
    aliases = [a for c in cats for a in c.aliases]
    assert len(set(aliases)) == len(aliases) and not set(aliases) & set(names)
    assert S.categories() == cats  # deterministic order


def test_held_out_split(cats):
    seen, held = S.split_categories(cats, held_out=60, seed=0)
    assert len(held) == 60 and len(seen) == len(cats) - 60
    assert not {c.name for c in seen} & {c.name for c in held}
    assert S.split_categories(cats, 60, 0) == (seen, held)
    assert S.split_categories(list(reversed(cats)), 60, 0)[1] == list(reversed(held))  # input order does not matter
    assert {c.name for c in S.split_categories(cats, 60, 1)[1]} != {c.name for c in held}
    groups = {c.group for c in cats}
    for g in groups:  # stratified: each group's share within one of proportional
        n = sum(c.group == g for c in cats)
        assert abs(sum(c.group == g for c in held) - 60 * n / len(cats)) < 1.0 + 1e-9


def test_generate_is_deterministic_and_order_free():
    a = S.generate(5, 17)
    S.generate(5, 3)
    b = S.generate(5, 17)
    c = S.generate(5, 18)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert (a.tags, a.boxes, a.captions) == (b.tags, b.boxes, b.captions)
    assert not np.array_equal(np.asarray(a.image), np.asarray(c.image))
    d = S.SceneStream(seed=5)[17]
    assert np.array_equal(np.asarray(a.image), np.asarray(d.image)) and a.captions == d.captions


def test_tags_match_drawn_objects():
    stream = S.SceneStream(seed=2, size=96, max_objects=4)
    pool = set(stream.tags)
    for i in range(25):
        sc = stream[i]
        assert sc.image.size == (96, 96) and sc.image.mode == "RGB"
        assert len(sc.boxes) == len(sc.box_tags) >= 1
        assert sc.tags == list(dict.fromkeys(sc.box_tags))  # unique, in drawing order
        assert set(sc.tags) <= pool
        for (x0, y0, x1, y1) in sc.boxes:
            assert 0 <= x0 < x1 <= 96 and 0 <= y0 < y1 <= 96
            assert max(x1 - x0, y1 - y0) >= 0.18 * 96 * 0.6 * 0.5  # never vanishingly small
            patch = np.asarray(sc.image)[y0:y1, x0:x1].reshape(-1, 3)
            assert patch.std(axis=0).max() > 1.0  # something was drawn there


def test_captions_mention_tags(cats):
    by_name = {c.name: c for c in cats}
    clean = S.SceneStream(seed=3, captions={"missing": 0, "synonym": 0, "wrong": 0})
    for i in range(20):
        sc = clean[i]
        for cap in sc.captions:
            assert all(_mentions(cap, by_name[t], with_aliases=False) for t in sc.tags), (cap, sc.tags)
    noisy = S.SceneStream(seed=3)
    hits = total = 0
    for i in range(40):
        sc = noisy[i]
        for t in sc.tags:
            total += 1
            hits += any(_mentions(cap, by_name[t]) for cap in sc.captions)
    assert hits / total > 0.8


def test_caption_noise_inserts_wrong_objects(cats):
    stream = S.SceneStream(seed=4, captions={"wrong": 1.0, "missing": 0.0, "n_captions": 1})
    others = [c for c in stream.categories]
    for i in range(10):
        sc = stream[i]
        absent = [c for c in others if c.name not in sc.tags]
        assert any(_mentions(sc.captions[0], c, with_aliases=False) for c in absent), (sc.captions, sc.tags)


def test_grammar_helpers():
    assert S.pluralize("red apple") == "red apples" and S.pluralize("mouse") == "mice" and S.pluralize("bus") == "buses"
    assert S.pluralize("strawberry") == "strawberries" and S.pluralize("knife") == "knives"
    assert S.with_article("apple") == "an apple" and S.with_article("unicorn") == "a unicorn"
    assert S.is_plural_form("grapes") and not S.is_plural_form("octopus") and not S.is_countable("french fries")


def test_splits_use_their_pools():
    seen, held = S.split_categories(S.categories())
    h = S.SceneStream(seed=0, split="heldout")
    assert h.tags == [c.name for c in held]
    assert all(set(h[i].tags) <= set(h.tags) for i in range(5))
    t, v = S.SceneStream(seed=0, split="train"), S.SceneStream(seed=0, split="val")
    assert t.tags == v.tags == [c.name for c in seen]
    assert not np.array_equal(np.asarray(t[0].image), np.asarray(v[0].image))
    with pytest.raises(S.ConfigError):
        S.SceneStream(split="nope")


@pytest.mark.parametrize("fmt", ["jsonl", "wds"])
def test_writers_round_trip(tmp_path, fmt):
    stream = S.SceneStream(seed=9, size=64, length=5)
    scenes = list(stream)
    out = tmp_path / "ds"
    if fmt == "jsonl":
        S.write_jsonl(out, scenes, total=5, extra_files={"x.txt": b"hi"}, progress=False)
        back = list(S.iter_jsonl(out))
        assert (out / "images" / "000004.png").is_file() and (out / "x.txt").read_bytes() == b"hi"
    else:
        shards = S.write_wds(out, scenes, total=5, shard_size=2, progress=False)
        assert [p.name for p in shards] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
        back = list(S.iter_wds(out))
    assert len(back) == 5
    for sc, (rec, img) in zip(scenes, back):
        assert {k: v for k, v in rec.items() if k != "image"} == json.loads(json.dumps(sc.record()))
        assert np.array_equal(np.asarray(img), np.asarray(sc.image))  # PNG is lossless
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no temporary leftovers


def test_writer_is_atomic(tmp_path):
    def broken():
        yield S.generate(0, 0, size=48)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        S.write_wds(tmp_path / "ds", broken(), progress=False)
    assert list(tmp_path.iterdir()) == []
    S.write_jsonl(tmp_path / "ds", [S.generate(0, 0, size=48)], image_format="jpg", progress=False)
    assert (tmp_path / "ds" / "images" / "000000.jpg").is_file()
    with pytest.raises(S.RamEdgeError, match="overwrite"):
        S.write_jsonl(tmp_path / "ds", [S.generate(0, 1, size=48)], progress=False)


def test_cli_scenes(tmp_path):
    from click.testing import CliRunner

    from ram_edge.cli.main import cli

    runner = CliRunner()
    out = tmp_path / "wds"
    res = runner.invoke(cli, ["data", "scenes", "-o", str(out), "--count", "5", "--size", "64", "--format", "wds",
                              "--shard-size", "2", "--seed", "1", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["count"] == 5 and summary["shards"] == 3 and summary["held_out"] == 60
    meta = json.loads((out / "categories.json").read_text(encoding="utf-8"))
    assert sum(c["held_out"] for c in meta["categories"]) == 60 and meta["split"] == "train"
    assert (out / "labels.tsv").read_text(encoding="utf-8").splitlines()[0] == "tag\tsynonyms"
    first = next(S.iter_wds(out))[0]
    assert first["captions"] == S.generate(1, 0, size=64).captions  # CLI scene i == generate(seed, i)

    held = tmp_path / "held"
    res = runner.invoke(cli, ["data", "scenes", "-o", str(held), "--count", "3", "--size", "64", "--split", "heldout"])
    assert res.exit_code == 0, res.output
    held_names = {c["name"] for c in meta["categories"] if c["held_out"]}
    for line in (held / "annotations.jsonl").read_text(encoding="utf-8").splitlines():
        assert set(json.loads(line)["tags"]) <= held_names
    assert len((held / "labels.tsv").read_text(encoding="utf-8").splitlines()) == 61

    res = runner.invoke(cli, ["data", "scenes", "-o", str(held), "--count", "3"])
    assert res.exit_code == 2 and "overwrite" in res.output
