"""`ram-edge compare` and `ram-edge eval --reference`: the agreement figures on scripted score matrices (by hand), and
end to end on the shipped fp32 and INT8 bundles through the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from ram_edge.cli.compare import parse_model_spec
from ram_edge.compare import CompareError, common_tags, compare_fired, compare_scores
from ram_edge.labels import LabelSet, tag_set_f1

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "ram_edge" / "assets" / "default_model"
FP32, INT8, EXAMPLES = ASSETS / "bundle_fp32", ASSETS / "bundle", ASSETS / "examples"
IMAGES = sorted(EXAMPLES.glob("*.png"))

# Five images x four tags, threshold 0.5, values exact in float32 so that every figure is exact.
REFERENCE = np.array([
    [0.875, 0.75, 0.125, 0.25],   # {a, b}
    [0.625, 0.125, 0.75, 0.25],   # {a, c}
    [0.25, 0.375, 0.25, 0.375],   # {}
    [0.125, 0.125, 0.125, 0.125],  # {}
    [0.875, 0.75, 0.125, 0.125],  # {a, b}
], np.float32)
MODEL = np.array([
    [0.875, 0.375, 0.625, 0.25],  # {a, c}: F1 0.5, +c -b, |dp| 0 .375 .5 0
    [0.625, 0.125, 0.875, 0.25],  # {a, c}: identical, |dp| 0 0 .125 0
    [0.25, 0.625, 0.25, 0.375],   # {b}: F1 0, +b, |dp| 0 .25 0 0
    [0.125, 0.125, 0.125, 0.125],  # {}: identical, no change at all
    [0.875, 0.125, 0.125, 0.625],  # {a, d}: F1 0.5, +d -b, |dp| 0 .625 0 .5
], np.float32)
NAMES = [f"img{i}.png" for i in range(5)]


def _labels(tags="abcd", threshold=0.5) -> LabelSet:
    return LabelSet(list(tags), None, np.full(len(tags), threshold, np.float32))


def test_figures_on_scripted_scores_are_the_hand_computed_ones():
    got = compare_scores(REFERENCE, MODEL, _labels(), images=NAMES)
    assert got.images == 5 and got.tags == ["a", "b", "c", "d"]
    assert got.tag_set_f1 == pytest.approx((0.5 + 1 + 0 + 1 + 0.5) / 5)
    assert got.identical_sets == pytest.approx(2 / 5) and got.identical_images == 2
    assert got.max_abs_diff == 0.625
    # 20 differences: 14 zeros, .125 .25 .375 .5 .5 .625; p99 at position 0.99 * 19 = 18.81 (linear).
    assert got.p99_abs_diff == pytest.approx(0.5 + 0.81 * 0.125)
    assert got.gained == [("b", 1), ("c", 1), ("d", 1)]  # equal counts: in tag order
    assert got.lost == [("b", 2)]
    # Lowest F1 first, then the largest max |dp|; img3 (nothing moved) is not listed.
    assert [(c.image, c.tag_set_f1, c.max_abs_diff, c.gained, c.lost) for c in got.changed_images] == [
        ("img2.png", 0.0, 0.25, ["b"], []),
        ("img4.png", 0.5, 0.625, ["d"], ["b"]),
        ("img0.png", 0.5, 0.5, ["c"], ["b"]),
        ("img1.png", 1.0, 0.125, [], []),
    ]
    assert got.reference_only == got.model_only == []
    # The same F1 as every other agreement figure of the project (export validation, quantize sensitivity).
    labels = _labels()
    assert got.tag_set_f1 == pytest.approx(float(tag_set_f1(labels.fired(REFERENCE), labels.fired(MODEL)).mean()))
    top = compare_scores(REFERENCE, MODEL, _labels(), images=NAMES, top_tags=2, top_images=2)
    assert top.gained == [("b", 1), ("c", 1)] and [c.image for c in top.changed_images] == ["img2.png", "img4.png"]
    data = got.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["gained"][0] == {"tag": "b", "count": 1} and data["changed_images"][0]["image"] == "img2.png"


def test_each_model_fires_by_its_own_thresholds_and_tags_are_matched_by_name():
    # The model knows d, c and x (in that order) and fires above 0.7: only its c of img1 (0.875) fires.
    model_labels = _labels("dcx", 0.7)
    model = MODEL[:, [3, 2, 0]]
    got = compare_scores(REFERENCE, model, model_labels, _labels(), images=NAMES)
    assert got.tags == ["c", "d"]  # the reference's order
    assert got.reference_only == ["a", "b"] and got.model_only == ["x"]
    # Over {c, d}: the reference fires c on img1 only; the model c on img1 only.
    assert got.identical_sets == 1.0 and got.tag_set_f1 == 1.0
    assert got.max_abs_diff == 0.5  # img4's d, 0.125 -> 0.625
    chosen = compare_scores(REFERENCE, MODEL, _labels(), tags=["b"])
    assert chosen.tags == ["b"] and chosen.lost == [("b", 2)] and chosen.gained == [("b", 1)]


def test_tag_sets_without_probabilities():
    reference, model = _labels().fired(REFERENCE), _labels().fired(MODEL)
    got = compare_fired(reference, model, ["a", "b", "c", "d"], images=NAMES)
    assert got.max_abs_diff is None and got.p99_abs_diff is None
    assert got.tag_set_f1 == pytest.approx(0.6)
    # Without |dp| only the images whose tag set changed are listed, by F1.
    assert [c.image for c in got.changed_images] == ["img2.png", "img0.png", "img4.png"]
    assert all(c.max_abs_diff is None for c in got.changed_images)


def test_comparisons_that_cannot_be_made_are_refused():
    with pytest.raises(CompareError, match=r"fp32 and int8 have no tag in common .*'a'.*'y'.*same tag list"):
        common_tags([["a", "b"], ["y", "z"]], ["fp32", "int8"])
    assert common_tags([["b", "a", "c"], ["c", "a"], ["a", "c", "q"]]) == ["a", "c"]
    with pytest.raises(CompareError, match="no tag in common"):
        compare_scores(REFERENCE, MODEL[:, :2], _labels("yz"), _labels())
    with pytest.raises(CompareError, match="3 image rows and the model 5"):
        compare_scores(REFERENCE[:3], MODEL, _labels())
    broken = MODEL.copy()
    broken[1, 2] = np.nan
    with pytest.raises(CompareError, match="NaN .* drop the rows of images that failed"):
        compare_scores(REFERENCE, broken, _labels())
    with pytest.raises(CompareError, match=r"expected \(images, 4\)"):
        compare_scores(REFERENCE, MODEL[:, :3], _labels())
    with pytest.raises(CompareError, match="no image to compare"):
        compare_scores(REFERENCE[:0], MODEL[:0], _labels())


def test_model_spec_runtime_suffix_and_aliases(tmp_path):
    assert (parse_model_spec("b@ort").path, parse_model_spec("b@ort").runtime) == (Path("b"), "ort")
    assert parse_model_spec("b@onnxruntime").runtime == "ort"
    assert parse_model_spec("b@TensorRT").runtime == "trt"
    assert parse_model_spec("b@openvino").runtime == "openvino"
    assert parse_model_spec("b").runtime == "auto"
    odd = tmp_path / "run@2"  # a folder whose own name holds '@' is taken whole
    odd.mkdir()
    assert parse_model_spec(str(odd)).path == odd and parse_model_spec(str(odd)).runtime == "auto"
    with pytest.raises(CompareError, match=r"--model b@onxruntime: unknown runtime 'onxruntime' \(did you mean "
                                           r"'onnxruntime'\?\); available: auto, .*; write PATH@RUNTIME, e.g. --model b@ort"):
        parse_model_spec("b@onxruntime")


# --- end to end on the shipped bundles --------------------------------------------------------------------------

def _cli(*args):
    return run_cli(*args)


def _one_line_error(result, *fragments):
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def probs():
    """The bundles' probabilities on the examples through the Python API, as the CLI batches them."""
    pytest.importorskip("onnxruntime", reason="the ort extra is needed: pip install 'ram-edge[ort]'")
    from ram_edge.tagger import Tagger

    out = {}
    for name, path in (("fp32", FP32), ("int8", INT8)):
        with Tagger.load(path, runtime="ort") as tagger:
            results, p = tagger.tag_many([str(i) for i in IMAGES])
            out[name] = (tagger.labels, p, [[t.tag for t in r.tags] for r in results])
    return out


