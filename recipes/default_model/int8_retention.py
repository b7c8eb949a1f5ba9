"""INT8 retention table of the shipped default model: fp32, 8-bit weights, PTQ and QAT, each as an ONNX
bundle on onnxruntime and an OpenVINO IR on OpenVINO, on the test split (seen categories) and the
held-out split (60 categories never trained on, queries from the text encoder through `--vocab`).

    python recipes/default_model/int8_retention.py --workdir work-out/int8 [--report recipes/default_model/int8_default_model.md]

Every model and bundle is made by the ram-edge commands a user runs (printed as they run); a step whose
output exists is skipped, so an interrupted run continues. Writes the markdown report and a JSON beside it.
The recipe's `quantize` phase (build.py) runs this and ships QAT INT8 as the default when its verdicts pass.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import numpy as np

from ram_edge.benchmarks.harness import _package_version, bundle_model_mb, cpu_features, relative_to_cwd, run_cli

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEFAULT_MODEL = REPO / "ram_edge" / "assets" / "default_model" / "checkpoint"
VARIANTS = ("fp32", "weights", "ptq", "qat")
# bf16 is not a bundle but OpenVINO's compute precision on the fp32 IR (CPUs with AVX512_BF16 or AMX; refused
# elsewhere, and the row says so).
BF16 = "bf16"
FORMATS = {"onnx": "ort", "openvino": "openvino"}
# The targets: QAT within 0.5 mAP of fp32 on seen categories and 1.0 on held-out, tag-set
# agreement >= 0.98, 8-bit weights within 0.1 mAP.
TARGETS = {"qat_seen": 0.5, "qat_heldout": 1.0, "agreement": 0.98, "weights": 0.1}


def prepare(work: Path, test_count: int, qat_count: int) -> None:
    """Rendered splits (calibration/QAT from the train split, test, held-out) and the held-out tag list."""
    from ram_edge.training.scenes import categories, split_categories

    for name, split, count, seed in (("qat_data", "train", qat_count, 7), ("test", "test", test_count, 0),
                                     ("heldout", "heldout", 1000, 0)):
        if not (work / name / "annotations.jsonl").is_file():
            run_cli("data", "scenes", "-o", str(work / name), "--count", str(count), "--split", split, "--seed", str(seed), "--overwrite")
    _, held = split_categories(categories())
    (work / "heldout_tags.txt").write_text("".join(c.name + "\n" for c in held), encoding="utf-8")


def quantize(work: Path, model: Path, calib_size: int, qat_steps: int) -> dict[str, Path]:
    """The checkpoints of each variant (quantized ones made by `ram-edge quantize`)."""
    out = {"fp32": model}
    for method in ("weights", "ptq", "qat"):
        target = work / f"q_{method}"
        out[method] = target
        if (target / "config.json").is_file():
            continue
        args = ["quantize", str(model), "-o", str(target), "--method", method]
        if method != "weights":
            args += ["--calib", str(work / "qat_data"), "--calib-size", str(calib_size)]
        if method == "qat":
            args += ["--steps", str(qat_steps), "--run-dir", str(work / "q_qat.run")]
        started = time.perf_counter()
        run_cli(*args)
        (work / f"q_{method}.seconds").write_text(f"{time.perf_counter() - started:.1f}")
    return out


def export(work: Path, checkpoints: dict[str, Path]) -> dict[tuple[str, str, str], Path]:
    """(variant, format, split kind) -> bundle; 'heldout' bundles carry the held-out tags via --vocab."""
    bundles = {}
    for variant, checkpoint in checkpoints.items():
        for fmt in FORMATS:
            for kind in ("seen", "heldout"):
                target = work / "bundles" / f"{variant}-{fmt}-{kind}"
                bundles[(variant, fmt, kind)] = target
                if (target / "manifest.json").is_file():
                    continue
                args = ["export", str(checkpoint), "-o", str(target), "--format", fmt, "--overwrite"]
                if kind == "heldout":
                    args += ["--vocab", str(work / "heldout_tags.txt"), "--text-encoder", "minilm"]
                run_cli(*args)
    return bundles


def _split(work: Path, name: str, preprocess_cfg) -> tuple[np.ndarray, list[list[str]]]:
    """Preprocessed images (cached as .npy) and true tag names of a rendered split."""
    from ram_edge.preprocess import load_image, preprocess

    rows = [json.loads(line) for line in (work / name / "annotations.jsonl").read_text().splitlines() if line.strip()]
    cache = work / f"{name}.{preprocess_cfg.image_size}.npy"
    if cache.is_file():
        images = np.load(cache)
    else:
        images = np.stack([preprocess(load_image(work / name / r["image"]), preprocess_cfg) for r in rows]).astype(np.float32)
        np.save(cache, images)
    return images, [r["tags"] for r in rows]


def _scores(bundle: Path, runtime: str, images: np.ndarray, batch: int = 32, compute: str | None = None):
    from ram_edge import Tagger

    tagger = Tagger.load(bundle, runtime=runtime, compute_precision=compute)
    probs = np.concatenate([tagger.predict(images[i:i + batch]) for i in range(0, len(images), batch)])
    return probs, tagger.labels


def _metrics(probs: np.ndarray, labels, truth: list[list[str]], reference_fired: np.ndarray | None) -> dict:
    from ram_edge.labels import tag_set_f1
    from ram_edge.training.metrics import mean_average_precision, precision_recall_f1

    index = {t: i for i, t in enumerate(labels.tags)}
    targets = np.zeros(probs.shape, np.float32)
    for i, tags in enumerate(truth):
        for t in tags:
            if t in index:
                targets[i, index[t]] = 1
    fired = labels.fired(probs)
    prf = precision_recall_f1(fired, targets)
    out = {"mAP": 100 * mean_average_precision(probs, targets), "macro_f1": 100 * prf.macro["f1"]}
    if reference_fired is not None:
        out["agreement"] = float(tag_set_f1(fired, reference_fired).mean())
    return out


def _latency(bundle: Path, runtime: str, batch: int, compute: str | None = None) -> dict:
    extra = ["--compute-precision", compute] if compute else []
    result = json.loads(run_cli("bench", bundle, "--runtime", runtime, "--batch-size", batch, "--iters", 30, "--threads", 2, "--json",
                                *extra, capture=True))
    return {"ms_per_image": result["latency_image_ms"]["p50"], "peak_rss_mb": result["peak_rss_mb"]}


def kernels(bundle: Path, runtime: str) -> dict[str, int]:
    """Which operations run in int8 and which in float: OpenVINO's runtime graph (layer type @ runtime
    precision) or onnxruntime's optimized graph (operator types after its graph transformations)."""
    import collections
    import tempfile

    manifest = json.loads((bundle / "manifest.json").read_text())
    counts: collections.Counter = collections.Counter()
    if runtime == "openvino":
        import openvino as ov

        compiled = ov.Core().compile_model(str(bundle / manifest["files"]["model"]), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        for op in compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            kind = str(info["layerType"].astype(str))
            if kind in ("FullyConnected", "MatMul", "Convolution", "Eltwise", "Subgraph", "Softmax", "MVN", "Reorder"):
                counts[f"{kind} @ {info['runtimePrecision'].astype(str)}"] += 1
        return dict(sorted(counts.items()))
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(bundle / manifest["files"]["model"]), options, providers=["CPUExecutionProvider"])
        model = onnx.load(options.optimized_model_filepath, load_external_data=False)
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm", "Conv", "FusedConv", "FusedMatMul", "QLinearMatMul", "QLinearConv", "MatMulInteger",
                            "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QuantizeLinear", "DequantizeLinear", "QGemm",
                            "QAttention", "Attention"):
            counts[node.op_type] += 1
    return dict(sorted(counts.items()))


