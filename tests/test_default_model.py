"""The shipped default model through the CLI, without torch, on the shipped examples."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ram_edge.default_model import PACKAGE_DIR, default_model_path, example_images

pytestmark = pytest.mark.skipif(
    not (PACKAGE_DIR / "bundle" / "manifest.json").is_file(),
    reason="the default model is not built; run `python recipes/default_model/build.py all`",
)


RUN_CLI = """
import sys
from ram_edge.cli.main import cli
try:
    cli.main(args=sys.argv[1:], prog_name="ram-edge", standalone_mode=False)
    code = 0
except SystemExit as exc:
    code = exc.code
loaded = [m for m in ("torch", "onnx") if m in sys.modules]
if loaded:
    print("loaded:", loaded, file=sys.stderr)
    sys.exit(3)
sys.exit(code or 0)
"""


def test_default_model_finds_the_true_tags_of_the_examples():
    pytest.importorskip("onnxruntime", reason="the ort extra is needed: pip install 'ram-edge[ort]'")
    examples = example_images()
    # No --model: the shipped bundle, through onnxruntime, without importing torch or onnx.
    args = ["tag", "--json", "--runtime", "ort", *map(str, examples)]
    proc = subprocess.run([sys.executable, "-c", RUN_CLI, *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [line["image"] for line in lines] == [str(p) for p in examples]
    true_total = found = predicted = 0
    for line in lines:
        truth = set(examples[next(p for p in examples if str(p) == line["image"])])
        got = {t["tag"] for t in line["tags"]}
        true_total += len(truth)
        found += len(truth & got)
        predicted += len(got)
    # The examples were rendered by the generator with known labels (examples.json). The bars sit
    # under the shipped model's macro recall and precision on the 2000-scene test split (79 / 86 at the
    # shipped thresholds, recipes/default_model/default_model.md): a sanity check, not the accuracy target.
    assert found / true_total >= 0.7, lines
    assert found / max(predicted, 1) >= 0.5, lines


def test_default_model_ranks_the_true_tags_first():
    pytest.importorskip("onnxruntime", reason="the ort extra is needed: pip install 'ram-edge[ort]'")
    from ram_edge import Tagger

    examples = example_images()
    tagger = Tagger.load(default_model_path(), runtime="ort")
    scores = tagger.scores([str(p) for p in examples])
    in_top5, total = 0, 0
    for row, (path, truth) in zip(scores, examples.items()):
        # Ranking is independent of thresholds. Every true tag is among the top 10 of 359 tags, and
        # at least 90% are in the top 5 (the 4700-step model puts scene-4's horse, mostly hidden
        # behind the fire, 6th).
        order = [tagger.tags[i] for i in row.argsort()[::-1]]
        assert set(truth) <= set(order[:10]), (path, truth, order[:10])
        in_top5 += len(set(truth) & set(order[:5]))
        total += len(truth)
    assert in_top5 / total >= 0.9, (in_top5, total)


def test_default_model_paths():
    assert (default_model_path("checkpoint") / "model.safetensors").stat().st_size <= 25 * 2**20
    assert (default_model_path() / "manifest.json").is_file()


def test_default_bundle_is_the_qat_int8_one_and_agrees_with_fp32():
    pytest.importorskip("onnxruntime", reason="the ort extra is needed: pip install 'ram-edge[ort]'")
    from ram_edge import Tagger

    int8, fp32 = default_model_path(), default_model_path("bundle_fp32")
    manifest = json.loads((int8 / "manifest.json").read_text())
    # Shipped by recipes/default_model/build.py quantize once QAT met its targets
    # (recipes/default_model/int8_default_model.md).
    assert manifest["precision"] == "int8" and manifest["quantization"]["method"] == "qat"
    assert json.loads((fp32 / "manifest.json").read_text())["precision"] == "fp32"
    assert (int8 / "model.onnx").stat().st_size < 0.4 * (fp32 / "model.onnx").stat().st_size
    paths = [str(p) for p in example_images()]
    a, b = Tagger.load(int8, runtime="ort"), Tagger.load(fp32, runtime="ort")
    assert a.tags == b.tags
    both = either = 0
    for x, y in zip(a.tag(paths), b.tag(paths)):
        got, ref = {t.tag for t in x.tags}, {t.tag for t in y.tags}
        both, either = both + len(got & ref), either + len(got) + len(ref)
    assert 2 * both / either >= 0.9  # tag-set agreement 0.983 on the 2000-scene test split
