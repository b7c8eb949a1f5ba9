"""Bundles on x86 CPUs this machine is not: which kernels they get and what they answer there, under QEMU.

`python benchmarks/experiments/emulated_cpus.py [--bundle B ...] [--images DIR] [--limit N] [--cpu MODEL ...] [--runtime R ...]
--report MD`

The code paths of CPUs without VNNI (OpenVINO's int8 kernels on AVX2, its kernels-off fallback for INT8 bundles,
onnxruntime's AVX2 u8s8 kernels) run on none of this project's usual machines. QEMU in user mode
(`qemu-x86_64 -cpu MODEL python ...`) executes a process as the named CPU model would: CPUID reports that model's
features and its instructions are interpreted, so oneDNN, MLAS and numpy dispatch exactly as on it (AVX2 without
AVX-512 or VNNI on `EPYC-Milan`, AMD Zen 3, and `Haswell`) and compute what it computes. It says nothing about that CPU's
speed, which is not measured. Each cell runs the real `Tagger` on the images in an emulated process and is compared
with the same cell run natively on this machine (the reference), and with the first fp32 bundle on this machine.

`/proc/cpuinfo` still shows the host under QEMU, so ram-edge's own choices for INT8 bundles on CPUs without VNNI
(OpenVINO's int8 kernels off on AVX2-only CPUs, onnxruntime's U8U8 kernels) would see the host: each INT8 cell sets
`RAM_EDGE_OV_INT8_KERNELS` or `RAM_EDGE_ORT_INT8_U8U8` to on or off instead.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ram_edge.errors import RamEdgeError
from ram_edge.fileio import atomic_file
from ram_edge.runtimes.registry import get_runtime_class

from ram_edge.benchmarks.harness import INT8_SETTINGS, cpu_features, log, relative_to_cwd

QEMU = "qemu-x86_64"
HOST = "host"
# Not emulated: this machine with oneDNN (OpenVINO's kernels) capped at an instruction set; onnxruntime is unaffected
# and OpenVINO's own checks still see this CPU, so only the kernels' arithmetic is that of the named CPU.
ONEDNN = "onednn:"
#: QEMU CPU models worth emulating (QEMU's TCG has no AVX-512, so no VNNI model can be emulated; the host has it).
CPU_MODELS = {
    "EPYC-Milan": "AMD Zen 3: AVX2, FMA; no AVX-512, no VNNI",
    "Haswell": "Intel Haswell: AVX2, FMA; no AVX-512, no VNNI",
    "SandyBridge": "Intel Sandy Bridge: AVX; no AVX2, no FMA",
    f"{ONEDNN}AVX512_CORE": "AVX-512 without VNNI (Skylake-SP) as OpenVINO's oneDNN kernels see it: the host with "
                            "ONEDNN_MAX_CPU_ISA=AVX512_CORE (QEMU has no AVX-512)",
}
DEFAULT_CPUS = ("EPYC-Milan", "Haswell")
RUNTIMES = ("ort", "openvino")
_SIGNAL = re.compile(r"uncaught target signal (\d+) \(([^)]*)\)")


class EmulatorUnavailable(RamEdgeError):
    """QEMU cannot run this interpreter as another x86 CPU here."""


def emulator_problem(cpu: str = DEFAULT_CPUS[0]) -> str | None:
    """Why this interpreter cannot run as x86 CPU model `cpu` under QEMU here; None when it can."""
    if cpu.startswith(ONEDNN):
        return None
    if platform.system() != "Linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        return f"QEMU user mode emulates x86 CPUs for an x86_64 Linux interpreter; this is {platform.system()} {platform.machine()}"
    if shutil.which(QEMU) is None:
        return f"{QEMU} is not installed (Debian / Ubuntu: apt-get install qemu-user)"
    try:
        proc = subprocess.run(emulated(cpu, ["-c", "import numpy"]), capture_output=True, text=True, timeout=300,
                              preexec_fn=_no_core_files)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{QEMU} -cpu {cpu} cannot run {sys.executable}: {exc}"
    if proc.returncode:
        return f"{QEMU} -cpu {cpu} cannot run {sys.executable} with numpy: {_last_error(proc.stderr, proc.returncode)}"
    return None


def emulated(cpu: str, args: list[str]) -> list[str]:
    """The command that runs this interpreter with `args` as CPU model `cpu` (HOST: natively)."""
    python = [sys.executable, *args]
    return python if cpu == HOST or cpu.startswith(ONEDNN) else [QEMU, "-cpu", cpu, *python]


def _no_core_files() -> None:
    import resource

    # A crashing emulated process (SIGILL on a CPU without an instruction) would leave a core file in the cwd.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _last_error(stderr: str, returncode: int) -> str:
    """The line that says why an (emulated) process failed: QEMU's signal report or the last stderr line."""
    lines = [line for line in (stderr or "").splitlines() if line.strip() and not line.startswith(f"{QEMU}: warning")]
    for line in lines:
        found = _SIGNAL.search(line)
        if found:
            return f"crashed: signal {found.group(1)} ({found.group(2)})"
    if returncode < 0:
        return f"crashed: signal {-returncode}"
    return (lines or [f"exit code {returncode}"])[-1].removeprefix("error: ")[:300]


