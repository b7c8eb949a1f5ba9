"""GPU check of the TensorRT path, one command on one NVIDIA GPU with TensorRT installed:

    python -m ram_edge.benchmarks.gpu_check --workdir /tmp/gpu-check [--report benchmarks/gpu_check.md]

1. The shipped default model: fp16 engine from its fp32 ONNX bundle, INT8 engine from its QAT INT8
   ONNX bundle; mAP and tag-set agreement on its rendered test split against onnxruntime on the CPU.
2. Full-size Swin-L/384 RAM with random weights: fp32 ONNX, PTQ INT8 ONNX (`ram-edge quantize` on a
   few synthetic images: the weights are random, only numerics and speed matter), fp16 and INT8
   engines; probability differences against onnxruntime on the CPU.
3. `ram-edge bench --runtime trt` at batch 1 and 8 for every engine, against torch fp16 eager on the
   same GPU.
Writes the markdown report and a JSON beside it. Every bundle is made by the ram-edge command a user
runs (printed as it runs); a step whose output exists is skipped, so a rerun continues.
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
from typing import Any

import numpy as np

from ram_edge.fileio import atomic_file

from .harness import map_on_tag_names, run_cli

REPO = Path(__file__).resolve().parents[1]
TARGETS = {"int8_speedup_b8": 3.0, "default_map_drop": 0.5}
BATCHES = (1, 8)
_START = time.perf_counter()


def _log(msg: str) -> None:
    print(f"[{time.perf_counter() - _START:6.0f} s] {msg}", file=sys.stderr, flush=True)


def sh(*args: str) -> str:
    """Run a ram-edge command; its stdout (the seam the CPU test replaces with an in-process call)."""
    return run_cli(*args, capture=True)


def environment() -> dict[str, Any]:
    """GPU, driver-side libraries and package versions."""
    import tensorrt as trt

    from ram_edge.runtimes.cuda_memory import open_cuda

    memory = open_cuda(0)
    gpu = memory.gpu()
    info: dict[str, Any] = {"gpu": gpu.name, "compute_capability": gpu.compute_capability, "tensorrt": trt.__version__,
                            "cuda_memory": memory.name, "python": platform.python_version(), "platform": platform.platform()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_cuda"] = torch.version.cuda
    except ImportError:
        info["torch"] = None
    import onnxruntime

    info["onnxruntime"] = onnxruntime.__version__
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
        except SystemExit as exc:
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
        from ram_edge.preprocess import load_image, preprocess

        files = sorted((REPO / "ram_edge" / "assets" / "default_model" / "examples").glob("*.png"))
        images, truth = np.stack([preprocess(load_image(f), bundle.preprocess) for f in files]), None
    else:
        images, truth = split
    reference = _probs(fp32, "ort", images)
    labels = bundle.labels
    rows = []
    for name, source, precision in (("fp32 ONNX (onnxruntime CPU)", fp32, None), ("INT8 ONNX (onnxruntime CPU)", int8, None),
                                    ("fp16 engine", fp32, "fp16"), ("INT8 engine", int8, "int8")):
        path = engine(source, work / "engines" / f"default-{precision}", precision) if precision else source
        started = time.perf_counter()
        probs = reference if path == fp32 else _probs(path, "trt" if precision else "ort", images)
        row: dict[str, Any] = {"model": "default", "variant": name, "bundle": str(path), "images": len(images),
                               "seconds": round(time.perf_counter() - started, 1),
                               "max_abs_diff_vs_fp32": float(np.abs(probs - reference).max()),
                               "agreement_vs_fp32": float(tag_set_f1(labels.fired(probs), labels.fired(reference)).mean())}
        if truth is not None:
            row["mAP"] = map_on_tag_names(probs, labels.tags, truth)
        rows.append(row)
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

    from .full_size import build_checkpoint

    root = work / "full_size"
    root.mkdir(parents=True, exist_ok=True)
    _log("full-size Swin-L/384 RAM checkpoint (random weights)")
    checkpoint = build_checkpoint(root)
    fp32 = root / "onnx-fp32"
    if not (fp32 / "manifest.json").is_file():
        sh("export", str(checkpoint), "-o", str(fp32), "--overwrite")
    quantized, int8 = root / "ptq", root / "onnx-int8"
    if not (quantized / "config.json").is_file():
        calib = _calibration_images(root / "calib", calib_size)
        sh("quantize", str(checkpoint), "-o", str(quantized), "--calib", str(calib), "--calib-size", str(calib_size))
    if not (int8 / "manifest.json").is_file():
        sh("export", str(quantized), "-o", str(int8), "--overwrite")
    labels = read_bundle(fp32, verify=False).labels
    inputs = np.concatenate(validation_inputs(384, (1, 3), seed=5))
    rows, engines = [], {"checkpoint": checkpoint}
    for source, precision in ((fp32, "fp16"), (int8, "int8")):
        built = engine(source, root / f"engine-{precision}", precision)
        engines[precision] = built
        reference = _probs(source, "ort", inputs)
        probs = _probs(built, "trt", inputs)
        diff = np.abs(probs - reference)
        rows.append({"model": "full-size Swin-L/384 RAM", "variant": f"{precision} engine vs its ONNX on onnxruntime CPU",
                     "images": len(inputs), "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
                     "agreement": float(tag_set_f1(labels.fired(probs), labels.fired(reference)).mean()),
                     "build_seconds": read_bundle(built, verify=False).manifest["tensorrt"]["build_seconds"]})
        _log(f"full size {precision}: {rows[-1]}")
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
    """Each model's engines and torch fp16 eager at batch 1 and 8."""
    rows = []
    for model, paths in engines.items():
        for batch in BATCHES:
            torch_row = torch_fp16_eager(paths["checkpoint"], batch, iters)
            rows.append({"model": model, "runtime": "torch fp16 eager", "batch": batch, **torch_row})
            for precision in ("fp16", "int8"):
                if precision in paths:
                    row = bench_engine(paths[precision], batch, iters)
                    row["speedup_vs_torch_fp16"] = torch_row["ms_per_image"] / row["ms_per_image"]
                    rows.append({"model": model, "runtime": f"TensorRT {precision}", "batch": batch, **row})
                    _log(f"{model} {precision} batch {batch}: {row}")
    return rows


