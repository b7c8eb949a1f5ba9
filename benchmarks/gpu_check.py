"""GPU check of the TensorRT path, one command on one NVIDIA GPU with TensorRT installed:

    python -m ram_edge.benchmarks.gpu_check --workdir /tmp/gpu-check [--report bench-reports/gpu_check.md]

1. The shipped default model: fp16 engine from its fp32 ONNX bundle, INT8 engine from its QAT INT8
   ONNX bundle; mAP and tag-set agreement on its rendered test split against onnxruntime on the CPU.
2. Full-size Swin-L/384 RAM with random weights: fp32 ONNX, PTQ INT8 ONNX (`ram-edge quantize` on a
   few synthetic images: the weights are random, only numerics and speed matter), fp16 and INT8
   engines; probability differences against onnxruntime on the CPU.
3. `ram-edge bench --runtime trt` at batch 1 and 8 for every engine, against torch fp16 eager on the
   same GPU.
Writes the markdown report and a JSON beside it. Every bundle is made by the ram-edge command a user
runs (printed as it runs); a step whose output exists is skipped, so a rerun continues. A step that fails
(an engine build, an accuracy check, a bench) becomes a report row with its one-line error and the check
goes on; the report is written at the end whatever failed, and the exit status is 1 when anything did.
Without TensorRT, `python -m ram_edge.benchmarks.gpu_torch_check` checks what a GPU can check.
Targets (issue 13): full-size INT8 engine >= 3x torch fp16 eager at batch 8; default model INT8
engine mAP within 0.5 of fp32.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np


from . import harness
from .harness import CliFailed, git_commit, map_on_tag_names, markdown_table, run_cli, step_error, write_report_files

# Only a source checkout has one: its commit goes into the report.
REPO = Path(__file__).resolve().parents[1]
TARGETS = {"int8_speedup_b8": 3.0, "default_map_drop": 0.5}
BATCHES = (1, 8)
_START = time.perf_counter()
FULL_SIZE = "full-size Swin-L/384 RAM"
T = TypeVar("T")


def _log(msg: str) -> None:
    print(f"[{time.perf_counter() - _START:6.0f} s] {msg}", file=sys.stderr, flush=True)


def attempt(row: dict[str, Any], step: str, fn: Callable[[], T]) -> T | None:
    """`fn()`, or None with "STEP failed: <one-line error>" put in row["error"] (the check goes on with the next step)."""
    return harness.attempt(row, step, fn, _log)


def sh(*args: str) -> str:
    """Run a ram-edge command; its stdout (the seam the CPU test replaces with an in-process call)."""
    return run_cli(*args, capture=True)


def environment() -> dict[str, Any]:
    """GPU, driver-side libraries and package versions (a part that cannot be read is named in "errors")."""
    import tensorrt as trt

    from ram_edge.runtimes.cuda_memory import open_cuda

    info: dict[str, Any] = {"tensorrt": trt.__version__, "python": platform.python_version(), "platform": platform.platform(),
                            "git_commit": git_commit(REPO), "errors": []}
    try:
        memory = open_cuda(0)
        gpu = memory.gpu()
        info.update(gpu=gpu.name, compute_capability=gpu.compute_capability, cuda_memory=memory.name)
    except Exception as exc:  # noqa: BLE001 - the report says which GPU it could not name, the checks still run
        info["errors"].append(f"GPU: {step_error(exc)}")
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_cuda"] = torch.version.cuda
    except ImportError:
        info["torch"] = None
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        info["onnxruntime"] = None
    return info


def engine(source: Path, out: Path, precision: str, max_batch: int = 8, opt_batch: int = 8) -> Path:
    """`ram-edge export SOURCE --format trt` (skipped when the engine exists)."""
    if not (out / "manifest.json").is_file():
        sh("export", str(source), "--format", "trt", "-o", str(out), "--precision", precision,
           "--max-batch", str(max_batch), "--opt-batch", str(opt_batch), "--overwrite")
    return out


def _probs(bundle: Path, runtime: str, images: np.ndarray, batch: int = 8) -> np.ndarray:
    from ram_edge import Tagger

    with Tagger.load(bundle, runtime=runtime) as tagger:
        return np.concatenate([tagger.predict(images[i:i + batch]) for i in range(0, len(images), batch)])


def _test_split(work: Path, count: int, preprocess_cfg) -> tuple[np.ndarray, list[list[str]]] | None:
    """The default model's rendered test split (None when scenes cannot be rendered here: no emoji font)."""
    from ram_edge.preprocess import load_image, preprocess

    split = work / "test"
    if not (split / "annotations.jsonl").is_file():
        try:
            sh("data", "scenes", "-o", str(split), "--count", str(count), "--split", "test", "--seed", "0", "--overwrite")
        except CliFailed as exc:
            _log(f"no test split ({exc}); the default model is compared on its example images only")
            return None
    rows = [json.loads(line) for line in (split / "annotations.jsonl").read_text().splitlines() if line.strip()]
    images = np.stack([preprocess(load_image(split / r["image"]), preprocess_cfg) for r in rows]).astype(np.float32)
    return images, [r["tags"] for r in rows]


