"""Where an ONNX bundle's memory goes on onnxruntime at a batch size, from onnxruntime's own arena counters.

`python benchmarks/experiments/ort_memory.py BUNDLE [--batch 8] [--threads 2] [--top 8] [--json]`

One profiled run with the `ort` runtime's session options. onnxruntime's profiler records, after
every node, the bytes its CPU arena hands out (`mem_bytes_in_use`) and the bytes the arena holds
from the OS (`mem_arena_held`, which grows in powers of two and is never given back). Before the
first node both are the weights and their pre-packed copies; the rest is activations. The report
names the node where the activations peak, the operators that hold the most, and how much more
the arena holds than it ever hands out: the figures to read before chunking any part of a graph.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ram_edge.errors import BundleError, RamEdgeError, RuntimeUnavailableError

from ram_edge.benchmarks.harness import _cpu_model, _current_rss_mb, _peak_rss_mb

_MIB = float(1 << 20)


def node_memory(bundle: str | Path, batch: int, threads: int | None = None) -> list[dict[str, Any]]:
    """One profiled run of `bundle` at `batch`: per node in execution order, its name, operator and the arena's
    bytes in use and held after it (MiB)."""
    import onnxruntime as ort

    from ram_edge.bundle import read_bundle
    from ram_edge.runtimes.ort_runtime import session_options

    found = read_bundle(bundle)
    if found.format != "onnx":
        raise BundleError(f"{bundle}: a {found.format} bundle; this reads onnxruntime's arena, give an ONNX bundle "
                         f"(`ram-edge export MODEL --format onnx`)")
    options = session_options(threads)
    options.enable_profiling = True
    with tempfile.TemporaryDirectory(prefix="ram-edge-ort-memory-") as tmp:
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(str(found.file("model")), options, providers=["CPUExecutionProvider"])
        size = int(found.preprocess.image_size)
        feed = {found.input_name: np.random.default_rng(0).standard_normal((batch, 3, size, size), dtype=np.float32)}
        session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    nodes = []
    for event in events:
        args = event.get("args", {})
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time") or "mem_bytes_in_use" not in args:
            continue
        nodes.append({"node": event["name"][: -len("_kernel_time")], "op": args.get("op_name", "?"),
                      "in_use_mb": int(args["mem_bytes_in_use"]) / _MIB, "held_mb": int(args["mem_arena_held"]) / _MIB})
    if not nodes:
        raise RuntimeUnavailableError(f"onnxruntime {ort.__version__} records no arena counters in its profile; this needs 1.20 or newer")
    return nodes


def summarize(nodes: list[dict[str, Any]], top: int = 8) -> dict[str, Any]:
    """Weights (the arena's lowest reading), the activation peak and where, the largest steps, the arena's overshoot."""
    # The first node's counters already include its own output: the weights are the smallest reading of the run.
    weights = min(n["in_use_mb"] for n in nodes)
    peak = max(nodes, key=lambda n: n["in_use_mb"])
    held = max(n["held_mb"] for n in nodes)
    heaviest = sorted(nodes, key=lambda n: -n["in_use_mb"])[:top]
    return {"weights_mb": weights, "activation_peak_mb": peak["in_use_mb"] - weights, "peak_node": peak["node"],
            "peak_op": peak["op"], "arena_held_mb": held, "activations_held_mb": held - weights,
            "overshoot": (held - weights) / max(peak["in_use_mb"] - weights, 1e-9),
            "heaviest": [{**n, "activations_mb": n["in_use_mb"] - weights} for n in heaviest]}


def report(bundle: str | Path, batch: int, summary: dict[str, Any], rss: dict[str, float | None]) -> str:
    """Markdown lines for one bundle at one batch size."""
    lines = [
        f"# onnxruntime memory: `{bundle}` at batch {batch}",
        "",
        f"CPU: {_cpu_model()}; process peak RSS {rss['peak_mb']:.0f} MB",
        "",
        f"- the arena's floor (weights and their pre-packed copies: its lowest reading in the run): {summary['weights_mb']:.0f} MB",
        f"- activations in use at their peak: {summary['activation_peak_mb']:.0f} MB, after `{summary['peak_node']}` ({summary['peak_op']})",
        f"- the arena holds {summary['activations_held_mb']:.0f} MB for activations: "
        f"{summary['overshoot']:.2f}x what it ever hands out (it grows in powers of two and keeps what it took)",
        "",
        "| node | op | activations in use MB | arena held MB |",
        "|---|---|---:|---:|",
    ]
    lines += [f"| `{n['node']}` | {n['op']} | {n['activations_mb']:.0f} | {n['held_mb']:.0f} |" for n in summary["heaviest"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Profile one run of a bundle and print where its memory goes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path, help="ONNX bundle folder (manifest.json + model.onnx)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--top", type=int, default=8, help="how many of the heaviest nodes to list")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON instead of markdown")
    args = parser.parse_args(argv)
    if args.batch < 1:
        parser.error(f"--batch {args.batch}: give 1 or more images")
    before = _current_rss_mb()
    try:
        nodes = node_memory(args.bundle, args.batch, args.threads)
    except RamEdgeError as exc:
        parser.exit(2, f"error: {exc}\n")
    summary = summarize(nodes, args.top)
    rss = {"before_load_mb": before, "peak_mb": _peak_rss_mb()}
    if args.json:
        print(json.dumps({"bundle": str(args.bundle), "batch": args.batch, **summary, "rss": rss}, indent=1))
    else:
        sys.stdout.write(report(args.bundle, args.batch, summary, rss))


if __name__ == "__main__":
    main()
