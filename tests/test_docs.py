"""The documentation builds and its commands are real: `mkdocs build --strict` passes, every `ram-edge` command in
a code block names a real command and only options that command takes, and every command a user can run here (on
the shipped default model) runs; the others are allowed below with the reason they cannot run in the test suite."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest

from ram_edge.cli.main import COMMANDS, cli

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md")) + [REPO / "README.md"]
SHELL = {"bash", "sh", "shell", "console"}
DEFAULT_MODEL = "ram_edge/assets/default_model"

# Commands of the docs that the test suite does not run, and why: (pattern searched in the command, reason).
ALLOWED = [
    (r"\.pth\b|ram_plus|ram_l384|\bpets\b|\bmine\b", "needs the official RAM / RAM++ weights (GBs, downloaded by hand)"),
    (r"^ram-edge pull ", "downloads the official weights (GBs); tests/test_pull.py runs it against a local server"),
    (r"--format trt|--runtime trt|csi://|--dla-core|--device (cuda|tensorrt|GPU|NPU)", "needs an NVIDIA GPU with TensorRT, or an Intel iGPU/NPU"),
    (r"^ram-edge watch ", "needs a camera, a video file or a network stream"),
    (r"--suite\b", "a benchmark suite takes minutes to hours"),
    (r"^ram-edge train run\.yaml$", "run by tests/test_training.py::test_readme_minimal_jsonl_run_trains_and_tags"),
    (r"^torchrun ", "needs GPUs (NCCL)"),
    (r"runs/first/model|output_dir/", "needs the model of a training run"),
    (r"^ram-edge (engine|labels|parse|data) ", "needs the user's data set"),
    (r"photos/|my_photos/|~/Pictures|photo\.jpg|holiday\.jpg|MODEL_OR_BUNDLE|\bA B C\b|val\.jsonl|test\.jsonl|bundle/ |"
     r"ram-edge tag DIR|FILE", "a placeholder for the user's own files"),
]


def _blocks(path: Path):
    """(language, text) of every fenced code block of a Markdown file."""
    text = path.read_text(encoding="utf-8")
    for match in re.finditer(r"^```(\w*)[^\n]*\n(.*?)^```", text, re.M | re.S):
        yield match.group(1), match.group(2)


def _commands(block: str) -> list[tuple[str, dict[str, str]]]:
    """The `ram-edge ...` (and `torchrun ... ram-edge ...`) commands of a shell block, with the variables set before."""
    out, env = [], {}
    for line in block.replace("\\\n", " ").splitlines():
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError:
            continue
        segment: list[str] = []
        redirected = False
        for token in tokens + ["&&"]:
            if token in ("&&", "||", ";", "|"):
                words = segment
                while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
                    name, value = words.pop(0).split("=", 1)
                    env[name] = value
                if words and (words[0] == "ram-edge" or (words[0] == "torchrun" and "ram-edge" in words)):
                    out.append((shlex.join(words), dict(env)))
                segment, redirected = [], False
            elif token.startswith(">") or redirected:
                redirected = True  # a redirect and its target are not part of the command
            else:
                segment.append(token)
    return out


def doc_commands() -> list[tuple[str, str, dict[str, str]]]:
    """(page, command, variables) for every ram-edge command in a shell block of the docs and the README."""
    found = []
    for page in PAGES:
        for language, block in _blocks(page):
            if language in SHELL:
                for command, env in _commands(block):
                    found.append((str(page.relative_to(REPO)), command, env))
    return found


def _resolve(words: list[str]) -> tuple[click.Command, list[str], list[str]]:
    """The click command a `ram-edge ...` word list names, its path, and the words after it."""
    if words[0] == "torchrun":
        words = words[words.index("ram-edge"):]
    ctx = click.Context(cli, info_name="ram-edge")
    assert words[1] in COMMANDS, f"`{' '.join(words)}`: no command {words[1]!r}; commands: {sorted(COMMANDS)}"
    command, path, rest = cli.get_command(ctx, words[1]), ["ram-edge", words[1]], words[2:]
    while isinstance(command, click.Group):
        sub = next(w for w in rest if not w.startswith("-"))
        child = command.get_command(ctx, sub)
        assert child is not None, f"`{' '.join(words)}`: {' '.join(path)} has no subcommand {sub!r}"
        rest = rest[rest.index(sub) + 1:]
        command, path = child, path + [sub]
    return command, path, rest


def _options(command: click.Command) -> set[str]:
    names = {"--help", "-h"}
    for param in command.params:
        if isinstance(param, click.Option):
            names.update(param.opts)
            names.update(param.secondary_opts)
    return names


COMMANDS_IN_DOCS = doc_commands()


def test_the_docs_hold_commands():
    pages = {page for page, _, _ in COMMANDS_IN_DOCS}
    assert len(COMMANDS_IN_DOCS) > 50 and len(pages) > 10, pages


@pytest.mark.parametrize("page,command", [(p, c) for p, c, _ in COMMANDS_IN_DOCS])
def test_doc_command_names_a_real_command_and_its_options(page, command):
    """A renamed command or option in the CLI, or a misspelt one in the docs, fails here (the same names --help lists)."""
    words = shlex.split(command.replace("$M", DEFAULT_MODEL))
    cmd, path, rest = _resolve(words)
    valid = _options(cmd)
    for word in rest:
        if word.startswith("-") and not re.match(r"^-\d", word) and word != "-":
            name = word.split("=", 1)[0]
            assert name in valid, f"{page}: `{command}`: {' '.join(path)} has no option {name}; it has {sorted(valid)}"


def _allowed(command: str) -> str | None:
    for pattern, reason in ALLOWED:
        if re.search(pattern, command):
            return reason
    return None


def test_every_doc_command_is_run_or_allowed_with_a_reason():
    """Every command either runs here (test below) or matches ALLOWED; this lists what the docs leave to the user."""
    runnable = [(p, c) for p, c, _ in COMMANDS_IN_DOCS if _allowed(c) is None]
    for page, command in runnable:
        assert DEFAULT_MODEL in command or "$M" in command, (
            f"{page}: `{command}` is neither run by the tests (it does not use the shipped default model) nor in ALLOWED")


@pytest.mark.slow
@pytest.mark.parametrize("page", sorted({p for p, c, _ in COMMANDS_IN_DOCS if _allowed(c) is None}))
def test_runnable_doc_commands_run(page, tmp_path):
    """The commands of a page that use the shipped default model run in the page's order and succeed."""
    pytest.importorskip("onnxruntime", reason="the ort extra is needed: pip install 'ram-edge[ort]'")
    (tmp_path / "ram_edge").symlink_to(REPO / "ram_edge", target_is_directory=True)
    page_path = REPO / page
    for language, block in _blocks(page_path):
        if language not in SHELL:
            continue
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if not line or line.startswith("#"):
                continue
            segments = [s.strip() for s in line.split("&&")]
            for segment in segments:
                if not re.search(r"(^|\s)ram-edge\s", segment) or _allowed(shlex.join(shlex.split(segment.split(">")[0]))):
                    continue
                env = dict(os.environ, M=DEFAULT_MODEL, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
                script = f"M={DEFAULT_MODEL}\n{segment}\n"
                proc = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                                      timeout=600)
                assert proc.returncode == 0, f"{page}: `{segment}` exited {proc.returncode}:\n{proc.stderr[-2000:]}"