@dataclass
class Cell:
    """One bundle on one runtime as one CPU (HOST: this machine)."""

    cpu: str
    bundle: str
    precision: str
    runtime: str
    int8_setting: str  # INT8 bundles: "int8 kernels on|off" (OpenVINO), "U8U8 on|off" (onnxruntime); "–" elsewhere
    status: str = "not run"
    kernels: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    max_dp_vs_host: float | None = None
    agreement_vs_host: float | None = None
    agreement_vs_fp32: float | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return self.bundle, self.runtime, self.int8_setting


def probe(bundle: Path, runtime: str, images: list[Path], out: Path, threads: int) -> dict:
    """Tag `images` with `bundle` on `runtime` in this process; probabilities to `out` (.npy), kernels returned."""
    from ram_edge import Tagger

    tagger = Tagger.load(bundle, runtime=runtime, threads=threads)
    probs = [tagger.predict(tagger.load_images(images[i:i + 8])) for i in range(0, len(images), 8)]
    np.save(out, np.concatenate(probs))
    kernels = tagger.runtime.matmul_kernels() if hasattr(tagger.runtime, "matmul_kernels") else {}
    return {"kernels": kernels, "int8_kernels": tagger.runtime.int8_kernels, "int8_u8u8": tagger.runtime.int8_u8u8}


def run_cell(cell: Cell, bundle: Path, images_file: Path, out: Path, threads: int) -> None:
    """Run one cell's probe in a fresh (emulated) process; fills its status, kernels and time."""
    env = {k: v for k, v in os.environ.items() if k not in {name for name, _ in INT8_SETTINGS.values()}}
    if cell.int8_setting != "–":
        env[INT8_SETTINGS[cell.runtime][0]] = cell.int8_setting.split()[-1]
    if cell.cpu.startswith(ONEDNN):
        env["ONEDNN_MAX_CPU_ISA"] = cell.cpu.removeprefix(ONEDNN)
    args = [str(Path(__file__).resolve()), "probe", "--bundle", str(bundle), "--runtime", cell.runtime,
            "--images-file", str(images_file), "--out", str(out), "--threads", str(threads)]
    log(f"{cell.cpu}: {cell.bundle} on {cell.runtime}" + (f" ({cell.int8_setting})" if cell.int8_setting != "–" else ""))
    start = time.perf_counter()
    proc = subprocess.run(emulated(cell.cpu, args), capture_output=True, text=True, env=env, preexec_fn=_no_core_files)
    cell.seconds = time.perf_counter() - start
    if proc.returncode:
        cell.status = _last_error(proc.stderr, proc.returncode)
        return
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    cell.kernels = result["kernels"]
    cell.status = "ok"


def _bundle_facts(bundle: Path) -> tuple[str, str]:
    """A bundle's stored precision (int8 only where it computes in int8: not 8-bit weights) and model format."""
    from ram_edge.bundle import read_bundle

    found = read_bundle(bundle, verify=False)
    computes = found.manifest.get("compute_precision") or found.precision
    return (found.precision if computes == found.precision else f"{found.precision} ({computes})"), found.manifest["model_format"]


