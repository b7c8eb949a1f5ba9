"""A runtime's two ways with INT8 bundles on a CPU, against fp32, on this CPU in one run.

`python benchmarks/experiments/ov_int8_kernels.py --fp32 FP32_BUNDLE --int8 INT8_BUNDLE [--runtime openvino|ort] [--report MD]`

The `openvino` runtime compiles an INT8 bundle to int8 kernels where the CPU has VNNI or AMX and, on x86 CPUs
with AVX2 only, with OpenVINO's low-precision transformations off (float kernels on the 8-bit weights;
runtimes/openvino_runtime.py). The `ort` runtime computes INT8 bundles on x86 CPUs without VNNI with onnxruntime's
exact U8U8 kernels instead of its U8S8 ones, which saturate there (runtimes/ort_runtime.py). This times the three
ways (fp32 bundle; INT8 with the runtime's setting on; INT8 with it off), each cell a fresh `ram-edge bench --json`
process, in rounds that interleave them (every second round reversed) so machine drift hits all alike; a cell's
figure is the median of its rounds.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

import numpy as np

from ram_edge.errors import RamEdgeError
from ram_edge.fileio import atomic_file
from ram_edge.benchmarks.harness import INT8_SETTINGS, cpu_features, log, relative_to_cwd, run_cli

CELLS = (("fp32", "auto"), ("int8", "on"), ("int8", "off"))
TITLES = {"openvino": "OpenVINO INT8 with and without its int8 kernels",
          "ort": "onnxruntime INT8 on its U8U8 (on) and U8S8 (off) kernels"}


def bench_cell(bundle: Path, setting: str, batch: int, iters: int, warmup: int, threads: int, runtime: str = "openvino") -> dict:
    """One `ram-edge bench --json` run of `bundle` on `runtime` in a fresh process with its INT8 setting."""
    out = run_cli("bench", bundle, "--runtime", runtime, "--batch-size", batch, "--iters", iters, "--warmup", warmup,
                  "--threads", threads, "--json", capture=True, env={INT8_SETTINGS[runtime][0]: setting})
    return json.loads(out)


def run(fp32: Path, int8: Path, rounds: int, batch: int, iters: int, warmup: int, threads: int,
        runtime: str = "openvino") -> dict:
    """Interleaved rounds of the three cells; per cell its p50 per image in every round and its peak memory."""
    bundles = {"fp32": fp32, "int8": int8}
    results: dict[str, dict] = {f"{p}/{k}": {"precision": p, "int8_kernels": k, "ms": [], "rss_mb": []} for p, k in CELLS}
    for r in range(rounds):
        order = CELLS if r % 2 == 0 else tuple(reversed(CELLS))
        for precision, kernels in order:
            log(f"round {r + 1}/{rounds}: {precision} ({INT8_SETTINGS[runtime][1]}: {kernels})")
            out = bench_cell(bundles[precision], kernels, batch, iters, warmup, threads, runtime)
            cell = results[f"{precision}/{kernels}"]
            cell["ms"].append(out["latency_image_ms"]["p50"])
            cell["rss_mb"].append(out["peak_rss_mb"])
    fp32_ms = float(np.median(results["fp32/auto"]["ms"]))
    for cell in results.values():
        cell["median_ms"] = float(np.median(cell["ms"]))
        cell["speedup_vs_fp32"] = fp32_ms / cell["median_ms"]
        cell["peak_rss_mb"] = float(np.median(cell["rss_mb"]))
    return {"date": datetime.date.today().isoformat(), "cpu": cpu_features(), "runtime": runtime, "batch": batch, "threads": threads,
            "iters": iters, "warmup": warmup, "rounds": rounds, "fp32": str(fp32), "int8": str(int8), "cells": results}


def markdown(result: dict, command: str) -> str:
    """The report: machine, command and one row per cell."""
    cpu = result["cpu"]
    runtime = result.get("runtime", "openvino")
    setting, title = INT8_SETTINGS[runtime][1], TITLES[runtime]
    lines = [f"# {title}", "",
             f"Machine: {cpu['model']}, {cpu['cores']} cores, features {', '.join(cpu['features']) or 'unknown'} "
             f"(VNNI: {'yes' if cpu['vnni'] else 'no'}); {result['threads']} threads  ",
             f"Date: {result['date']}; command: `{command}`  ",
             f"Batch {result['batch']}, {result['iters']} timed runs after {result['warmup']} per cell, {result['rounds']} "
             "interleaved rounds; a cell's figure is the median of its rounds", "",
             f"| bundle | {setting} | ms/image (median) | per round | vs fp32 | peak RSS MB |", "|---|---|---:|---|---:|---:|"]
    for cell in result["cells"].values():
        kernels = "–" if cell["precision"] == "fp32" else cell["int8_kernels"]
        lines.append(f"| {cell['precision']} | {kernels} | {cell['median_ms']:.2f} | "
                     f"{', '.join(f'{m:.1f}' for m in cell['ms'])} | {cell['speedup_vs_fp32']:.2f}x | {cell['peak_rss_mb']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fp32", type=Path, required=True, help="an fp32 OpenVINO (or ONNX) bundle")
    parser.add_argument("--runtime", choices=sorted(INT8_SETTINGS), default="openvino",
                        help="openvino: its int8 kernels on / off; ort: its U8U8 kernels on / off (U8S8)")
    parser.add_argument("--int8", type=Path, required=True, help="the INT8 bundle of the same model")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--iters", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--report", type=Path, default=None, help="write a markdown report here (and .json beside it)")
    args = parser.parse_args(argv)
    try:
        result = run(args.fp32, args.int8, args.rounds, args.batch, args.iters, args.warmup, args.threads, args.runtime)
    except RamEdgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    command = (f"python benchmarks/experiments/ov_int8_kernels.py --fp32 {relative_to_cwd(args.fp32)} --int8 "
               f"{relative_to_cwd(args.int8)} --runtime {args.runtime} --rounds {args.rounds} --batch {args.batch} --iters {args.iters} "
               f"--warmup {args.warmup} --threads {args.threads}")
    if args.report is not None:
        with atomic_file(args.report, "w") as fh:
            fh.write(markdown(result, command + f" --report {relative_to_cwd(args.report)}"))
        with atomic_file(args.report.with_suffix(".json"), "w") as fh:
            fh.write(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
