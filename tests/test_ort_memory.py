"""benchmarks/experiments/ort_memory.py: onnxruntime's arena counters per node, on the shipped default model's bundles."""

import json

import pytest

pytest.importorskip("onnxruntime")

from experiment_scripts import load  # noqa: E402
from ram_edge.default_model import PACKAGE_DIR  # noqa: E402

ort_memory = load("ort_memory")
main, node_memory, summarize = ort_memory.main, ort_memory.node_memory, ort_memory.summarize

BUNDLE = PACKAGE_DIR / "bundle_fp32"


def test_activation_peak_grows_with_the_batch_and_the_weights_do_not():
    one, four = (summarize(node_memory(BUNDLE, batch, threads=1)) for batch in (1, 4))
    assert four["activation_peak_mb"] > 2 * one["activation_peak_mb"] > 0
    assert four["weights_mb"] == pytest.approx(one["weights_mb"], rel=0.1)
    for summary in (one, four):
        # the arena never holds less than it hands out, and the heaviest node is the peak
        assert summary["activations_held_mb"] >= summary["activation_peak_mb"]
        assert summary["heaviest"][0]["node"] == summary["peak_node"]
        readings = [n["activations_mb"] for n in summary["heaviest"]]
        assert readings == sorted(readings, reverse=True)


def test_cli_json_and_markdown(capsys):
    main([str(BUNDLE), "--batch", "2", "--threads", "1", "--top", "3", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["batch"] == 2 and len(out["heaviest"]) == 3 and out["peak_node"] == out["heaviest"][0]["node"]
    main([str(BUNDLE), "--batch", "2", "--threads", "1"])
    text = capsys.readouterr().out
    assert "activations in use at their peak" in text and f"`{out['peak_node']}`" in text


def test_a_folder_that_is_not_a_bundle_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(PACKAGE_DIR / "checkpoint")])
    assert exit_info.value.code == 2
    assert "not a ram-edge bundle" in capsys.readouterr().err