def check_default_model(work: Path, test_count: int) -> list[dict[str, Any]]:
    """fp16 and INT8 engines of the shipped default model against onnxruntime CPU on its test split."""
    from ram_edge.bundle import read_bundle
    from ram_edge.default_model import default_model_path
    from ram_edge.labels import tag_set_f1

    fp32 = default_model_path("bundle_fp32")
    int8 = default_model_path("bundle")
    bundle = read_bundle(fp32)
    split = _test_split(work, test_count, bundle.preprocess)
    if split is None:
        from ram_edge.default_model import PACKAGE_DIR
        from ram_edge.preprocess import load_image, preprocess

        files = sorted((PACKAGE_DIR / "examples").glob("*.png"))
        images, truth = np.stack([preprocess(load_image(f), bundle.preprocess) for f in files]), None
    else:
        images, truth = split
    labels = bundle.labels
    rows: list[dict[str, Any]] = []
    reference: np.ndarray | None = None
    for name, source, precision in (("fp32 ONNX (onnxruntime CPU)", fp32, None), ("INT8 ONNX (onnxruntime CPU)", int8, None),
                                    ("fp16 engine", fp32, "fp16"), ("INT8 engine", int8, "int8")):
        row: dict[str, Any] = {"model": "default", "variant": name, "images": len(images)}
        rows.append(row)
        path: Path | None = source
        if precision:
            target = work / "engines" / f"default-{precision}"
            path = attempt(row, "engine build", lambda: engine(source, target, precision))
        if path is None:
            continue
        ready: Path = path
        row["bundle"] = str(ready)
        started = time.perf_counter()
        probs = attempt(row, "accuracy check", lambda: _probs(ready, "trt" if precision else "ort", images))
        if probs is None:
            continue
        if path == fp32:
            reference = probs
        row["seconds"] = round(time.perf_counter() - started, 1)
        # Without the fp32 reference (its row says why) only mAP can be given.
        if reference is not None:
            row["max_abs_diff_vs_fp32"] = float(np.abs(probs - reference).max())
            row["agreement_vs_fp32"] = float(tag_set_f1(labels.fired(probs), labels.fired(reference)).mean())
        if truth is not None:
            row["mAP"] = map_on_tag_names(probs, labels.tags, truth)
        _log(f"default model {name}: {row}")
    return rows