def plan(bundles: list[Path], cpus: list[str], runtimes: tuple[str, ...] = RUNTIMES) -> list[Cell]:
    """Every bundle on every runtime (INT8 with each runtime's setting on and off), natively first, then per CPU."""
    facts = {bundle: _bundle_facts(bundle) for bundle in bundles}
    cells = []
    for cpu in [HOST, *cpus]:
        for bundle in bundles:
            precision, model_format = facts[bundle]
            for runtime in runtimes:
                if cpu.startswith(ONEDNN) and runtime != "openvino":
                    continue  # the cap is oneDNN's: onnxruntime would compute exactly what it does on the host
                if model_format not in get_runtime_class(runtime).formats:
                    continue  # an OpenVINO IR on onnxruntime
                settings = [f"{INT8_SETTINGS[runtime][1]} {v}" for v in ("on", "off")] if precision == "int8" else ["–"]
                cells += [Cell(cpu, relative_to_cwd(bundle), precision, runtime, s) for s in settings]
    return cells


def compare(cells: list[Cell], probs: dict[int, np.ndarray], fired) -> None:
    """Fill each cell's differences from its native twin and its agreement with the first fp32 bundle natively."""
    from ram_edge.labels import tag_set_f1

    host = {c.key: i for i, c in enumerate(cells) if c.cpu == HOST and i in probs}
    fp32 = next((i for i, c in enumerate(cells) if c.cpu == HOST and c.precision == "fp32" and i in probs), None)
    for i, cell in enumerate(cells):
        if i not in probs:
            continue
        twin = host.get(cell.key)
        if twin is not None and cell.cpu != HOST:
            cell.max_dp_vs_host = float(np.abs(probs[i] - probs[twin]).max())
            cell.agreement_vs_host = float(tag_set_f1(fired(probs[i]), fired(probs[twin])).mean())
        if fp32 is not None:
            cell.agreement_vs_fp32 = float(tag_set_f1(fired(probs[i]), fired(probs[fp32])).mean())


def run(bundles: list[Path], images: list[Path], cpus: list[str], threads: int, runtimes: tuple[str, ...] = RUNTIMES) -> dict:
    """Every cell of the plan; the comparisons; what the report needs."""
    from ram_edge.bundle import read_bundle

    for cpu in cpus:
        problem = emulator_problem(cpu)
        if problem:
            raise EmulatorUnavailable(problem)
    cells = plan(bundles, cpus, runtimes)
    by_name = {relative_to_cwd(b): b for b in bundles}
    probs: dict[int, np.ndarray] = {}
    with tempfile.TemporaryDirectory(prefix="ram-edge-emulated-") as tmp:
        images_file = Path(tmp) / "images.txt"
        images_file.write_text("\n".join(str(p) for p in images), encoding="utf-8")
        for i, cell in enumerate(cells):
            out = Path(tmp) / f"cell-{i}.npy"
            run_cell(cell, by_name[cell.bundle], images_file, out, threads)
            if cell.status == "ok":
                probs[i] = np.load(out)
    compare(cells, probs, read_bundle(bundles[0]).labels.fired)
    emulated_cpus = [c for c in cpus if not c.startswith(ONEDNN)]
    qemu = subprocess.run([QEMU, "--version"], capture_output=True, text=True).stdout.splitlines()[0] if emulated_cpus else "no QEMU"
    return {"date": datetime.date.today().isoformat(), "host": cpu_features(), "qemu": qemu, "threads": threads,
            "images": len(images), "cpus": {c: CPU_MODELS.get(c, "") for c in cpus},
            "cells": [asdict(c) for c in cells]}


