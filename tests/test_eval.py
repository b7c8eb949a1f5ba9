"""Evaluation data readers (official benchmark files, JSONL) and `ram-edge eval` end to end."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import require_shared, run_cli
from ram_edge.errors import LabelError
from ram_edge.training.eval_data import EvalSet, detect_format, find_taglist, load_evalset, read_jsonl, read_official

DATASETS = ("official-data", "datasets")


def _ram_tags() -> list[str]:
    return require_shared("official-data", "ram", "data", "ram_tag_list.txt").read_text(encoding="utf-8").splitlines()


# ---------------------------------------------------------------- official files (parsing only: no images)


def test_openimages_common_by_name(tmp_path):
    folder = require_shared(*DATASETS, "openimages_common_214")
    annots = folder / "openimages_common_214_ram_annots.txt"
    assert find_taglist(annots) == folder / "openimages_common_214_ram_taglist.txt"
    ev = read_official(annots, image_root=tmp_path, model_tags=_ram_tags())
    assert ev.format == "official (names)"
    assert len(ev) == 57224 and len(ev.tag_names) == 214 and ev.targets.shape == (57224, 214)
    assert int(ev.targets.sum()) == 67866 and ev.skipped_tags == [] and ev.skipped_positives == 0
    # "test/0000c64e1253d68f,car": no extension -> ".jpg" appended, as the official loader does.
    assert ev.images[0] == tmp_path / "test" / "0000c64e1253d68f.jpg"
    assert [ev.tag_names[j] for j in np.flatnonzero(ev.targets[0])] == ["car"]
    assert ev.targets.any(axis=0).all()  # every benchmark tag has a positive


def test_hico_by_index_and_unknown_to_ram():
    annots = require_shared(*DATASETS, "hico", "hico_600_annots.txt")
    ev = read_official(annots)
    assert ev.format == "official (indices)" and ev.targets.shape == (9658, 600)
    taglist = (annots.parent / "hico_600_taglist.txt").read_text(encoding="utf-8").splitlines()
    # Line 2: "HICO_test2015_00000002.jpg,131 139 143" (0-based positions in the tag list).
    assert ev.images[1].name == "HICO_test2015_00000002.jpg"
    assert [ev.tag_names[j] for j in np.flatnonzero(ev.targets[1])] == [taglist[i] for i in (131, 139, 143)]
    # HICO's human-object phrases are not RAM tags: nothing could be scored.
    with pytest.raises(LabelError, match="none of the 600 evaluation tags"):
        ev.restrict_to(_ram_tags())


def test_imagenet_multi_duplicates_and_skipped_tags():
    annots = require_shared(*DATASETS, "imagenet_multi", "imagenet_multi_1000_annots.txt")
    lines = (annots.parent / "imagenet_multi_1000_taglist.txt").read_text(encoding="utf-8").splitlines()
    ev = read_official(annots)
    assert len(ev) == 50000 and len(ev.tag_names) == len(set(lines)) == 998  # "crane", "maillot" repeat
    assert not ev.targets[0].any()  # "ILSVRC2012_val_00000001.JPEG": no label, no comma
    ram = _ram_tags()
    sub = ev.restrict_to(ram)
    unknown = [n for n in dict.fromkeys(lines) if n not in set(ram)]
    assert sub.skipped_tags == unknown and len(sub.tag_names) == 998 - len(unknown)
    assert sub.skipped_positives == int(ev.targets[:, [ev.tag_names.index(n) for n in unknown]].sum())
    assert sub.targets.shape == (50000, len(sub.tag_names))


def test_openimages_rare_and_tag2text_ids_unknown_to_ram():
    rare = require_shared(*DATASETS, "openimages_rare_200", "openimages_rare_200_ram_annots.txt")
    ev = read_official(rare)
    assert ev.targets.shape == (21991, 200) and int(ev.targets.sum()) == 29519
    with pytest.raises(LabelError, match="open-set"):
        ev.restrict_to(_ram_tags())
    ids = require_shared(*DATASETS, "openimages_common_214", "openimages_common_214_tag2text_idannots.txt")
    assert find_taglist(ids).name == "openimages_common_214_tag2text_tagidlist.txt"
    assert read_official(ids).targets.shape == (57224, 214)


# ---------------------------------------------------------------- synthetic files: formats and errors


def test_official_format_rules(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "toy_taglist.txt").write_text("cat\ndog\ncat\n")
    (tmp_path / "toy_annots.txt").write_text("a.png,cat\n\nsub/b,dog,cat\nc.jpg\n")
    ev = load_evalset(tmp_path / "toy_annots.txt")
    assert ev.tag_names == ["cat", "dog"]
    assert ev.images == [tmp_path / "imgs" / "a.png", tmp_path / "imgs" / "sub" / "b.jpg", tmp_path / "imgs" / "c.jpg"]
    assert ev.targets.tolist() == [[True, False], [True, True], [False, False]]
    sub = ev.restrict_to(["dog", "bird"])
    assert sub.tag_names == ["dog"] and sub.skipped_tags == ["cat"] and sub.skipped_positives == 2

    (tmp_path / "idx_annots.txt").write_text("x.jpg,0 2\ny.jpg,1\n")
    ev = read_official(tmp_path / "idx_annots.txt", tmp_path / "toy_taglist.txt")
    assert ev.format == "official (indices)" and ev.targets.tolist() == [[True, False], [False, True]]

    (tmp_path / "bad_annots.txt").write_text("x.jpg,cat\ny.jpg,horse\n")
    with pytest.raises(LabelError, match=r"bad_annots.txt, line 2: label 'horse'"):
        read_official(tmp_path / "bad_annots.txt", tmp_path / "toy_taglist.txt")
    (tmp_path / "range_annots.txt").write_text("x.jpg,7\n")
    with pytest.raises(LabelError, match="line 1: tag index 7 is out of range"):
        read_official(tmp_path / "range_annots.txt", tmp_path / "toy_taglist.txt")
    with pytest.raises(LabelError, match="--taglist"):
        read_official(tmp_path / "range_annots.txt")


def test_jsonl_format_and_errors(tmp_path):
    data = tmp_path / "set.jsonl"
    data.write_text(
        json.dumps({"image": "a.jpg", "tags": ["dog", "cat"], "note": "extra keys are ignored"}) + "\n\n"
        + json.dumps({"image": "/abs/b.png", "tags": []}) + "\n"
    )
    assert detect_format(data) == "jsonl"
    ev = load_evalset(data)
    assert ev.images == [tmp_path / "a.jpg", Path("/abs/b.png")]
    assert ev.tag_names == ["dog", "cat"] and ev.targets.tolist() == [[True, True], [False, False]]
    assert read_jsonl(data, image_root=tmp_path / "r").images[0] == tmp_path / "r" / "a.jpg"
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("cat\ndog\nbird\n")
    assert read_jsonl(data, taglist=vocab).tag_names == ["cat", "dog", "bird"]
    vocab.write_text("cat\n")
    with pytest.raises(LabelError, match=r"line 1: tag\(s\) \['dog'\] are not in the tag list"):
        read_jsonl(data, taglist=vocab)
    for text, message in (
        ("{not json\n", "line 1: not valid JSON"),
        ('["a.jpg"]\n', "expected a JSON object"),
        ('{"image": "a.jpg", "tags": "dog"}\n', '"tags" must be a list'),
        ('{"tags": ["dog"]}\n', '"image" must be'),
        ('{"image": "a.jpg", "tags": []}\n', "no image has a tag"),
    ):
        data.write_text(text)
        with pytest.raises(LabelError, match=message):
            read_jsonl(data)
    with pytest.raises(LabelError, match="unknown evaluation data format"):
        load_evalset(data, "csv")
    with pytest.raises(LabelError, match="evaluation data not found"):
        load_evalset(tmp_path / "missing.txt")
    with pytest.raises(LabelError, match="targets have shape"):
        EvalSet([tmp_path / "a.jpg"], ["x"], np.zeros((2, 1), bool))


# ---------------------------------------------------------------- end to end on the golden tiny model


def _golden_jsonl(tmp_path, extra=()):
    """JSONL of the 4 golden images whose true tags are the tags the official model gave them."""
    golden = require_shared("golden", "ram_tiny")
    expected = json.loads((golden / "tags.json").read_text())
    names = (golden / "ram_tag_list.txt").read_text(encoding="utf-8").splitlines()
    lines = [
        {"image": str(golden / "images" / image), "tags": [names[i] for i in indices]}
        for image, indices in zip(expected["images"], expected["tag_indices"])
    ]
    data = tmp_path / "golden.jsonl"
    data.write_text("".join(json.dumps(line) + "\n" for line in [*lines, *extra]))
    n_tags = len({t for line in lines for t in line["tags"]})
    return data, n_tags


def _eval(*args):
    return run_cli("eval", *args)


def test_eval_cli_on_own_outputs_is_perfect(converted_golden, tmp_path):
    data, n_tags = _golden_jsonl(tmp_path)
    per_tag = tmp_path / "per_tag.csv"
    result = _eval(converted_golden["ram_tiny"], data, "--runtime", "torch", "--json", "--batch-size", "3", "--per-tag-out", per_tag)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["unit"] == "percent" and report["format"] == "jsonl"
    assert report["images"] == 4 and report["failed_images"] == 0
    assert report["tags_evaluated"] == report["tags_with_positives"] == n_tags and report["tags_skipped"] == 0
    assert report["mAP"] == pytest.approx(100.0)
    for summary in (report["macro"], report["micro"]):
        assert summary == pytest.approx({"precision": 100.0, "recall": 100.0, "f1": 100.0})
    rows = list(csv.DictReader(per_tag.open()))
    assert len(rows) == n_tags and all(float(r["ap"]) == 100.0 and float(r["f1"]) == 100.0 for r in rows)

    human = _eval(converted_golden["ram_tiny"], data, "--format", "jsonl")
    assert human.exit_code == 0, human.output
    assert "mAP:      100.00" in human.stdout and "4 evaluated, 0 failed" in human.stdout
    assert f"{n_tags} evaluated ({n_tags} with positives), 0 skipped" in human.stdout


def test_eval_cli_bad_image_and_unknown_tag(converted_golden, tmp_path):
    extra = [{"image": "missing.jpg", "tags": ["squash"]}, {"image": str(tmp_path / "golden.jsonl"), "tags": ["no such tag"]}]
    data, n_tags = _golden_jsonl(tmp_path, extra)
    result = _eval(converted_golden["ram_tiny"], data, "--json")
    assert result.exit_code == 1, result.output  # the report is complete, but images failed: as `tag` does
    report = json.loads(result.stdout)
    assert report["images"] == 4 and report["failed_images"] == 2
    assert [f["image"] for f in report["failed"]] == [str(tmp_path / "missing.jpg"), str(tmp_path / "golden.jsonl")]
    assert report["skipped_tags"] == ["no such tag"] and report["skipped_positives"] == 1
    assert report["mAP"] == pytest.approx(100.0) and report["tags_evaluated"] == n_tags
    assert "missing.jpg" in result.stderr and "2 of 6 image(s) failed" in result.stderr

    data.write_text(json.dumps({"image": "missing.jpg", "tags": ["squash"]}) + "\n")
    failed = _eval(converted_golden["ram_tiny"], data)
    assert failed.exit_code == 2 and "all 1 images" in failed.stderr and "--image-root" in failed.stderr


def test_evaluate_api_and_report_file(converted_golden, tmp_path):
    from ram_edge.tagger import Tagger
    from ram_edge.training.evaluate import evaluate, write_report

    data, _ = _golden_jsonl(tmp_path)
    tagger = Tagger.load(converted_golden["ram_tiny"], runtime="torch")
    ev = read_jsonl(data, model_tags=tagger.tags)
    # Make one tag wrong on purpose: the image with the lowest score for it is now a negative.
    j = 0
    probs = tagger.scores([str(p) for p in ev.images])[:, tagger.labels.index_of(ev.tag_names[j])]
    ev.targets[:, j] = False
    ev.targets[int(np.argmin(probs)), j] = True
    report = evaluate(tagger, ev, batch_size=2, progress=False)
    assert report.per_tag[j].ap < 100.0 and report.mAP < 100.0
    assert report.per_tag[j].threshold == float(np.format_float_positional(tagger.labels.thresholds[report.per_tag[j].model_index], unique=True))
    out = tmp_path / "report.json"
    write_report(report, out)
    assert json.loads(out.read_text()) == json.loads(json.dumps(report.to_dict()))


def test_tune_thresholds_writes_a_thresholds_file_the_checkpoint_uses(tmp_path):
    """The recipe's threshold tuning, for users: `eval --tune-thresholds` on the default model's examples."""
    import shutil

    assets = Path(__file__).resolve().parents[1] / "ram_edge" / "assets" / "default_model"
    pytest.importorskip("torch", reason="the torch extra is needed: pip install 'ram-edge[torch]'")
    examples = json.loads((assets / "examples" / "examples.json").read_text())
    data = tmp_path / "examples.jsonl"
    data.write_text("".join(json.dumps({"image": str(assets / "examples" / k), "tags": v}) + "\n" for k, v in examples.items()))
    model = tmp_path / "model"
    shutil.copytree(assets / "checkpoint", model)
    before = (model / "thresholds.txt").read_text().splitlines()
    result = _eval(model, data, "--runtime", "torch", "--json", "--tune-thresholds", model)
    assert result.exit_code == 0, result.output
    first = json.loads(result.stdout)
    after = (model / "thresholds.txt").read_text().splitlines()
    assert len(after) == len(before) == 359
    evaluated = {t["model_index"] for t in first["per_tag"] if t["positives"]}
    # Only the tags with a positive in the data changed; every value is a probability.
    assert all(after[i] == before[i] for i in range(359) if i not in evaluated)
    assert all(0 <= float(v) <= 1 for v in after)
    line = [x for x in result.stderr.splitlines() if x.startswith("thresholds:")][0]
    assert f"{len(evaluated)} of 359 tags tuned" in line and f"wrote {model / 'thresholds.txt'}" in line
    f1_before, f1_after = (float(x) for x in line.split("macro F1 here ")[1].split(" (")[0].split(" -> "))
    assert f1_after >= f1_before
    # The checkpoint now tags with the tuned thresholds: its macro F1 on the same data is the tuned one.
    second = json.loads(_eval(model, data, "--runtime", "torch", "--json").stdout)
    assert second["macro"]["f1"] == pytest.approx(f1_after, abs=1e-6)
    assert second["mAP"] == pytest.approx(first["mAP"])