def _calibration_images(folder: Path, count: int) -> Path:
    """Synthetic photos-like images for PTQ of the random-weight model (its statistics, not accuracy, matter)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        path = folder / f"{i:03d}.png"
        if not path.is_file():
            base = np.linspace(0, 255, 384, dtype=np.float32)[None, :, None] * rng.uniform(0.2, 1.0, 3)
            noise = rng.normal(0, 30, (384, 384, 3))
            Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(path)
    return folder


def check_full_size(work: Path, calib_size: int) -> tuple[list[dict[str, Any]], dict[str, Path]]:
    """Full-size Swin-L/384 RAM: fp16 and INT8 engines against onnxruntime CPU on the export validation inputs."""
    from ram_edge.bundle import read_bundle
    from ram_edge.export.validate import validation_inputs
    from ram_edge.labels import tag_set_f1

    from .random_weights import build_checkpoint

    root = work / "full_size"
    root.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    engines: dict[str, Path] = {}

    def setup(variant: str, fn: Callable[[], T]) -> T | None:
        """A preparation step: a row only when it fails."""
        row = {"model": FULL_SIZE, "variant": variant}
        result = attempt(row, variant, fn)
        if result is None:
            rows.append(row)
        return result

    _log("full-size Swin-L/384 RAM checkpoint (random weights)")
    checkpoint = setup("random-weight checkpoint", lambda: build_checkpoint(root))
    if checkpoint is None:
        return rows, engines
    engines["checkpoint"] = checkpoint
    fp32, quantized, int8 = root / "onnx-fp32", root / "ptq", root / "onnx-int8"

    def export_fp32() -> Path:
        if not (fp32 / "manifest.json").is_file():
            sh("export", str(checkpoint), "-o", str(fp32), "--overwrite")
        return fp32

    def export_int8() -> Path:
        if not (quantized / "config.json").is_file():
            calib = _calibration_images(root / "calib", calib_size)
            sh("quantize", str(checkpoint), "-o", str(quantized), "--calib", str(calib), "--calib-size", str(calib_size))
        if not (int8 / "manifest.json").is_file():
            sh("export", str(quantized), "-o", str(int8), "--overwrite")
        return int8

    sources = {"fp16": setup("fp32 ONNX export", export_fp32), "int8": setup("PTQ INT8 ONNX (quantize + export)", export_int8)}
    inputs = np.concatenate(validation_inputs(384, (1, 3), seed=5))
    for precision, source in sources.items():
        row: dict[str, Any] = {"model": FULL_SIZE, "variant": f"{precision} engine vs its ONNX on onnxruntime CPU",
                               "images": len(inputs)}
        rows.append(row)
        if source is None:
            row["error"] = "skipped: its ONNX bundle was not made (see the row above)"
            continue
        onnx: Path = source
        made = attempt(row, "engine build", lambda: engine(onnx, root / f"engine-{precision}", precision))
        if made is None:
            continue
        built: Path = made
        engines[precision] = built
        pair = attempt(row, "accuracy check", lambda: (_probs(onnx, "ort", inputs), _probs(built, "trt", inputs)))
        if pair is None:
            continue
        reference, probs = pair
        labels = read_bundle(onnx, verify=False).labels
        diff = np.abs(probs - reference)
        row.update(max_abs_diff=float(diff.max()), mean_abs_diff=float(diff.mean()),
                   agreement=float(tag_set_f1(labels.fired(probs), labels.fired(reference)).mean()),
                   build_seconds=read_bundle(built, verify=False).manifest["tensorrt"].get("build_seconds"))
        _log(f"full size {precision}: {row}")
    return rows, engines


def bench_engine(bundle: Path, batch: int, iters: int) -> dict[str, Any]:
    """`ram-edge bench --runtime trt --json` in its own process."""
    out = sh("bench", str(bundle), "--runtime", "trt", "--batch-size", str(batch), "--iters", str(iters), "--warmup", "10", "--json")
    result = json.loads(out.strip().splitlines()[-1])
    return {"ms_per_batch": result["latency_batch_ms"]["p50"], "ms_per_image": result["latency_image_ms"]["p50"],
            "img_s": result["throughput_img_s"], "load_s": result["load_time_s"], "engine_mb": result["model_size_mb"]}


def torch_fp16_eager(checkpoint: Path, batch: int, iters: int) -> dict[str, Any]:
    """Median latency of the torch model in fp16 (model.half()) on the GPU, eager, CUDA-synchronised."""
    import torch

    from ram_edge.models.checkpoint import load_checkpoint

    model, info = load_checkpoint(checkpoint)
    model = model.half().cuda().eval()
    size = info.config.preprocess.image_size
    x = torch.randn(batch, 3, size, size, device="cuda", dtype=torch.float16)
    times = []
    with torch.inference_mode():
        for i in range(iters + 10):
            torch.cuda.synchronize()
            start = time.perf_counter()
            torch.sigmoid(model(x))
            torch.cuda.synchronize()
            if i >= 10:
                times.append(time.perf_counter() - start)
    del model
    torch.cuda.empty_cache()
    ms = 1e3 * float(np.median(times))
    return {"ms_per_batch": ms, "ms_per_image": ms / batch, "img_s": 1e3 * batch / ms}


def timings(engines: dict[str, dict[str, Path]], iters: int) -> list[dict[str, Any]]:
    """Each model's engines and torch fp16 eager at batch 1 and 8; an engine that was not built gets a row saying so."""
    rows = []
    for model, paths in engines.items():
        for batch in BATCHES:
            torch_row: dict[str, Any] = {"model": model, "runtime": "torch fp16 eager", "batch": batch}
            rows.append(torch_row)
            if "checkpoint" in paths:
                measured = attempt(torch_row, "torch fp16 eager", lambda: torch_fp16_eager(paths["checkpoint"], batch, iters))
                torch_row.update(measured or {})
            else:
                torch_row["error"] = "skipped: no checkpoint (see the accuracy rows)"
            for precision in ("fp16", "int8"):
                row: dict[str, Any] = {"model": model, "runtime": f"TensorRT {precision}", "batch": batch}
                rows.append(row)
                if precision not in paths:
                    row["error"] = "skipped: no engine (its build failed or was not reached; see the accuracy rows)"
                    continue
                result = attempt(row, "bench", lambda: bench_engine(paths[precision], batch, iters))
                if result is None:
                    continue
                row.update(result)
                if "ms_per_image" in torch_row:
                    row["speedup_vs_torch_fp16"] = torch_row["ms_per_image"] / row["ms_per_image"]
                _log(f"{model} {precision} batch {batch}: {row}")
    return rows