def verdicts(accuracy: list[dict[str, Any]], speed: list[dict[str, Any]]) -> list[str]:
    """The issue's targets, each with its measured value."""
    lines = []
    by = {r["variant"]: r for r in accuracy if r["model"] == "default"}
    if "mAP" in by.get("INT8 engine", {}):
        drop = by["fp32 ONNX (onnxruntime CPU)"]["mAP"] - by["INT8 engine"]["mAP"]
        ok = drop <= TARGETS["default_map_drop"]
        lines.append(f"- default model INT8 engine mAP {by['INT8 engine']['mAP']:.2f} vs fp32 {by['fp32 ONNX (onnxruntime CPU)']['mAP']:.2f}: "
                     f"drop {drop:.2f} (target <= {TARGETS['default_map_drop']}): {'pass' if ok else 'MISS'}")
    for row in speed:
        if row["model"] == "full-size Swin-L/384 RAM" and row["runtime"] == "TensorRT int8" and row["batch"] == 8:
            ok = row["speedup_vs_torch_fp16"] >= TARGETS["int8_speedup_b8"]
            lines.append(f"- full-size INT8 engine at batch 8: {row['speedup_vs_torch_fp16']:.2f}x torch fp16 eager "
                         f"(target >= {TARGETS['int8_speedup_b8']}x): {'pass' if ok else 'MISS'}")
    return lines or ["- no target could be evaluated (see the log)"]


def _table(rows: list[dict[str, Any]], keys: list[str]) -> list[str]:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return "–" if value is None else str(value)

    lines = ["| " + " | ".join(keys) + " |", "|" + "|".join("---" for _ in keys) + "|"]
    lines += ["| " + " | ".join(cell(r.get(k)) for k in keys) + " |" for r in rows]
    return lines


def write_report(path: Path, result: dict[str, Any]) -> None:
    """Markdown report plus the JSON beside it."""
    env = result["environment"]
    lines = [
        "# TensorRT GPU check", "",
        f"GPU: {env['gpu']} (compute capability {env['compute_capability']}), TensorRT {env['tensorrt']}, "
        f"device memory through {env['cuda_memory']}, torch {env.get('torch')} (CUDA {env.get('torch_cuda')}), "
        f"onnxruntime {env['onnxruntime']}, {env['platform']}  ",
        f"Date: {result['date']}; command: `{result['command']}`; wall time {result['seconds']:.0f} s", "",
        "## Targets", "", *result["verdicts"], "",
        "## Accuracy against onnxruntime on the CPU", "",
        *_table(result["accuracy"], ["model", "variant", "images", "mAP", "agreement_vs_fp32", "max_abs_diff_vs_fp32",
                                     "agreement", "max_abs_diff", "mean_abs_diff", "build_seconds"]), "",
        "## Speed (`ram-edge bench --runtime trt`, p50; torch fp16 eager: model.half() on the same GPU)", "",
        *_table(result["speed"], ["model", "runtime", "batch", "ms_per_batch", "ms_per_image", "img_s", "speedup_vs_torch_fp16",
                                  "load_s", "engine_mb"]), "",
    ]
    with atomic_file(path, "w") as fh:
        fh.write("\n".join(lines))
    with atomic_file(path.with_suffix(".json"), "w") as fh:
        json.dump(result, fh, indent=1)


def main(argv: list[str] | None = None) -> None:
    """Run the check and write the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, required=True, help="Where bundles, engines and the test split go (reused on rerun).")
    parser.add_argument("--report", type=Path, default=REPO / "benchmarks" / "gpu_check.md")
    parser.add_argument("--test-count", type=int, default=500, help="Rendered test scenes for the default model's mAP.")
    parser.add_argument("--calib-size", type=int, default=8, help="Synthetic calibration images for the full-size PTQ.")
    parser.add_argument("--iters", type=int, default=50, help="Timed runs per latency row.")
    parser.add_argument("--skip-full-size", action="store_true", help="Only the default model (a few minutes less).")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    from ram_edge.runtimes.tensorrt_runtime import TensorRTRuntime

    if not TensorRTRuntime.is_installed():
        raise SystemExit(f"the GPU check needs TensorRT: {TensorRTRuntime.install_hint()}")
    env = environment()
    _log(f"environment: {env}")
    accuracy = check_default_model(args.workdir, args.test_count)
    from ram_edge.default_model import default_model_path

    engines = {"default": {"checkpoint": default_model_path("checkpoint"), "fp16": args.workdir / "engines" / "default-fp16",
                           "int8": args.workdir / "engines" / "default-int8"}}
    if not args.skip_full_size:
        full_rows, full = check_full_size(args.workdir, args.calib_size)
        accuracy += full_rows
        engines["full-size Swin-L/384 RAM"] = full
    speed = timings(engines, args.iters)
    result = {"environment": env, "date": datetime.date.today().isoformat(), "command": " ".join(["python -m ram_edge.benchmarks.gpu_check", *(argv or sys.argv[1:])]),
              "seconds": time.perf_counter() - _START, "accuracy": accuracy, "speed": speed, "verdicts": verdicts(accuracy, speed)}
    write_report(args.report, result)
    _log(f"wrote {args.report}")
    print("\n".join(result["verdicts"]))


if __name__ == "__main__":
    main()
