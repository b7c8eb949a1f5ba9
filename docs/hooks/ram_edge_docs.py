"""MkDocs hook of the ram-edge docs: generated reference pages and the committed benchmark reports.

- `<!-- cli-reference -->` in a page is replaced by the `--help` of every command in
  `ram_edge.cli.main.COMMANDS` (and of every subcommand of a group), read from the click objects.
- `<!-- api-reference -->` is replaced by the signatures and first docstring lines of the functions and
  classes listed in API below, read from the source with `ast` (no torch or NNCF import needed).
- The reports under benchmarks/results/ and recipes/default_model/ (outside docs/) are added to the site
  as `results/...` and `results/default_model/...`, so pages link to them and `mkdocs build --strict`
  checks those links.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CLI_MARKER = "<!-- cli-reference -->"
API_MARKER = "<!-- api-reference -->"

# (section title, source file, names: classes list their public methods)
API = [
    ("Tagging", "ram_edge/tagger.py", ["Tagger", "TagResult", "Tag"]),
    ("Micro-batching", "ram_edge/batching.py", ["MicroBatcher"]),
    ("Comparing models", "ram_edge/compare.py", ["compare_scores", "compare_fired", "Agreement", "read_tag_answers"]),
    ("Bundles", "ram_edge/bundle.py", ["Bundle", "read_bundle"]),
    ("Runtimes", "runtimes/registry.py", None),
    ("Export", "export/pipeline.py", ["export", "trt_options"]),
    ("Quantization", "quantize/quantizer.py", ["quantize_checkpoint"]),
    ("Quantization-aware training", "quantize/qat.py", ["quantization_aware_training"]),
    ("Calibration data", "quantize/calibration.py", ["load_calibration"]),
    ("Quantization config", "quantize/config.py", None),
]
SOURCE_TO_MODULE = {"ram_edge": "ram_edge", "runtimes": "ram_edge.runtimes", "export": "ram_edge.export",
                    "quantize": "ram_edge.quantize"}


def _first_line(node: ast.AST) -> str:
    doc = ast.get_docstring(node) or ""
    return " ".join(doc.split("\n\n")[0].split())


def _signature(node: ast.FunctionDef | ast.AsyncFunctionDef, skip_self: bool) -> str:
    args = node.args
    if skip_self and args.args and args.args[0].arg in ("self", "cls"):
        args = ast.arguments(posonlyargs=args.posonlyargs, args=args.args[1:], vararg=args.vararg,
                             kwonlyargs=args.kwonlyargs, kw_defaults=args.kw_defaults, kwarg=args.kwarg,
                             defaults=args.defaults[-len(args.args[1:]):] if args.args[1:] and args.defaults else [])
    text = f"{node.name}({ast.unparse(args)})"
    if node.returns is not None:
        text += f" -> {ast.unparse(node.returns)}"
    return text


def _public(name: str) -> bool:
    return not name.startswith("_") or name in ("__init__", "__enter__", "__exit__")


def api_reference() -> str:
    out = []
    for title, source, names in API:
        path = REPO / source
        tree = ast.parse(path.read_text(encoding="utf-8"))
        folder, stem = source.split("/")[0], Path(source).stem
        module = f"{SOURCE_TO_MODULE[folder]}.{stem}"
        nodes = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        wanted = names or [n for n in nodes if _public(n)]
        out.append(f"## {title}\n\n`{module}` ({source})\n")
        for name in wanted:
            node = nodes[name]  # a KeyError here means the page lists a name the code no longer has
            if isinstance(node, ast.ClassDef):
                out.append(f"### `{name}`\n\n{_first_line(node)}\n")
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and _public(item.name) and item.name != "__init__":
                        out.append(f"- `{_signature(item, True)}`" + (f": {_first_line(item)}" if _first_line(item) else ""))
                init = next((i for i in node.body if isinstance(i, ast.FunctionDef) and i.name == "__init__"), None)
                if init is not None:
                    out.append(f"- `{name}{_signature(init, True)[len('__init__'):]}`: constructor")
                out.append("")
            else:
                out.append(f"### `{name}`\n\n```python\n{_signature(node, False)}\n```\n\n{_first_line(node)}\n")
    return "\n".join(out)


def _help_pages():
    import click

    from ram_edge.cli.main import COMMANDS, cli

    root = click.Context(cli, info_name="ram-edge")
    for name in sorted(COMMANDS):
        command = cli.get_command(root, name)
        yield from _walk(command, click.Context(command, info_name=name, parent=root), f"ram-edge {name}")


def _walk(command, ctx, path):
    import click

    yield path, command.get_help(ctx)
    if isinstance(command, click.Group):
        for sub in command.list_commands(ctx):
            child = command.get_command(ctx, sub)
            yield from _walk(child, click.Context(child, info_name=sub, parent=ctx), f"{path} {sub}")


def cli_reference() -> str:
    out = []
    for path, text in _help_pages():
        out.append(f"## `{path}`\n\n```text\n{text}\n```\n")
    return "\n".join(out)


def on_page_markdown(markdown, page, config, files):
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_reference())
    if API_MARKER in markdown:
        markdown = markdown.replace(API_MARKER, api_reference())
    return markdown


# Reports outside docs/ that the site publishes: (folder in the repository, folder in the site, suffixes)
REPORTS = [("benchmarks/results", "results", (".md", ".png")),
           ("recipes/default_model", "results/default_model", (".md", ".png"))]


def on_files(files, config):
    from mkdocs.structure.files import File

    for source, dest, suffixes in REPORTS:
        root = REPO / source
        for path in sorted(root.rglob("*")):
            if path.suffix in suffixes and path.is_file():
                rel = path.relative_to(root).as_posix()
                files.append(File.generated(config, f"{dest}/{rel}", abs_src_path=str(path)))
    return files