def verdicts(accuracy: list[dict[str, Any]], speed: list[dict[str, Any]]) -> list[str]:
    """The issue's targets, each with its measured value."""
    lines = []
    by = {r["variant"]: r for r in accuracy if r["model"] == "default"}
    if "mAP" in by.get("INT8 engine", {}) and "mAP" in by.get("fp32 ONNX (onnxruntime CPU)", {}):
        drop = by["fp32 ONNX (onnxruntime CPU)"]["mAP"] - by["INT8 engine"]["mAP"]
        ok = drop <= TARGETS["default_map_drop"]
        lines.append(f"- default model INT8 engine mAP {by['INT8 engine']['mAP']:.2f} vs fp32 {by['fp32 ONNX (onnxruntime CPU)']['mAP']:.2f}: "
                     f"drop {drop:.2f} (target <= {TARGETS['default_map_drop']}): {'pass' if ok else 'MISS'}")
    for row in speed:
        if row["model"] == FULL_SIZE and row["runtime"] == "TensorRT int8" and row["batch"] == 8 and "speedup_vs_torch_fp16" in row:
            ok = row["speedup_vs_torch_fp16"] >= TARGETS["int8_speedup_b8"]
            lines.append(f"- full-size INT8 engine at batch 8: {row['speedup_vs_torch_fp16']:.2f}x torch fp16 eager "
                         f"(target >= {TARGETS['int8_speedup_b8']}x): {'pass' if ok else 'MISS'}")
    return lines or ["- no target could be evaluated (see the log)"]


def failures(result: dict[str, Any]) -> list[str]:
    """Every failed or skipped step of a result, one line each."""
    lines = [f"- environment: {e}" for e in result.get("environment", {}).get("errors", [])]
    for section in ("accuracy", "speed"):
        for row in result.get(section, []):
            if row.get("error"):
                words = [str(row[k]) for k in ("model", "variant", "runtime") if k in row]
                what = " ".join(words + ([f"batch {row['batch']}"] if "batch" in row else []))
                lines.append(f"- {section}: {what}: {row['error']}")
    lines += [f"- {e}" for e in result.get("errors", [])]
    return lines


