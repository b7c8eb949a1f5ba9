"""Caption -> tag parsing: normalisation, plurals, longest-first matching, synonyms, the `parse` CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ram_edge.cli.main import cli
from ram_edge.errors import LabelError, RamEdgeError
from ram_edge.training.label_system import LabelSystem
from ram_edge.training.parse import TagParser, iter_caption_records
from ram_edge.training.text_norm import lemmatize, tokenize

TAGS = ["dog", "hot dog", "ice cream", "ice cream cone", "bus", "person", "glass", "glasses", "wine glass",
        "t-shirt", "cherry", "tomato", "box", "child", "rubik's cube", "café", "run", "hot", "tennis"]


@pytest.fixture(scope="module")
def parser() -> TagParser:
    syn = [[] for _ in TAGS]
    syn[TAGS.index("dog")] = ["puppy", "doggy"]
    return TagParser(LabelSystem(TAGS, syn))


def names(parser: TagParser, caption: str) -> list[str]:
    return sorted(parser.tag_names(parser.parse(caption)))


@pytest.mark.parametrize("plural, singular", [
    ("dogs", "dog"), ("puppies", "puppy"), ("buses", "bus"), ("people", "person"), ("men", "man"),
    ("women", "woman"), ("children", "child"), ("mice", "mouse"), ("geese", "goose"), ("feet", "foot"),
    ("teeth", "tooth"), ("leaves", "leaf"), ("knives", "knife"), ("wolves", "wolf"), ("boxes", "box"),
    ("cherries", "cherry"), ("tomatoes", "tomato"), ("shoes", "shoe"), ("movies", "movie"),
    ("houses", "house"), ("classes", "class"), ("dishes", "dish"), ("policemen", "policeman"),
    # never stripped: -ss, -us, -is, and plural-only words with a different singular
    ("glass", "glass"), ("bus", "bus"), ("tennis", "tennis"), ("glasses", "glasses"), ("shorts", "shorts"),
    ("news", "news"), ("specimen", "specimen"),
])
def test_lemmatize(plural, singular):
    assert lemmatize(plural) == singular


def test_tokenize_normalises_case_punctuation_unicode():
    assert tokenize("A DOG, running!") == ["a", "dog", "running"]
    assert tokenize("T-Shirt") == ["t", "shirt"]
    assert tokenize("Rubik\u2019s cube, don't") == ["rubik", "cube", "dont"]
    assert tokenize("\uff24\uff2f\uff27 caf\u0065\u0301") == ["dog", "caf\u00e9"]  # fullwidth + combining accent (NFKC)


def test_plurals_match_singular_tags(parser):
    assert names(parser, "Two dogs and three buses") == ["bus", "dog"]
    assert names(parser, "people eating cherries and tomatoes from boxes") == ["box", "cherry", "person", "tomato"]
    assert names(parser, "children") == ["child"]


def test_glass_vs_glasses(parser):
    # Documented choice: "glasses" is eyewear, never the tag "glass"; multi-word tags still match plurals.
    assert names(parser, "a man wearing glasses") == ["glasses"]
    assert names(parser, "a glass of water") == ["glass"]
    assert names(parser, "two wine glasses") == ["wine glass"]


def test_longest_match_first_and_tokens_used_once(parser):
    assert names(parser, "a hot dog") == ["hot dog"]
    assert names(parser, "hot dogs and a dog") == ["dog", "hot dog"]
    assert names(parser, "an ice cream cone") == ["ice cream cone"]
    assert names(parser, "ice cream") == ["ice cream"]
    assert names(parser, "it is hot") == ["hot"]
    assert parser.spans("hot hot dog") == [(0, 1, (TAGS.index("hot"),)), (1, 3, (TAGS.index("hot dog"),))]


def test_synonyms_map_to_tag(parser):
    assert names(parser, "a puppy") == ["dog"]
    assert names(parser, "Puppies and doggies") == ["dog"]


def test_casing_punctuation_hyphens(parser):
    assert names(parser, "A DOG, running!") == ["dog"]
    assert names(parser, "boy in a T-Shirt") == names(parser, "boy in a t shirt") == ["t-shirt"]
    assert names(parser, "tshirts for sale") == ["t-shirt"]
    assert names(parser, "solving a Rubik's cube") == ["rubik's cube"]
    assert names(parser, "CAF\u00c9 on the corner") == ["café"]
    assert names(parser, "") == [] and names(parser, "!!!") == []


def test_parse_many_sorted_unique_and_deterministic(parser):
    out = parser.parse_many(["dog dog puppy", "bus and a dog"])
    assert out == [[0], [0, TAGS.index("bus")]]
    assert TagParser(LabelSystem(TAGS)).parse_many(["dog bus"]) == TagParser(list(TAGS)).parse_many(["dog bus"])
    assert TagParser(LabelSystem(TAGS).to_label_set()).parse("two dogs") == [0]  # a LabelSet works too


def test_shared_key_fires_all_tags_and_names_beat_synonyms():
    p = TagParser(LabelSystem(["stair", "stairs", "canine"], [[], [], ["dog"]]))
    assert p.parse("the stairs") == [0, 1]
    q = TagParser(LabelSystem(["dog", "canine"], [[], ["dog"]]))
    assert q.parse("dog") == [0]


def test_unmatchable_tag_is_an_error():
    with pytest.raises(LabelError, match="no letters or digits"):
        TagParser(["dog", "!!!"])


def test_caption_file_errors(tmp_path):
    bad = tmp_path / "c.jsonl"
    bad.write_text('{"caption": "a dog"}\n{"text": "x"}\n', encoding="utf-8")
    with pytest.raises(RamEdgeError, match=r"c\.jsonl, line 2: no \"caption\" field"):
        list(iter_caption_records(bad))
    with pytest.raises(RamEdgeError, match="not found"):
        list(iter_caption_records(tmp_path / "missing.txt"))


def test_cli_parse_text_and_jsonl(tmp_path):
    labels = tmp_path / "labels.tsv"
    LabelSystem(["dog", "hot dog", "bus"], [["puppy"], [], []]).save(labels)
    txt = tmp_path / "caps.txt"
    txt.write_text("A puppy on a bus\n\nhot dogs!\n", encoding="utf-8")
    res = CliRunner().invoke(cli, ["parse", str(txt), "--labels", str(labels)])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.output.splitlines()]
    assert rows == [
        {"caption": "A puppy on a bus", "tag_ids": [0, 2], "tags": ["dog", "bus"]},
        {"caption": "", "tag_ids": [], "tags": []},
        {"caption": "hot dogs!", "tag_ids": [1], "tags": ["hot dog"]},
    ]
    jl = tmp_path / "caps.data"
    jl.write_text(json.dumps({"image": "a.jpg", "caption": ["a dog", "a bus"]}) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    res = CliRunner().invoke(cli, ["parse", str(jl), "--labels", str(labels), "--jsonl", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text(encoding="utf-8")) == {
        "image": "a.jpg", "caption": ["a dog", "a bus"], "tag_ids": [0, 2], "tags": ["dog", "bus"]}


def test_cli_parse_errors(tmp_path):
    caps = tmp_path / "caps.jsonl"
    caps.write_text("not json\n", encoding="utf-8")
    labels = tmp_path / "tags.txt"
    labels.write_text("dog\n", encoding="utf-8")
    res = CliRunner().invoke(cli, ["parse", str(caps), "--labels", str(labels)])
    assert res.exit_code == 2 and "caps.jsonl, line 1: not valid JSON" in res.output
    res = CliRunner().invoke(cli, ["parse", str(caps), "--labels", str(tmp_path / "nope.tsv")])
    assert res.exit_code == 2 and "nope.tsv: file not found" in res.output


def test_parser_and_label_system_share_text_norm_without_a_cycle():
    """Tokenising and the lemma tables live in text_norm; parse does not import label_system (not even for types)."""
    import ast

    import ram_edge.training.parse as parse_module

    tree = ast.parse(Path(parse_module.__file__).read_text(encoding="utf-8"))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "label_system" not in imported and "text_norm" in imported