def test_compare_fp32_and_int8_bundles_on_the_examples(probs):
    pytest.importorskip("openvino", reason="the openvino extra is needed: pip install 'ram-edge[openvino]'")
    result = _cli("compare", "-m", FP32, "--model", f"{INT8}@openvino", "-m", f"{INT8}@onnxruntime", EXAMPLES, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["reference"] == str(FP32) and report["images"] == len(IMAGES) and report["failed"] == []
    assert report["tags_compared"] == 359
    fp32, ov, ort = report["models"]
    assert [m["runtime"] for m in report["models"]] == ["ort", "openvino", "ort"]
    assert [m["model"] for m in report["models"]] == [str(FP32), f"{INT8}@openvino", f"{INT8}@onnxruntime"]
    assert fp32["agreement"] is None
    # Per model its tag sets, as `tag` gives them.
    images = [str(i) for i in IMAGES]
    assert fp32["tag_sets"] == [{"image": i, "tags": t} for i, t in zip(images, probs["fp32"][2])]
    assert ort["tag_sets"] == [{"image": i, "tags": t} for i, t in zip(images, probs["int8"][2])]
    # The figures are compare_scores' on the same probabilities.
    labels, p32, _ = probs["fp32"]
    expected = compare_scores(p32, probs["int8"][1], probs["int8"][0], labels, images=images).to_dict()
    got = ort["agreement"]
    for key in ("tag_set_f1", "identical_sets", "identical_images", "gained", "lost", "tags_compared"):
        assert got[key] == expected[key], key
    assert got["max_abs_diff"] == pytest.approx(expected["max_abs_diff"], abs=1e-6)
    assert got["p99_abs_diff"] == pytest.approx(expected["p99_abs_diff"], abs=1e-6)
    assert [c["image"] for c in got["changed_images"]] == [c["image"] for c in expected["changed_images"]]
    for agreement in (ov["agreement"], ort["agreement"]):
        assert 0.9 <= agreement["tag_set_f1"] <= 1 and 0 < agreement["p99_abs_diff"] <= agreement["max_abs_diff"] < 0.1
        assert len(agreement["changed_images"]) == 5 and len(agreement["gained"]) <= 10


def test_compare_human_table(probs):
    result = _cli("compare", "-m", FP32, "-m", f"{INT8}@ort", EXAMPLES)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "images:    6 compared, 0 failed" and lines[1] == "tags:      359 compared"
    header = next(line for line in lines if line.startswith("model"))
    assert header.split() == ["model", "tag-set", "F1", "identical", "max", "|Δp|", "p99", "|Δp|"]
    assert any(line.startswith(f"{FP32} (reference)") for line in lines)
    row = next(line for line in lines if line.startswith(f"{INT8}@ort "))
    assert "/6 (" in row and "%)" in row
    assert f"{INT8}@ort against {FP32}:" in lines and any(line.startswith("  gained: ") for line in lines)
    changed = lines[lines.index("  changed most:") + 1:]
    assert len(changed) == 5 and all(line.startswith(tuple(f"    {i}: F1 " for i in IMAGES)) for line in changed)


def test_compare_with_labels_reports_map_in_a_subprocess_without_torch(tmp_path):
    pytest.importorskip("onnxruntime", reason="the ort extra is needed: pip install 'ram-edge[ort]'")
    truth = json.loads((EXAMPLES / "examples.json").read_text())
    labels = tmp_path / "truth.jsonl"
    # The eval data format: paths relative to the file's folder.
    os.symlink(EXAMPLES, tmp_path / "photos")
    labels.write_text("".join(json.dumps({"image": f"photos/{k}", "tags": v}) + "\n" for k, v in truth.items()))
    args = ["compare", "--model", str(FP32), "--model", f"{INT8}@ort", str(EXAMPLES), "--labels", str(labels), "--json"]
    code = ("import atexit, sys\n"
            "atexit.register(lambda: sys.stderr.write('torch imported: %s\\n' % ('torch' in sys.modules)))\n"
            f"from ram_edge.cli.main import main\nmain({args!r})\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "torch imported: False" in done.stderr
    report = json.loads(done.stdout)
    assert report["labels"] == {"file": str(labels), "images": 6, "unlabelled_images": 0, "tags": 12,
                                "tags_with_positives": 12}
    # The same mAP as `ram-edge eval` of each bundle on that data.
    for model in report["models"]:
        evaluated = _cli("eval", model["path"], labels, "--runtime", "ort", "--json")
        assert evaluated.exit_code == 0, evaluated.output
        assert model["mAP"] == pytest.approx(json.loads(evaluated.stdout)["mAP"])


def test_broken_image_and_empty_folder_are_reported_and_skipped(tmp_path):
    pytest.importorskip("onnxruntime", reason="the ort extra is needed: pip install 'ram-edge[ort]'")
    broken = tmp_path / "broken.png"
    broken.write_bytes(IMAGES[0].read_bytes()[:300])
    (tmp_path / "empty").mkdir()
    result = _cli("compare", "-m", FP32, "-m", f"{INT8}@ort", IMAGES[1], broken, IMAGES[2], tmp_path / "empty", "--json")
    assert result.exit_code == 1, result.output  # the report is complete, but inputs failed: as `tag` does
    report = json.loads(result.stdout)
    assert report["images"] == 2 and report["failed_images"] == 2
    assert [f["image"] for f in report["failed"]] == [str(broken), str(tmp_path / "empty")]
    assert "truncated or corrupt" in report["failed"][0]["error"] and "holds no image files" in report["failed"][1]["error"]
    assert [t["image"] for t in report["models"][1]["tag_sets"]] == [str(IMAGES[1]), str(IMAGES[2])]
    assert report["models"][1]["agreement"]["images"] == 2
    assert f"error: {broken}: truncated" in result.stderr and "2 of 4 input(s) failed" in result.stderr
    assert "Traceback" not in result.output

    only_broken = _cli("compare", "-m", FP32, "-m", INT8, broken)
    _one_line_error(only_broken, "nothing to compare", str(broken))  # the one failure, then the refusal
    assert only_broken.exit_code == 2


def _relabelled(source: Path, dest: Path, rename) -> Path:
    """A copy of a bundle whose tag names are renamed by `rename` (the weights unchanged)."""
    shutil.copytree(source, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    manifest["labels"]["tags"] = [rename(i, t) for i, t in enumerate(manifest["labels"]["tags"])]
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


def test_mismatched_label_sets_compare_the_common_tags(tmp_path):
    pytest.importorskip("onnxruntime", reason="the ort extra is needed: pip install 'ram-edge[ort]'")
    renamed = _relabelled(FP32, tmp_path / "renamed", lambda i, t: f"{t} (renamed)" if i < 10 else t)
    result = _cli("compare", "-m", FP32, "-m", renamed, *IMAGES, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["tags_compared"] == 349
    tags = json.loads((FP32 / "manifest.json").read_text())["labels"]["tags"]
    assert report["models"][0]["tags_not_compared"] == tags[:10]
    assert report["models"][1]["tags_not_compared"] == [f"{t} (renamed)" for t in tags[:10]]
    agreement = report["models"][1]["agreement"]
    # The same weights: on the common tags nothing differs.
    assert agreement["max_abs_diff"] == 0.0 and agreement["tag_set_f1"] == 1.0 and agreement["changed_images"] == []
    assert agreement["tags_only_in_reference"] == tags[:10]
    assert "note: the tag lists differ: compared the 349 tag(s) every model has" in result.stderr
    human = _cli("compare", "-m", FP32, "-m", renamed, IMAGES[0])
    assert "tags:      349 compared (only those every model has)" in human.stdout

    foreign = _relabelled(FP32, tmp_path / "foreign", lambda i, t: f"other {i}")
    _one_line_error(_cli("compare", "-m", FP32, "-m", foreign, IMAGES[0]), f"{FP32} and {foreign} have no tag in common",
                    "same tag list")


def test_errors_are_one_line_naming_the_input():
    _one_line_error(_cli("compare", "-m", FP32, "-m", f"{INT8}@onnx", IMAGES[0]), f"--model {INT8}@onnx: unknown runtime "
                    "'onnx'", "available: auto")
    _one_line_error(_cli("compare", "-m", FP32, IMAGES[0]), "at least two models", "--model")
    _one_line_error(_cli("compare", "-m", FP32, "-m", ASSETS / "missing", IMAGES[0]),
                    f"--model {ASSETS / 'missing'}: model {ASSETS / 'missing'} does not exist", "ram-edge export")
    _one_line_error(_cli("compare", "-m", f"{ASSETS / 'checkpoint'}@ort", "-m", FP32, IMAGES[0]),
                    "runtime 'ort' cannot run a 'checkpoint' model", "drop '@ort'")


# --- eval --reference --------------------------------------------------------------------------------------------

@pytest.fixture
def truth(tmp_path) -> Path:
    data = tmp_path / "truth.jsonl"
    data.write_text("".join(json.dumps({"image": str(EXAMPLES / k), "tags": v}) + "\n"
                            for k, v in json.loads((EXAMPLES / "examples.json").read_text()).items()))
    return data


def test_eval_against_a_reference_model(truth):
    pytest.importorskip("onnxruntime", reason="the ort extra is needed: pip install 'ram-edge[ort]'")
    result = _cli("eval", INT8, truth, "--reference", f"{FP32}@onnxruntime", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["reference_kind"] == "model" and report["images"] == 6 and report["failed"] == []
    # The figures of `compare` on the same pair.
    compared = json.loads(_cli("compare", "-m", f"{FP32}@ort", "-m", f"{INT8}@ort", *IMAGES, "--json").stdout)
    assert report["agreement"] == compared["models"][1]["agreement"]
    # DATA has labels: mAP of both, as plain `eval` gives it.
    plain = json.loads(_cli("eval", INT8, truth, "--runtime", "ort", "--json").stdout)
    assert report["mAP"]["model"] == pytest.approx(plain["mAP"]) and report["mAP"]["reference"] is not None
    human = _cli("eval", INT8, EXAMPLES, "--reference", FP32)
    assert human.exit_code == 0, human.output
    assert f"reference: {FP32}" in human.stdout and f"{INT8} against {FP32}:" in human.stdout


def test_eval_against_tag_json_written_by_the_cli(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime", reason="the ort extra is needed: pip install 'ram-edge[ort]'")
    monkeypatch.chdir(tmp_path)
    os.symlink(EXAMPLES, tmp_path / "photos")
    broken = tmp_path / "photos-broken.png"
    broken.write_bytes(b"not a png")
    # The reference: fp32's top tag per image, relative paths (`tag` prints them as given) and one failed image.
    tagged = _cli("tag", "photos", broken.name, "--model", FP32, "--json", "--top-k", "1")
    assert tagged.exit_code == 1, tagged.output
    (tmp_path / "fp32_top1.jsonl").write_text(tagged.stdout)
    top1 = {Path(r["image"]).name: [t["tag"] for t in r["tags"]] for r in map(json.loads, tagged.stdout.splitlines())
            if "tags" in r}
    int8 = {Path(r["image"]).name: [t["tag"] for t in r["tags"]]
            for r in map(json.loads, _cli("tag", EXAMPLES, "--model", INT8, "--json").stdout.splitlines())}
    f1 = [2 * len(set(top1[k]) & set(int8[k])) / (len(top1[k]) + len(int8[k])) for k in sorted(top1)]

    # DATA is the image folder, named otherwise than in the reference: matched by path.
    result = _cli("eval", INT8, EXAMPLES, "--reference", "fp32_top1.jsonl", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["reference_kind"] == "tags file" and report["images"] == 6 and report["unmatched_images"] == 0
    agreement = report["agreement"]
    assert agreement["tag_set_f1"] == pytest.approx(sum(f1) / len(f1))
    assert agreement["max_abs_diff"] is None and agreement["tags_compared"] == 359
    order = json.loads((INT8 / "manifest.json").read_text())["labels"]["tags"]

    def flips(a, b):  # tags in a's sets and not in b's, most often first, ties in tag order, top 10
        counts = {}
        for k in top1:
            for t in set(a[k]) - set(b[k]):
                counts[t] = counts.get(t, 0) + 1
        return [{"tag": t, "count": c} for t, c in sorted(counts.items(), key=lambda tc: (-tc[1], order.index(tc[0])))][:10]

    assert agreement["gained"] == flips(int8, top1) and agreement["lost"] == flips(top1, int8)
    assert agreement["gained"]  # top-1 against every tag: the model gains some
    assert agreement["identical_images"] == sum(1 for k in top1 if set(top1[k]) == set(int8[k]))

    # What was refused before: the `tag --json` file as DATA scores MODEL against it; its failed image is reported.
    direct = _cli("eval", INT8, "fp32_top1.jsonl", "--json")
    assert direct.exit_code == 1, direct.output
    assert "note: fp32_top1.jsonl is `ram-edge tag --json` output" in direct.stderr
    direct_report = json.loads(direct.stdout)
    same = direct_report["agreement"]
    assert {k: v for k, v in same.items() if k != "changed_images"} == {k: v for k, v in agreement.items()
                                                                         if k != "changed_images"}
    assert [Path(c["image"]).name for c in same["changed_images"]] == [Path(c["image"]).name
                                                                       for c in agreement["changed_images"]]
    assert same["changed_images"][0]["image"].startswith("photos/")  # named as the reference names it
    assert [f["image"] for f in direct_report["failed"]] == [broken.name]
    assert "the reference failed on it" in direct_report["failed"][0]["error"]

    # The plain workflow: fp32's answers as `tag --json` prints them, the INT8 bundle scored against them.
    plain = _cli("tag", EXAMPLES, "--model", FP32, "--json")
    (tmp_path / "fp32_tags.jsonl").write_text(plain.stdout)
    for args in (["fp32_tags.jsonl"], [EXAMPLES, "--reference", "fp32_tags.jsonl", "--json"]):
        scored = _cli("eval", INT8, *args)
        assert scored.exit_code == 0 and "Traceback" not in scored.output, scored.output
    assert json.loads(scored.stdout)["images"] == 6 and json.loads(scored.stdout)["agreement"]["tag_set_f1"] > 0.9

    # A reference without some images: the others are scored, the missing ones said.
    lines = tagged.stdout.splitlines()
    (tmp_path / "partial.jsonl").write_text("\n".join(lines[:2]) + "\n")
    partial = _cli("eval", INT8, EXAMPLES, "--reference", "partial.jsonl", "--json")
    assert partial.exit_code == 0, partial.output
    assert json.loads(partial.stdout)["images"] == 2 and json.loads(partial.stdout)["unmatched_images"] == 4
    assert "warning: 4 of 6 image(s)" in partial.stderr


def test_eval_reference_errors(truth, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"image": "a.png", "tags": [1]}) + "\n")
    _one_line_error(_cli("eval", INT8, truth, "--reference", bad), f"{bad}, line 1", "ram-edge tag --json")
    _one_line_error(_cli("eval", INT8, truth, "--reference", f"{FP32}@nope"), f"--reference {FP32}@nope: unknown runtime")
    _one_line_error(_cli("eval", INT8, truth, "--reference", FP32, "--tune-thresholds", tmp_path / "t.txt"),
                    "--tune-thresholds needs ground truth")
    elsewhere = tmp_path / "elsewhere.jsonl"
    elsewhere.write_text(json.dumps({"image": "/nowhere/x.png", "tags": [{"tag": "dog", "score": 0.9}]}) + "\n")
    _one_line_error(_cli("eval", INT8, truth, "--reference", elsewhere), "none of the 6 image(s)", "matched by path")