def measure(work: Path, bundles: dict) -> dict:
    """Accuracy of every bundle on both splits, agreement with fp32 on the same runtime, size and latency."""
    from ram_edge.bundle import read_bundle

    pre = read_bundle(bundles[("fp32", "onnx", "seen")]).preprocess
    splits = {"seen": _split(work, "test", pre), "heldout": _split(work, "heldout", pre)}
    rows = []
    cache = work / "rows"
    cache.mkdir(exist_ok=True)
    has_bf16 = cpu_features()["bf16"]
    for fmt, runtime in FORMATS.items():
        reference = {}
        for variant in VARIANTS + ((BF16,) if runtime == "openvino" else ()):
            done = cache / f"{variant}-{fmt}.json"
            if done.is_file() and variant != "fp32":  # fp32's tag sets are the agreement reference: always recomputed
                rows.append(json.loads(done.read_text()))
                continue
            row = {"variant": variant, "format": fmt, "runtime": runtime}
            compute = BF16 if variant == BF16 else None
            stored = "fp32" if variant == BF16 else variant
            if compute and not has_bf16:
                row["error"] = "refused: this CPU has no BF16 (AVX512_BF16 / AMX), and ram-edge never falls back silently"
                rows.append(row)
                continue
            for kind, (images, truth) in splits.items():
                probs, labels = _scores(bundles[(stored, fmt, kind)], runtime, images, compute=compute)
                if variant == "fp32":
                    reference[kind] = labels.fired(probs)
                for key, value in _metrics(probs, labels, truth, reference[kind]).items():
                    row[f"{kind}_{key}"] = value
            seen_bundle = bundles[(stored, fmt, "seen")]
            row["size_mb"] = bundle_model_mb(seen_bundle)
            for batch in (1, 8):
                lat = _latency(seen_bundle, runtime, batch, compute)
                row[f"ms_per_image_b{batch}"] = lat["ms_per_image"]
                row[f"peak_rss_mb_b{batch}"] = lat["peak_rss_mb"]
            print(json.dumps(row), file=sys.stderr, flush=True)
            done.write_text(json.dumps(row))
            rows.append(row)
    where = {f"{variant}-{fmt}": kernels(bundles[(variant, fmt, "seen")], runtime)
             for variant in ("fp32", "ptq") for fmt, runtime in FORMATS.items()}
    return {"rows": rows, "images": {k: len(v[0]) for k, v in splits.items()}, "kernels": where}


