"""What TensorRT's symmetric int8 costs the default model's answers, measured on the CPU:

    python benchmarks/experiments/trt_int8_symmetric.py --workdir /tmp/trt-sym --report benchmarks/results/trt_int8_symmetric/trt_int8_symmetric.md

TensorRT accepts only symmetric int8 Q/DQ, so `ram-edge export INT8_BUNDLE --format trt` converts the
asymmetric (uint8) activation quantizers of an NNCF INT8 ONNX into symmetric int8 ones covering the
same range (export/tensorrt_qdq.py). This runs the shipped default model's fp32 ONNX, its INT8 ONNX
as shipped, and that INT8 ONNX converted for TensorRT, all with onnxruntime on the CPU, on the
default model's rendered test split: mAP, tag-set F1 and identical tag sets against fp32 and against
the asymmetric INT8, and the largest probability change. The engine itself adds TensorRT's own
kernels on top; `python -m ram_edge.benchmarks.gpu_check` measures that on a GPU.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


from ram_edge.benchmarks.harness import (
    cpu_features, git_commit, log, map_on_tag_names, markdown_table, run_cli, write_report_files,
)

REPO = Path(__file__).resolve().parents[2]


def _probs(onnx_path: Path, images: np.ndarray, batch: int = 16) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: images[i:i + batch]})[0] for i in range(0, len(images), batch)])


def _split(work: Path, count: int, preprocess_cfg) -> tuple[np.ndarray, list[list[str]]]:
    from ram_edge.preprocess import load_image, preprocess

    split = work / f"test-{count}"
    if not (split / "annotations.jsonl").is_file():
        run_cli("data", "scenes", "-o", split, "--count", count, "--split", "test", "--seed", "0", "--overwrite", capture=True)
    rows = [json.loads(line) for line in (split / "annotations.jsonl").read_text().splitlines() if line.strip()]
    images = np.stack([preprocess(load_image(split / r["image"]), preprocess_cfg) for r in rows]).astype(np.float32)
    return images, [r["tags"] for r in rows]


def compare(probs: np.ndarray, reference: np.ndarray, labels) -> dict[str, float]:
    """Tag-set F1, share of identical tag sets and the largest |probability change| of `probs` against `reference`."""
    from ram_edge.labels import tag_set_f1

    got, expected = labels.fired(probs), labels.fired(reference)
    f1 = tag_set_f1(got, expected)
    return {"tag_set_f1": float(np.mean(f1)), "identical_sets": float(np.mean(np.all(got == expected, axis=1))),
            "max_abs_diff": float(np.abs(probs - reference).max())}


def measure(work: Path, count: int) -> dict[str, Any]:
    """The three variants on `count` rendered test scenes."""
    from ram_edge.bundle import read_bundle
    from ram_edge.default_model import default_model_path
    from ram_edge.export.tensorrt_qdq import convert_file

    fp32, int8 = read_bundle(default_model_path("bundle_fp32")), read_bundle(default_model_path("bundle"))
    symmetric = work / "int8-symmetric.onnx"
    conversion = convert_file(int8.file("model"), symmetric).as_dict()
    images, truth = _split(work, count, fp32.preprocess)
    labels, tags = fp32.labels, fp32.labels.tags
    probs = {"fp32 ONNX": _probs(fp32.file("model"), images), "INT8 ONNX, asymmetric (as shipped)": _probs(int8.file("model"), images),
             "INT8 ONNX, symmetric (for TensorRT)": _probs(symmetric, images)}
    asymmetric = probs["INT8 ONNX, asymmetric (as shipped)"]
    rows = []
    for variant, p in probs.items():
        row: dict[str, Any] = {"variant": variant, "mAP": round(map_on_tag_names(p, tags, truth), 2)}
        row.update({f"{k}_vs_fp32": round(v, 4) for k, v in compare(p, probs["fp32 ONNX"], labels).items()})
        row.update({f"{k}_vs_asymmetric": round(v, 4) for k, v in compare(p, asymmetric, labels).items()})
        rows.append(row)
    return {"images": len(images), "conversion": conversion, "rows": rows}


def write_report(path: Path, result: dict[str, Any]) -> None:
    """Markdown report and its JSON beside it."""
    keys = ["variant", "mAP", "tag_set_f1_vs_fp32", "identical_sets_vs_fp32", "max_abs_diff_vs_fp32",
            "tag_set_f1_vs_asymmetric", "identical_sets_vs_asymmetric", "max_abs_diff_vs_asymmetric"]
    cpu = result["cpu"]
    lines = [
        "# TensorRT's symmetric int8: the default model's answers",
        "",
        f"Generated {result['date']} by `{result['command']}` at commit {result['commit']}, on {cpu['model']} "
        f"({cpu['cores']} cores; {', '.join(cpu['features']) or 'no AVX2'}), onnxruntime CPU for every variant.",
        "",
        f"{result['images']} rendered test scenes of the shipped default model. The symmetric variant is the INT8 ONNX that "
        f"`ram-edge export INT8_BUNDLE --format trt --precision int8` builds the engine from; the engine adds TensorRT's own "
        f"kernels, unmeasured here (see the GPU check).",
        "",
        *markdown_table(result["rows"], keys),
        "",
        f"Conversion: {json.dumps(result['conversion'])}",
        "",
    ]
    write_report_files(path, "\n".join(lines), result)


def main(argv: list[str] | None = None) -> None:
    """Command line: measure and write the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, required=True, help="Folder for the rendered scenes and the converted ONNX.")
    parser.add_argument("--report", type=Path, required=True, help="Markdown report to write (JSON beside it).")
    parser.add_argument("--count", type=int, default=300, help="Rendered test scenes [300].")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result = measure(args.workdir, args.count)
    result.update({"date": datetime.date.today().isoformat(), "commit": git_commit(REPO), "cpu": cpu_features(),
                   "command": "python benchmarks/experiments/trt_int8_symmetric.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                   "seconds": round(time.perf_counter() - started, 1)})
    write_report(args.report, result)
    log(f"wrote {args.report}")


if __name__ == "__main__":
    main()
