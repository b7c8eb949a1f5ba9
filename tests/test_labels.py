"""Tag lists, thresholds and decoding: official files, golden outputs, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import require_shared
from ram_edge import labels as labels_mod
from ram_edge.errors import LabelError
from ram_edge.labels import DEFAULT_THRESHOLD, LabelSet, read_lines

GOLDEN = ("ram_tiny", "ram_plus_tiny")


def _official(name: str) -> Path:
    return require_shared("official-data", "ram", "data", name)


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def small(tmp_path):
    """A five-tag list with Chinese names (one with a trailing space) and thresholds."""
    tags = _write(tmp_path / "tags.txt", "dog\ncat\ndot\nego\nzebra\n")
    zh = _write(tmp_path / "zh.txt", "狗\n猫 \n点\n自我\n斑马")
    th = _write(tmp_path / "th.txt", "0.65\n0.8\n0.5\n1\n0.45\n")
    return tags, zh, th


# --- official files and golden outputs -------------------------------------------------------


def test_official_lists_read_verbatim():
    en = read_lines(_official("ram_tag_list.txt"))
    zh = read_lines(_official("ram_tag_list_chinese.txt"))
    assert len(en) == len(zh) == 4585
    assert en[-1] == "zoo"
    assert sum(name.endswith(" ") for name in zh) == 2579


def test_official_thresholds_match_golden_float32():
    ref = np.load(require_shared("golden", "ram_tiny", "outputs.npz"))["class_threshold"]
    labels = LabelSet.from_files(
        _official("ram_tag_list.txt"), _official("ram_tag_list_chinese.txt"), _official("ram_tag_list_threshold.txt"),
        num_classes=4585,
    )
    assert labels.thresholds.dtype == np.float32 and ref.dtype == np.float32
    assert np.array_equal(labels.thresholds.view(np.uint32), ref.view(np.uint32))
    assert sum(name.endswith(" ") for name in labels.tags_zh) == 2579  # kept in the set
    assert labels.zh_name(labels.index_of("headquarter")) == "总部"  # stripped on output
    assert labels.tags_zh[labels.index_of("headquarter")] == "总部 "


def test_saving_official_thresholds_reproduces_the_file(tmp_path):
    path = _official("ram_tag_list_threshold.txt")
    labels = LabelSet.from_files(_official("ram_tag_list.txt"), None, path)
    labels.save_dir(tmp_path)
    assert (tmp_path / "thresholds.txt").read_bytes() == path.read_bytes()


@pytest.mark.parametrize("name", GOLDEN)
def test_decode_reproduces_golden_tags(name):
    folder = require_shared("golden", name)
    out = np.load(folder / "outputs.npz")
    ref = json.loads((folder / "tags.json").read_text(encoding="utf-8"))
    labels = LabelSet.from_files(
        folder / "ram_tag_list.txt", folder / "ram_tag_list_chinese.txt", folder / "ram_tag_list_threshold.txt",
        num_classes=out["probs"].shape[1],
    )
    assert np.array_equal(labels.thresholds, out["class_threshold"])
    assert np.array_equal(labels.fired(out["probs"]), out["tag_mask"].astype(bool))
    decoded = labels.decode(out["probs"])
    for i, fired in enumerate(decoded):
        indices = sorted(idx for idx, _ in fired)
        assert indices == ref["tag_indices"][i]
        # Official strings: ascending index, ' | ' joined, Chinese names verbatim (trailing spaces kept).
        assert " | ".join(labels.tags[j] for j in indices) == ref["tags"][i]
        assert " | ".join(labels.tags_zh[j] for j in indices) == ref["tags_chinese"][i]
        probs = [p for _, p in fired]
        assert probs == sorted(probs, reverse=True)
        assert all(p == float(out["probs"][i, j]) for j, p in fired)


# --- decoding rules ----------------------------------------------------------------------------


def test_decode_strict_sorted_ties_and_top_k():
    labels = LabelSet(["a", "b", "c", "d"], None, np.array([0.5, 0.5, 0.5, 0.5], np.float32))
    probs = np.array([[0.5, 0.9, 0.7, 0.9], [0.1, 0.2, 0.3, 0.4]], np.float32)
    assert labels.decode(probs) == [[(1, pytest.approx(0.9)), (3, pytest.approx(0.9)), (2, pytest.approx(0.7))], []]
    assert [i for i, _ in labels.decode(probs, top_k=2)[0]] == [1, 3]
    # float32 comparison: the float32 threshold 0.65 is below the double 0.65, so 0.65f does not fire.
    t = LabelSet(["x"], None, np.array([0.65], np.float32))
    assert t.decode(np.array([[0.65]], np.float32)) == [[]]
    assert t.decode(np.array([[np.nextafter(np.float32(0.65), np.float32(1))]], np.float32))[0][0][0] == 0


def test_decode_bad_shape_and_top_k():
    labels = LabelSet(["a", "b"], None, np.array([0.5, 0.5], np.float32))
    with pytest.raises(LabelError, match=r"shape \(1, 3\); expected \(N, 2\)"):
        labels.decode(np.zeros((1, 3), np.float32))
    with pytest.raises(LabelError, match="top_k must be a positive integer"):
        labels.decode(np.zeros((1, 2), np.float32), top_k=0)


def test_with_threshold(small):
    labels = LabelSet.from_files(*small)
    glob = labels.with_threshold(0.3)
    assert glob.thresholds.dtype == np.float32 and np.all(glob.thresholds == np.float32(0.3))
    assert glob.tags == labels.tags and glob.tags_zh == labels.tags_zh
    assert labels.thresholds[0] == np.float32(0.65)  # original untouched
    with pytest.raises(LabelError, match=r"global threshold: threshold 1\.5 is not a number in \[0, 1\]"):
        labels.with_threshold(1.5)


def test_default_threshold_without_file(small):
    labels = LabelSet.from_files(small[0])
    assert labels.tags_zh is None
    assert np.all(labels.thresholds == np.float32(DEFAULT_THRESHOLD))
    with pytest.raises(LabelError, match="no Chinese names"):
        labels.zh_name(0)


# --- subset and lookup -------------------------------------------------------------------------


def test_subset_order_and_indices(small):
    labels = LabelSet.from_files(*small)
    sub, idx = labels.subset(["zebra", "cat", "zebra"])
    assert idx.dtype == np.int64 and idx.tolist() == [1, 4]
    assert sub.tags == ["cat", "zebra"] and sub.tags_zh == ["猫 ", "斑马"]
    assert sub.thresholds.tolist() == [np.float32(0.8), np.float32(0.45)]
    assert labels.subset("dog")[1].tolist() == [0]  # a bare string is one name
    assert labels.index_of("ego") == 3


def test_subset_unknown_names_with_close_matches(small):
    labels = LabelSet.from_files(*small)
    with pytest.raises(LabelError) as err:
        labels.subset(["dog", "dgo", "qqqq"])
    msg = str(err.value)
    assert "unknown tag 'dgo': close matches: dog, dot, ego" in msg
    assert "unknown tag 'qqqq': no close matches" in msg
    with pytest.raises(LabelError, match="unknown tag 'Zebra': close matches: zebra"):
        labels.index_of("Zebra")


def test_subset_empty(small):
    with pytest.raises(LabelError, match="empty tag subset"):
        LabelSet.from_files(*small).subset([])


# --- save / load / manifest --------------------------------------------------------------------


def test_save_load_round_trip_exact(tmp_path, small):
    rng = np.random.default_rng(0)
    th = np.concatenate([rng.random(1000, dtype=np.float32), np.array([0, 1, 1e-8, 0.1, 1 / 3], np.float32)])
    tags = [f"tag {i}" for i in range(th.size)]
    zh = [f"标签{i} " for i in range(th.size)]
    labels = LabelSet(tags, zh, th)
    labels.save_dir(tmp_path / "out")
    back = LabelSet.load_dir(tmp_path / "out", num_classes=th.size)
    assert back == labels
    assert np.array_equal(back.thresholds.view(np.uint32), th.view(np.uint32))
    # Saving without a Chinese list removes a stale one.
    LabelSet(tags, None, th).save_dir(tmp_path / "out")
    assert not (tmp_path / "out" / "tags_zh.txt").exists()
    assert LabelSet.load_dir(tmp_path / "out").tags_zh is None


def test_save_dir_write_failure_keeps_previous_files(tmp_path, monkeypatch, small):
    """A failure while writing the second file leaves the earlier save untouched and no temp files."""
    labels = LabelSet.from_files(*small)
    labels.save_dir(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    real_atomic = labels_mod.atomic_file

    def atomic_failing_on_thresholds(path, mode="wb"):
        cm = real_atomic(path, mode)
        if Path(path).name == "thresholds.txt":
            class Boom:
                def __enter__(self):
                    self.fh = cm.__enter__()
                    return self

                def write(self, text):
                    self.fh.write(text[:3])
                    raise OSError(28, "No space left on device")

                def __exit__(self, *exc):
                    return cm.__exit__(*exc)

            return Boom()
        return cm

    monkeypatch.setattr(labels_mod, "atomic_file", atomic_failing_on_thresholds)
    with pytest.raises(OSError, match="No space left"):
        labels.with_threshold(0.1).save_dir(tmp_path)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert after == before


def test_manifest_round_trip_exact():
    th = np.random.default_rng(1).random(500, dtype=np.float32)
    labels = LabelSet([f"t{i}" for i in range(500)], None, th)
    data = json.loads(json.dumps(labels.to_manifest()))
    assert data["tags_zh"] is None
    assert LabelSet.from_manifest(data) == labels
    zh = LabelSet(["a"], ["甲 "], np.array([0.65], np.float32))
    assert json.dumps(zh.to_manifest(), ensure_ascii=False) == '{"tags": ["a"], "tags_zh": ["甲 "], "thresholds": [0.65]}'
    assert LabelSet.from_manifest(zh.to_manifest()) == zh


def test_manifest_errors():
    with pytest.raises(LabelError, match=r"unknown key\(s\) \['extra'\]"):
        LabelSet.from_manifest({"tags": ["a"], "thresholds": [0.5], "extra": 1})
    with pytest.raises(LabelError, match=r"missing key\(s\) \['thresholds'\]"):
        LabelSet.from_manifest({"tags": ["a"]})
    with pytest.raises(LabelError, match=r"thresholds\[0\] = '0.5' is not a number"):
        LabelSet.from_manifest({"tags": ["a"], "thresholds": ["0.5"]})


# --- bad input -----------------------------------------------------------------------------------


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(LabelError, match=r"nope\.txt: file not found"):
        LabelSet.from_files(tmp_path / "nope.txt")
    with pytest.raises(LabelError, match="is a directory"):
        read_lines(tmp_path)
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("dog\ncat\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(LabelError, match=r"latin1\.txt, line 3: not valid UTF-8"):
        LabelSet.from_files(bad)


def test_empty_list_and_blank_name(tmp_path):
    with pytest.raises(LabelError, match=r"empty\.txt: tag list is empty"):
        LabelSet.from_files(_write(tmp_path / "empty.txt", ""))
    with pytest.raises(LabelError, match=r"blank\.txt, line 2: empty tag name"):
        LabelSet.from_files(_write(tmp_path / "blank.txt", "dog\n  \ncat\n"))


def test_threshold_file_errors(tmp_path, small):
    tags = small[0]
    with pytest.raises(LabelError, match=r"th\.txt, line 3: 'high' is not a number"):
        LabelSet.from_files(tags, None, _write(tmp_path / "th.txt", "0.5\n0.5\nhigh\n0.5\n0.5\n"))
    with pytest.raises(LabelError, match=r"th\.txt, line 2: threshold 1\.5 is not a number in \[0, 1\]"):
        LabelSet.from_files(tags, None, _write(tmp_path / "th.txt", "0.5\n1.5\n0.5\n0.5\n0.5\n"))
    with pytest.raises(LabelError, match=r"th\.txt, line 1: threshold nan"):
        LabelSet.from_files(tags, None, _write(tmp_path / "th.txt", "nan\n0.5\n0.5\n0.5\n0.5\n"))
    with pytest.raises(LabelError, match=r"threshold file .*th\.txt has 3 values but tag list .*tags\.txt has 5 tags"):
        LabelSet.from_files(tags, None, _write(tmp_path / "th.txt", "0.5\n0.5\n0.5\n"))


def test_chinese_list_wrong_length(tmp_path, small):
    with pytest.raises(LabelError, match=r"Chinese list .*zh2\.txt has 2 names but tag list .*tags\.txt has 5 tags"):
        LabelSet.from_files(small[0], _write(tmp_path / "zh2.txt", "狗\n猫\n"))


def test_tag_count_vs_checkpoint(small):
    with pytest.raises(LabelError) as err:
        LabelSet.from_files(small[0], num_classes=4585)
    msg = str(err.value)
    assert "tags.txt has 5 tags but the checkpoint has 4585 classes" in msg
    assert "pass the tag list the model was trained with" in msg


def test_load_dir_missing_files(tmp_path):
    with pytest.raises(LabelError, match="label directory not found"):
        LabelSet.load_dir(tmp_path / "none")
    _write(tmp_path / "tags.txt", "a\n")
    with pytest.raises(LabelError, match="missing thresholds.txt"):
        LabelSet.load_dir(tmp_path)


def test_constructor_validation():
    with pytest.raises(LabelError, match="has 2 tags"):
        LabelSet(["a", "b"], None, np.array([0.5], np.float32))
    with pytest.raises(LabelError, match="empty tag name"):
        LabelSet(["a", ""], None, np.array([0.5, 0.5], np.float32))
    with pytest.raises(LabelError, match=r"class 1 \('b'\): threshold inf"):
        LabelSet(["a", "b"], None, np.array([0.5, np.inf], np.float32))
    with pytest.raises(LabelError, match=r"threshold -0\.1"):
        LabelSet(["a"], None, [-0.1])
    with pytest.raises(LabelError, match="Chinese list has 1 names"):
        LabelSet(["a", "b"], ["甲"], np.array([0.5, 0.5], np.float32))
    with pytest.raises(LabelError, match="contains a line break"):
        LabelSet(["a\nb"], None, [0.5])
    with pytest.raises(LabelError, match="tag list is empty"):
        LabelSet([], None, np.zeros(0, np.float32))


def test_modules_do_not_import_torch():
    code = "import sys, ram_edge.labels, ram_edge.preprocess; print('torch' in sys.modules)"
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "False"
