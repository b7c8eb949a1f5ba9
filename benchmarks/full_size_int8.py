"""INT8 and bf16 rows of the full-size benchmark (`python -m ram_edge.benchmarks.full_size --int8`).

PTQ of the random-weight full-size checkpoint, calibrated on rendered scenes at the model's input size
(random weights: the numbers are about speed, memory and size, not accuracy), INT8 ONNX and OpenVINO
bundles beside fp32 ones, and bf16 compute on OpenVINO where the CPU has it. Each (runtime, precision,
batch) runs `ram-edge bench --json` in its own process, with the matmul roofline read between rows.
The report states the CPU's INT8/BF16 features and judges the machine by its own targets.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from ram_edge.fileio import atomic_file

from .harness import bundle_model_mb, cpu_features, relative_to_cwd, roofline_in_subprocess, write_markdown_report


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _sh(*args: str) -> None:
    _log("ram-edge " + " ".join(args))
    subprocess.run([sys.executable, "-m", "ram_edge.cli.main", *args], check=True)


def _bundle(ckpt: Path, dest: Path, fmt: str) -> Path:
    if not (dest / "manifest.json").is_file():
        _sh("export", str(ckpt), "-o", str(dest), "--format", fmt, "--overwrite")
    return dest


def _bench(path: Path, runtime: str, batch: int, threads: int, iters: int, compute: str | None) -> dict:
    cmd = [sys.executable, "-m", "ram_edge.cli.main", "bench", str(path), "--runtime", runtime, "--batch-size", str(batch),
           "--iters", str(iters), "--warmup", "1", "--threads", str(threads), "--json"]
    if compute:
        cmd += ["--compute-precision", compute]
    _log(f"bench {runtime} {path.name} batch {batch}" + (f" compute {compute}" if compute else ""))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        return {"runtime": runtime, "model": str(path), "batch_size": batch, "error": proc.stderr.strip().splitlines()[-1:]}
    return json.loads(proc.stdout)



def run_int8(args, ckpt: Path, report: Path) -> None:
    """Quantize, export, bench and write the INT8 report."""
    work = args.workdir
    size = json.loads((ckpt / "config.json").read_text())["model"]["preprocess"]["image_size"]
    calib = work / f"calib_{size}"
    if not (calib / "annotations.jsonl").is_file():
        _sh("data", "scenes", "-o", str(calib), "--count", str(args.calib_size), "--size", str(size), "--split", "train",
            "--seed", "7", "--overwrite")
    ptq = work / "ptq"
    if not (ptq / "config.json").is_file():
        started = time.perf_counter()
        _sh("quantize", str(ckpt), "-o", str(ptq), "--calib", str(calib), "--calib-size", str(args.calib_size), "--overwrite")
        (work / "ptq.seconds").write_text(f"{time.perf_counter() - started:.0f}")
    bundles = {("onnx", "fp32"): _bundle(ckpt, work / "onnx_full", "onnx"),
               ("openvino", "fp32"): _bundle(ckpt, work / "openvino_full", "openvino"),
               ("onnx", "int8"): _bundle(ptq, work / "onnx_int8", "onnx"),
               ("openvino", "int8"): _bundle(ptq, work / "openvino_int8", "openvino")}
    cpu = cpu_features()
    plan = []
    for batch in (1, 8):
        for fmt, runtime in (("onnx", "ort"), ("openvino", "openvino")):
            for precision in ("fp32", "int8"):
                plan.append((bundles[fmt, precision], runtime, batch, None))
        # bf16 compute of the fp32 IR: granted only where the CPU has BF16; elsewhere the row records the refusal.
        plan.append((bundles["openvino", "fp32"], "openvino", batch, "bf16"))
    rows, readings = [], []
    for path, runtime, batch, compute in plan:
        readings.append(roofline_in_subprocess(threads=args.threads, repeats=3))
        iters = args.iters if batch == 1 else max(2, args.iters // 2)
        row = _bench(path, runtime, batch, args.threads, iters, compute)
        row["roofline_gmacs"] = readings[-1] / 1e9
        row["file_mb"] = bundle_model_mb(path)
        rows.append(row)
        with atomic_file(report.with_suffix(".json"), "w") as fh:
            fh.write(json.dumps({"preset": args.preset, "cpu": cpu, "rows": rows, "roofline_readings": readings}, indent=1))
    ok = [r for r in rows if "error" not in r]

    def find(runtime: str, precision: str, batch: int, compute: str = "fp32") -> dict | None:
        return next((r for r in ok if r["runtime"] == runtime and r["precision"] == precision and r["batch_size"] == batch
                     and r.get("compute_precision", "fp32") in (compute, precision)), None)

    lines = []
    verdicts = []
    for runtime in ("ort", "openvino"):
        for batch in (1, 8):
            fp32, int8 = find(runtime, "fp32", batch), find(runtime, "int8", batch)
            if not (fp32 and int8):
                continue
            speed = fp32["latency_image_ms"]["p50"] / int8["latency_image_ms"]["p50"]
            rss = int8["peak_rss_mb"] / fp32["peak_rss_mb"]
            size_ratio = int8["file_mb"] / fp32["file_mb"]
            lines.append(f"| {runtime} | {batch} | {fp32['latency_image_ms']['p50']:.1f} | {int8['latency_image_ms']['p50']:.1f} | "
                         f"{speed:.2f}x | {fp32['peak_rss_mb']:.0f} | {int8['peak_rss_mb']:.0f} ({100 * rss:.0f}%) | "
                         f"{fp32['file_mb']:.1f} | {int8['file_mb']:.1f} ({100 * size_ratio:.0f}%) |")
            if batch == 1:
                verdicts.append((f"{runtime}: INT8 file <= 30% of fp32", f"{100 * size_ratio:.0f}%", size_ratio <= 0.30))
                verdicts.append((f"{runtime}: INT8 peak RSS <= 60% of fp32", f"{100 * rss:.0f}%", rss <= 0.60))
                if cpu["vnni"]:
                    verdicts.append((f"{runtime}: INT8 >= 2.5x fp32 at batch 1 (VNNI)", f"{speed:.2f}x", speed >= 2.5))
                elif runtime == "ort":
                    verdicts.append(("ort: INT8 >= 1.2x fp32 at batch 1 (no VNNI)", f"{speed:.2f}x", speed >= 1.2))
                else:
                    verdicts.append(("openvino: INT8 no slower than fp32 at batch 1 (no VNNI)", f"{speed:.2f}x", speed >= 1.0))
    bf16 = [r for r in rows if r.get("compute_precision") == "bf16" or (r.get("error") and r["runtime"] == "openvino")]
    bf16_text = "; ".join(
        f"batch {r['batch_size']}: {r['latency_image_ms']['p50']:.0f} ms/img" if "error" not in r else f"batch {r['batch_size']}: refused ({r['error'][0] if r['error'] else ''})"
        for r in bf16)
    reproduce_report = f" --report {relative_to_cwd(report)}" if args.report is not None else ""
    ptq_seconds = (work / "ptq.seconds").read_text() if (work / "ptq.seconds").is_file() else "?"
    notes = f"""CPU INT8/BF16 features: {', '.join(cpu['features']) or 'none'}; VNNI: {'yes' if cpu['vnni'] else 'no'}; OpenVINO CPU capabilities: {', '.join(cpu['openvino_capabilities'])}.
PTQ (NNCF, transformer preset) calibrated on {args.calib_size} rendered train-split scenes at {size} px: {ptq_seconds} s here. Random weights: speed, memory and size only.

| runtime | batch | fp32 ms/img | INT8 ms/img | INT8 speed-up | fp32 peak RSS MB | INT8 peak RSS MB | fp32 file MB | INT8 file MB |
|---|---|---|---|---|---|---|---|---|
{chr(10).join(lines)}

OpenVINO bf16 compute (the fp32 IR with `--compute-precision bf16`): {bf16_text or 'not run'}.

Targets for this machine ({'with' if cpu['vnni'] else 'without'} VNNI):

| target | measured | |
|---|---|---|
{chr(10).join(f'| {name} | {value} | {"pass" if good else "miss"} |' for name, value, good in verdicts)}

Reproduce: `python -m ram_edge.benchmarks.full_size --int8 --workdir /tmp/ram-fullsize-int8 --preset {args.preset} --threads {args.threads} --calib-size {args.calib_size}{reproduce_report}`.
"""
    write_markdown_report(ok, report, f"Full-size RAM ({args.preset}): INT8 and bf16 against fp32 on this machine", notes)
    _log(f"wrote {report}")
