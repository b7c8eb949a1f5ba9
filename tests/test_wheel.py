"""What the wheel ships of benchmarks/: the bench product (`ram-edge bench`, `bench A B`, `bench --suite`, the GPU
checks), not the repository's experiment scripts or result files."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The modules of ram_edge.benchmarks; an experiment belongs in benchmarks/experiments/, outside the package.
PRODUCT = {"__init__.py", "harness.py", "suite.py", "side_by_side.py", "random_weights.py", "gpu_check.py",
           "gpu_torch_check.py"}
RESULT_SUFFIXES = (".md", ".json", ".png", ".jsonl")
# Never copied to the build: the environment, work files, and outputs of earlier builds (a stale build/lib would
# put files in the wheel that the sources no longer have).
SKIPPED_AT_TOP = {".git", ".venv", "work-out", "build", "dist", ".whl", ".mypy_cache", ".pytest_cache"}


def _ignore(folder: str, names: list[str]) -> set[str]:
    top = Path(folder) == REPO
    return {n for n in names if (top and n in SKIPPED_AT_TOP) or n == "__pycache__" or n.endswith(".egg-info")}


@pytest.fixture(scope="module")
def wheel_files(tmp_path_factory) -> list[str]:
    """The file list of a wheel built from a copy of this checkout (the checkout keeps no build outputs)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "src"
    shutil.copytree(REPO, source, ignore=_ignore, symlinks=True)
    # Without build isolation pip needs no index: the setuptools of this environment builds it.
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(source),
                           "-w", str(root / "out")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = (root / "out").glob("ram_edge-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


@pytest.mark.slow
def test_wheel_ships_the_bench_product_and_no_experiments_or_results(wheel_files):
    ours = [n.removeprefix("ram_edge/benchmarks/") for n in wheel_files if n.startswith("ram_edge/benchmarks/")]
    results = [n for n in ours if n.endswith(RESULT_SUFFIXES)]
    assert not results, f"result files in the wheel: {results}"
    modules = {n for n in ours if n.endswith(".py") and "/" not in n}
    extra = sorted(modules - PRODUCT)
    assert not extra, f"experiment modules in the wheel (move them to benchmarks/experiments/): {extra}"
    assert not [n for n in ours if "/" in n and not n.startswith("suites/")], ours
    assert PRODUCT <= modules, f"missing from the wheel: {sorted(PRODUCT - modules)}"
    suites = sorted(p.name for p in (REPO / "benchmarks" / "suites").glob("*.yaml"))
    assert suites and sorted(n.removeprefix("suites/") for n in ours if n.startswith("suites/")) == suites