def verdicts(rows: list[dict]) -> list[dict]:
    """Each target with the measured value and pass / miss, per runtime."""
    out = []
    for fmt in FORMATS:
        by = {r["variant"]: r for r in rows if r["format"] == fmt}
        fp32, qat, weights = by["fp32"], by["qat"], by["weights"]
        checks = [
            ("QAT seen mAP drop <= 0.5", fp32["seen_mAP"] - qat["seen_mAP"], TARGETS["qat_seen"], "le"),
            ("QAT held-out mAP drop <= 1.0", fp32["heldout_mAP"] - qat["heldout_mAP"], TARGETS["qat_heldout"], "le"),
            ("QAT tag-set agreement (seen) >= 0.98", qat["seen_agreement"], TARGETS["agreement"], "ge"),
            ("8-bit weights seen mAP drop <= 0.1", fp32["seen_mAP"] - weights["seen_mAP"], TARGETS["weights"], "le"),
        ]
        for name, value, target, how in checks:
            ok = value <= target if how == "le" else value >= target
            out.append({"runtime": FORMATS[fmt], "target": name, "value": value, "pass": bool(ok)})
    return out


def write_report(path: Path, result: dict) -> None:
    """Markdown report plus JSON beside it."""
    rows = result["rows"]
    cpu = result["machine"]["cpu"]
    lines = [
        "# INT8 retention of the default model",
        "",
        f"Measured {result['date']} on {cpu['model']} ({cpu['cores']} cores; CPU features: {', '.join(cpu['features']) or 'none'}; "
        f"INT8 dot-product units (VNNI/AMX): {'yes' if cpu['vnni'] else 'no'}), "
        f"{result['machine']['versions']}.",
        "",
        f"Reproduce: `{result['command']}` ({result['seconds'] / 60:.0f} min here).",
        "",
        f"Test split: {result['images']['seen']} rendered scenes of the seen categories (tags at the shipped thresholds); "
        f"held-out split: {result['images']['heldout']} scenes of 60 categories never trained on, queries from MiniLM through "
        "`export --vocab` (open-set threshold). Calibration and QAT data: rendered train-split scenes "
        f"({result['settings']['calib_size']} calibration images of {result['settings']['qat_images']}; QAT "
        f"{result['settings']['qat_steps']} steps, distillation from the fp32 model only, no labels). "
        "Agreement: mean per-image F1 between the variant's tag set and fp32's on the same runtime.",
        "",
        "| variant | runtime | seen mAP | seen macro F1 | seen agreement | held-out mAP | held-out agreement | model file MB | ms/img b1 | ms/img b8 | peak RSS MB b1 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['variant']} | {r['runtime']} | {r['error']} |" + " |" * 8)
            continue
        lines.append(
            f"| {r['variant']} | {r['runtime']} | {r['seen_mAP']:.2f} | {r['seen_macro_f1']:.2f} | {r['seen_agreement']:.4f} | "
            f"{r['heldout_mAP']:.2f} | {r['heldout_agreement']:.4f} | {r['size_mb']:.2f} | {r['ms_per_image_b1']:.2f} | "
            f"{r['ms_per_image_b8']:.2f} | {r['peak_rss_mb_b1']:.0f} |"
        )
    lines += ["", "## Targets", "", "| runtime | target | measured | |", "|---|---|---|---|"]
    for v in result["verdicts"]:
        lines.append(f"| {v['runtime']} | {v['target']} | {v['value']:.3f} | {'pass' if v['pass'] else 'miss'} |")
    lines += ["", "## Where INT8 runs", "",
              "Operator counts of the fp32 and INT8 (PTQ; QAT has the same graph) bundles as each runtime executes them: "
              "OpenVINO's runtime graph (layer @ runtime precision), onnxruntime's optimized graph (operator types).", ""]
    for name, counts in result["kernels"].items():
        lines.append(f"- {name}: " + ", ".join(f"{k} x{v}" for k, v in counts.items()))
    lines += ["", "Reading them: onnxruntime fuses DequantizeLinear(int8 weight) + MatMul behind a QuantizeLinear of the "
              "activation into `MatMulIntegerToFloat` (an int8 x int8 product with a float result); every such layer "
              "quantizes its input on the fly (the `QuantizeLinear` count), and a `Conv` left as `Conv` runs in float with "
              "dequantized weights (the first convolution is kept in float on purpose; onnxruntime forms an int8 "
              "`QLinearConv` only where a convolution's output is quantized too). OpenVINO lists the precision each kernel runs in: `u8`/`i8` "
              "FullyConnected, MatMul and Convolution are int8 kernels, `f32` ones are float (LayerNorm as MVN, "
              "softmax, GELU and residual adds stay float by NNCF's transformer preset). "
              + ("This CPU has VNNI: the int8 kernels use its dot-product instructions; on a model this small, the float "
                 "operations between them and each run's fixed cost weigh as much as the matmuls."
                 if cpu["vnni"] else
                 "On a CPU without VNNI the int8 kernels have no dot-product instruction to use, which is why they are "
                 "not faster here.")]
    lines += ["", "bf16: the fp32 OpenVINO IR computed in bf16 (`--compute-precision bf16`, OpenVINO's inference precision "
              "hint), on CPUs with AVX512_BF16 or AMX only; agreement is against fp32 on the same runtime."]
    lines += ["", "Quantization times here: " + ", ".join(f"{k} {v:.0f} s" for k, v in result["quantize_seconds"].items()) + "."]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    path.with_suffix(".json").write_text(json.dumps(result, indent=1), encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=REPO / "work-out" / "int8")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--calib-size", type=int, default=300)
    parser.add_argument("--qat-steps", type=int, default=300)
    parser.add_argument("--qat-images", type=int, default=2000)
    parser.add_argument("--test-count", type=int, default=2000)
    parser.add_argument("--report", type=Path, default=HERE / "int8_default_model.md")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    prepare(work, args.test_count, args.qat_images)
    checkpoints = quantize(work, args.model, args.calib_size, args.qat_steps)
    bundles = export(work, checkpoints)
    result = measure(work, bundles)
    result.update({
        "date": datetime.date.today().isoformat(),
        "command": "python recipes/default_model/int8_retention.py " + " ".join(relative_to_cwd(a) for a in (sys.argv[1:] if argv is None else argv)),
        "seconds": time.perf_counter() - started,
        "settings": {"calib_size": args.calib_size, "qat_steps": args.qat_steps, "qat_images": args.qat_images},
        "machine": {"cpu": cpu_features(), "versions": ", ".join(f"{n} {_package_version(n)}" for n in
                                                          ("torch", "nncf", "onnxruntime", "openvino"))},
        "quantize_seconds": {m: float((work / f"q_{m}.seconds").read_text()) for m in ("weights", "ptq", "qat")
                             if (work / f"q_{m}.seconds").is_file()},
    })
    result["verdicts"] = verdicts(result["rows"])
    write_report(args.report, result)
    print(args.report.read_text())


if __name__ == "__main__":
    main()
