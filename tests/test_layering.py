"""The architecture as a test: imports point one way through the layers.

Low to high: core (`ram_edge/*.py`) < models < runtimes < training < quantize < export < benchmarks < cli.
A module may import its own layer and the layers below it, never one above: every import is read from
the source (imports inside functions included, since a lazy import is still an arrow), with setup.cfg's
package_dir remap resolved. The one exception: the core's Tagger reaches the runtimes through their registry.
"""

from __future__ import annotations

import ast
import configparser
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("core", "models", "runtimes", "training", "quantize", "export", "benchmarks", "cli")
# (importing module, imported module prefix) pairs allowed against the layering.
EXCEPTIONS = {("ram_edge.tagger", "ram_edge.runtimes")}


def package_dirs() -> dict[str, str]:
    """setup.cfg's package_dir: folder -> package (the top-level folders map into ram_edge.*)."""
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    pairs = [line.split("=") for line in parser["options"]["package_dir"].strip().splitlines() if "=" in line]
    return {folder.strip(): package.strip() for package, folder in pairs}


def modules() -> dict[str, Path]:
    """Every module of the package, by its dotted name."""
    found = {}
    for folder, package in package_dirs().items():
        for path in (REPO / folder).rglob("*.py"):
            parts = list(path.relative_to(REPO / folder).with_suffix("").parts)
            if package == "ram_edge.benchmarks" and parts[0] == "experiments":
                continue  # repository-only scripts, not modules of the package (see benchmarks/README.md)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def layer(module: str) -> str:
    """The layer of a dotted module name: ram_edge.<layer>.… or the core."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "core"


def imports(module: str, path: Path) -> list[tuple[str, int]]:
    """(imported ram_edge module, line) for every import statement of the module, wherever it stands."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((target, node.lineno))
            found += [(f"{target}.{alias.name}", node.lineno) for alias in node.names]
    return [(name, line) for name, line in found if name == "ram_edge" or name.startswith("ram_edge.")]


def arrows_against_the_layering() -> list[str]:
    """Each import that points up, as 'file:line: importer (layer) -> imported (layer)'."""
    known = modules()
    wrong = set()
    for module, path in known.items():
        for target, line in imports(module, path):
            if target not in known and target.rsplit(".", 1)[0] in known:
                target = target.rsplit(".", 1)[0]  # `from package import name`: the arrow is to the package module
            if target not in known or any(module == a and target.startswith(b) for a, b in EXCEPTIONS):
                continue
            if LAYERS.index(layer(target)) > LAYERS.index(layer(module)):
                wrong.add(f"{path.relative_to(REPO)}:{line}: {module} ({layer(module)}) -> {target} ({layer(target)})")
    return sorted(wrong)


def test_imports_point_down_the_layers():
    wrong = arrows_against_the_layering()
    assert not wrong, "imports against the layering (" + " < ".join(LAYERS) + "):\n" + "\n".join(wrong)


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    """A lazy import of the CLI from a model module is caught (the checker itself is checked)."""
    probe = REPO / "ram_edge" / "models" / "_layering_probe.py"
    probe.write_text("def f():\n    from ram_edge.cli import main\n    return main\n")
    try:
        wrong = arrows_against_the_layering()
    finally:
        probe.unlink()
    assert any("_layering_probe.py:2" in w and "(models) -> ram_edge.cli" in w for w in wrong), wrong