def test_python_blocks_on_the_default_model_run(tmp_path):
    """Python examples that use only the shipped default model run as printed."""
    pytest.importorskip("onnxruntime", reason="the ort extra is needed: pip install 'ram-edge[ort]'")
    ran = 0
    for page in PAGES:
        for language, block in _blocks(page):
            if language == "python" and DEFAULT_MODEL in block:
                proc = subprocess.run([sys.executable, "-c", block], cwd=REPO, capture_output=True, text=True, timeout=300)
                assert proc.returncode == 0, f"{page}: python block failed:\n{block}\n{proc.stderr[-2000:]}"
                ran += 1
    assert ran >= 1


@pytest.mark.slow
def test_mkdocs_build_strict(tmp_path):
    """The site builds with no broken link or anchor (mkdocs.yml: strict), the CLI and API pages generated."""
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None:
        pytest.skip("mkdocs-material is not installed: pip install 'ram-edge[docs]'")
    site = tmp_path / "site"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    cli_page = (site / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    for name in COMMANDS:
        assert f"ram-edge {name}" in cli_page, name
    assert "quantize_checkpoint" in (site / "reference" / "api" / "index.html").read_text(encoding="utf-8")
    assert (site / "results" / "soak" / "soak" / "index.html").is_file() or (site / "results" / "soak" / "soak.html").is_file()