def write_report(path: Path, result: dict[str, Any]) -> None:
    """Markdown report plus the JSON beside it (whatever parts of `result` exist)."""
    env = result.get("environment", {})
    failed = failures(result)
    lines = [
        "# TensorRT GPU check", "",
        f"GPU: {env.get('gpu', 'unknown')} (compute capability {env.get('compute_capability', 'unknown')}), "
        f"TensorRT {env.get('tensorrt')}, device memory through {env.get('cuda_memory', 'unknown')}, "
        f"torch {env.get('torch')} (CUDA {env.get('torch_cuda')}), onnxruntime {env.get('onnxruntime')}, {env.get('platform')}  ",
        f"Date: {result.get('date')}; command: `{result.get('command')}`; git commit {env.get('git_commit') or 'unknown'}; "
        f"wall time {result.get('seconds', 0.0):.0f} s", "",
        "## Targets", "", *result.get("verdicts", ["- not reached"]), "",
        "## Failed steps", "", *(failed or ["- none"]), "",
        "## Accuracy against onnxruntime on the CPU", "",
        *markdown_table(result.get("accuracy", []), ["model", "variant", "images", "mAP", "agreement_vs_fp32", "max_abs_diff_vs_fp32",
                                                     "agreement", "max_abs_diff", "mean_abs_diff", "build_seconds", "error"]), "",
        "## Speed (`ram-edge bench --runtime trt`, p50; torch fp16 eager: model.half() on the same GPU)", "",
        *markdown_table(result.get("speed", []), ["model", "runtime", "batch", "ms_per_batch", "ms_per_image", "img_s",
                                                  "speedup_vs_torch_fp16", "load_s", "engine_mb", "error"]), "",
    ]
    write_report_files(path, "\n".join(lines), result)


def main(argv: list[str] | None = None) -> int:
    """Run the check and write the report; 1 when a step failed, else 0."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, required=True, help="Where bundles, engines and the test split go (reused on rerun).")
    parser.add_argument("--report", type=Path, default=Path("bench-reports") / "gpu_check.md",
                        help="Markdown report to write; the JSON goes beside it [bench-reports/gpu_check.md].")
    parser.add_argument("--test-count", type=int, default=500, help="Rendered test scenes for the default model's mAP.")
    parser.add_argument("--calib-size", type=int, default=8, help="Synthetic calibration images for the full-size PTQ.")
    parser.add_argument("--iters", type=int, default=50, help="Timed runs per latency row.")
    parser.add_argument("--skip-full-size", action="store_true", help="Only the default model (a few minutes less).")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    from ram_edge.runtimes.tensorrt_runtime import TensorRTRuntime

    if not TensorRTRuntime.is_installed():
        raise SystemExit(f"the GPU check needs TensorRT: {TensorRTRuntime.install_hint()}; without TensorRT, "
                         "`python -m ram_edge.benchmarks.gpu_torch_check` checks the torch runtime and the CUDA memory layer")
    command = " ".join(["python -m ram_edge.benchmarks.gpu_check", *(sys.argv[1:] if argv is None else argv)])
    result: dict[str, Any] = {"date": datetime.date.today().isoformat(), "command": command, "accuracy": [], "speed": [],
                              "errors": []}
    # Whatever happens below, what was measured reaches the report (a rented GPU may be gone before a rerun).
    try:
        result["environment"] = environment()
        _log(f"environment: {result['environment']}")
        from ram_edge.default_model import default_model_path

        section: dict[str, Any] = {"model": "default", "variant": "setup"}
        result["accuracy"] += attempt(section, "default model check", lambda: check_default_model(args.workdir, args.test_count)) or [section]
        default_engines = {p: args.workdir / "engines" / f"default-{p}" for p in ("fp16", "int8")}
        engines = {"default": {"checkpoint": default_model_path("checkpoint"),
                               **{p: e for p, e in default_engines.items() if (e / "manifest.json").is_file()}}}
        if not args.skip_full_size:
            section = {"model": FULL_SIZE, "variant": "setup"}
            full = attempt(section, "full-size check", lambda: check_full_size(args.workdir, args.calib_size))
            result["accuracy"] += full[0] if full else [section]
            engines[FULL_SIZE] = full[1] if full else {}
        result["speed"] = timings(engines, args.iters)
        result["verdicts"] = verdicts(result["accuracy"], result["speed"])
    except Exception as exc:  # noqa: BLE001 - an unforeseen failure still leaves the report of what ran
        result["errors"].append(f"the check stopped early: {step_error(exc)}")
        _log(result["errors"][-1])
    finally:
        result["seconds"] = time.perf_counter() - _START
        result["failed"] = failures(result)
        write_report(args.report, result)
        _log(f"wrote {args.report}")
    print("\n".join(result.get("verdicts", [])))
    if result["failed"]:
        print(f"{len(result['failed'])} step(s) failed or were skipped; see {args.report}", file=sys.stderr)
    return 1 if result["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