def _fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def render(result: dict, command: str) -> str:
    """The report as Markdown."""
    host = result["host"]
    lines = [
        "# Bundles on emulated x86 CPUs (QEMU user mode)",
        "",
        f"Host: {host['model']}, {host['cores']} cores ({', '.join(host['features']) or 'features unknown'}); "
        f"{result['qemu']}; {result['images']} images; {result['threads']} threads  ",
        f"Date: {result['date']}; command: `{command}`",
        "",
        "Emulated CPU models: " + "; ".join(f"`{c}` ({d})" for c, d in result["cpus"].items()) + ".",
        "Each emulated cell runs the bundle as that CPU would (CPUID and instructions are that model's), so the kernels",
        "and answers are that CPU's; the time under emulation says nothing about that CPU's speed and is not reported.",
        "`max Δp` and `agreement` (mean per-image F1 between tag sets at the shipped thresholds) compare a cell with the",
        "same bundle, runtime and setting run natively on the host; `vs fp32`: with the first fp32 cell on the host",
        "(onnxruntime where it ran). INT8 settings: `U8U8` is onnxruntime's exact int8 kernels (`RAM_EDGE_ORT_INT8_U8U8`; off: the",
        "U8S8 kernels, whose 16-bit pair sums saturate without VNNI), `int8 kernels` OpenVINO's (`RAM_EDGE_OV_INT8_KERNELS`;",
        "off: float kernels on the 8-bit weights). ram-edge's automatic choice on a CPU without VNNI is U8U8 on and int8",
        "kernels off (on AVX2-only CPUs); with VNNI, U8U8 off and int8 kernels on.",
        "",
        "| CPU | bundle | precision | runtime | INT8 setting | status | matrix kernels (OpenVINO) | max Δp vs host | agreement vs host | agreement vs fp32 |",
        "|---|---|---|---|---|---|---|---:|---:|---:|",
    ]
    for c in result["cells"]:
        kernels = ", ".join(f"{k} ×{n}" for k, n in c["kernels"].items()) or "–"
        lines.append(f"| {c['cpu']} | {c['bundle']} | {c['precision']} | {c['runtime']} | {c['int8_setting']} | {c['status']} "
                     f"| {kernels} | {_fmt(c['max_dp_vs_host'], '.2g')} | {_fmt(c['agreement_vs_host'], '.3f')} "
                     f"| {_fmt(c['agreement_vs_fp32'], '.3f')} |")
    return "\n".join(lines) + "\n"


def _images(source: Path | None, limit: int | None) -> list[Path]:
    from ram_edge.default_model import example_images
    from ram_edge.preprocess import iter_image_files

    images = sorted(example_images()) if source is None else sorted(iter_image_files([source]))
    if not images:
        raise RamEdgeError(f"no images found in {source}; pass a folder of images with --images")
    return images[:limit] if limit else images


def main(argv: list[str] | None = None) -> None:
    """Entry point: `probe` (one cell, in this process) or the whole run and its report."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["probe"]:
        p = argparse.ArgumentParser(prog="emulated_cpus probe")
        p.add_argument("--bundle", type=Path, required=True)
        p.add_argument("--runtime", required=True)
        p.add_argument("--images-file", type=Path, required=True)
        p.add_argument("--out", type=Path, required=True)
        p.add_argument("--threads", type=int, default=2)
        a = p.parse_args(argv[1:])
        images = [Path(line) for line in a.images_file.read_text(encoding="utf-8").splitlines() if line]
        print(json.dumps(probe(a.bundle, a.runtime, images, a.out, a.threads)))
        return
    from ram_edge.default_model import default_model_path

    p = argparse.ArgumentParser(prog="python benchmarks/experiments/emulated_cpus.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, action="append", help="ONNX / OpenVINO bundle (repeat; default: the shipped default model's INT8 and fp32 bundles)")
    p.add_argument("--images", type=Path, help="folder of images (default: the shipped example images)")
    p.add_argument("--limit", type=int, help="the first N images (sorted) only: emulation runs about 100x slower")
    p.add_argument("--cpu", action="append", choices=sorted(CPU_MODELS), help=f"QEMU CPU model (repeat; default: {', '.join(DEFAULT_CPUS)})")
    p.add_argument("--runtime", action="append", choices=RUNTIMES, help="runtime (repeat; default: all)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--report", type=Path, help="write the Markdown report here (and its .json beside it)")
    a = p.parse_args(argv)
    bundles = a.bundle or [default_model_path("bundle"), default_model_path("bundle_fp32")]
    result = run(bundles, _images(a.images, a.limit), a.cpu or list(DEFAULT_CPUS), a.threads, tuple(a.runtime or RUNTIMES))
    print(json.dumps(result, indent=1))
    if a.report:
        command = "python benchmarks/experiments/emulated_cpus.py " + " ".join(
            relative_to_cwd(x) if os.path.exists(x) else x for x in argv)
        with atomic_file(a.report, "w") as fh:
            fh.write(render(result, command))
        with atomic_file(a.report.with_suffix(".json"), "w") as fh:
            fh.write(json.dumps(result, indent=1) + "\n")
        log(f"wrote {a.report}")


if __name__ == "__main__":
    try:
        main()
    except RamEdgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
