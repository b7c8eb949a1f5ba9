"""Whether the `openvino` runtime gives an image the same probabilities alone and in a batch, and at what speed.

`python benchmarks/experiments/openvino_int8_batch.py --old OLD_INT8 --new NEW_INT8 --images DIR [--report MD]`

Three ways of running an INT8 bundle, each at batch 1 and 8, timed in-process in interleaved rounds (every second
round reversed) on random input, a figure being the median of its rounds; batch invariance measured on the images
of DIR (batch 8 and all images in one call, against one image per call):

- `old, batched`: the bundle as exported before its pooled token's DequantizeLinear moved below its Transpose, run
  in whole batches as the runtime did before it checked (wrong answers past the first image of a batch);
- `old, runtime's check`: the same bundle as the runtime now loads it (one image per inference where it sees the
  wrong kernel);
- `new`: the bundle rewritten by `export.int8_activations.dequantize_at_reductions`, run in whole batches.

It also runs the smallest graph that shows OpenVINO's fault: Q -> DQ -> Transpose -> GlobalAveragePool on a batch
of 8, and the same with the DequantizeLinear below the Transpose.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from ram_edge.errors import RamEdgeError, RamEdgeWarning
from ram_edge.fileio import atomic_file

from ram_edge.benchmarks.harness import cpu_features, log, relative_to_cwd

CELLS = ("old, batched", "old, runtime's check", "new")
BATCHES = (1, 8)
TOLERANCE = 1e-4


def smallest_graph(sink: bool) -> tuple[np.ndarray, str]:
    """(per-image error of OpenVINO's average against numpy's, on a batch of 8; the reduction's runtime precision)."""
    import onnx
    import openvino as ov
    from onnx import TensorProto, helper, numpy_helper

    scale, zero = 0.02, 128
    if sink:
        middle = [helper.make_node("Transpose", ["q"], ["qt"], perm=[0, 2, 1]),
                  helper.make_node("DequantizeLinear", ["qt", "s", "z"], ["t"])]
    else:
        middle = [helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"]),
                  helper.make_node("Transpose", ["d"], ["t"], perm=[0, 2, 1])]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]), *middle,
             helper.make_node("GlobalAveragePool", ["t"], ["y"])]
    graph = helper.make_graph(nodes, "pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 100, 128])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 128, 1])],
                              [numpy_helper.from_array(np.array(scale, np.float32), "s"),
                               numpy_helper.from_array(np.array(zero, np.uint8), "z")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    core = ov.Core()
    compiled = core.compile_model(core.read_model(model.SerializeToString(), b""), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "f32"})
    x = np.random.default_rng(0).standard_normal((8, 100, 128), dtype=np.float32) + 0.5
    got = compiled.create_infer_request().infer({0: x})[0][..., 0]
    expected = ((np.clip(np.rint(x / scale) + zero, 0, 255) - zero) * scale).mean(axis=1)
    ops = [op.get_rt_info() for op in compiled.get_runtime_model().get_ordered_ops()]
    precision = [str(info["runtimePrecision"].astype(str)) for info in ops
                 if str(info["layerType"].astype(str)) == "Reduce"]
    return np.abs(got - expected).max(axis=1), ",".join(precision)


def load(cell: str, old: Path, new: Path):
    """The Tagger of a cell (the old bundle's warning, when the runtime gives one, is the expected result)."""
    from ram_edge import Tagger

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RamEdgeWarning)
        tagger = Tagger.load(old if cell.startswith("old") else new, runtime="openvino")
        size = tagger.info.preprocess.image_size
        tagger.predict(np.zeros((1, 3, size, size), np.float32))
    if cell == "old, batched":
        tagger.runtime.one_image_per_inference = False  # as before the runtime checked
    return tagger


def invariance(tagger, images: np.ndarray) -> dict:
    """Batch 8 and one call on every image against one image per call: images moved by more than 1e-4, largest move."""
    alone = np.concatenate([tagger.predict(images[i:i + 1]) for i in range(len(images))])
    eights = np.concatenate([tagger.predict(images[i:i + 8]) for i in range(0, len(images), 8)])
    out = {}
    for name, probs in (("batch 8", eights), (f"all {len(images)} in one call", tagger.predict(images))):
        moved = np.abs(probs - alone).max(axis=1)
        changed = (tagger.labels.fired(probs) != tagger.labels.fired(alone)).any(axis=1)
        out[name] = {"images_moved": int((moved > TOLERANCE).sum()), "max": float(moved.max()),
                     "tag_sets_changed": int(changed.sum())}
    return out


def timing(taggers: dict, size: int, rounds: int, iters: int, warmup: int) -> dict:
    """ms/image of every cell and batch: per round the median of `iters` timed calls after `warmup`."""
    rng = np.random.default_rng(0)
    inputs = {b: rng.standard_normal((b, 3, size, size), dtype=np.float32) for b in BATCHES}
    ms: dict[str, dict[int, list[float]]] = {c: {b: [] for b in BATCHES} for c in taggers}
    for r in range(rounds):
        order = list(taggers) if r % 2 == 0 else list(reversed(taggers))
        log(f"timing round {r + 1}/{rounds}")
        for cell in order:
            for batch in BATCHES:
                for _ in range(warmup):
                    taggers[cell].predict(inputs[batch])
                times = []
                for _ in range(iters):
                    start = time.perf_counter()
                    taggers[cell].predict(inputs[batch])
                    times.append((time.perf_counter() - start) * 1e3 / batch)
                ms[cell][batch].append(float(np.median(times)))
    return {c: {str(b): {"median_ms_per_image": float(np.median(v)), "rounds": v} for b, v in per.items()}
            for c, per in ms.items()}


def run(old: Path, new: Path, images_dir: Path, rounds: int, iters: int, warmup: int) -> dict:
    """Every measurement of the report."""
    import openvino as ov

    log("smallest graph")
    small = {}
    for sink in (False, True):
        errors, precision = smallest_graph(sink)
        small["DQ below the Transpose" if sink else "DQ above the Transpose"] = {
            "reduce_precision": precision, "per_image_error": [round(float(e), 4) for e in errors]}
    taggers = {cell: load(cell, old, new) for cell in CELLS}
    paths = sorted(p for p in images_dir.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not paths:
        raise RamEdgeError(f"{images_dir}: no .png / .jpg images; render some with "
                           f"`ram-edge data scenes -o DIR --count 96`")
    images = taggers["new"].load_images(paths)
    log(f"batch invariance on {len(images)} images")
    answers = {cell: invariance(t, images) for cell, t in taggers.items()}
    speed = timing(taggers, int(taggers["new"].info.preprocess.image_size), rounds, iters, warmup)
    hint = ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT")
    return {"date": datetime.date.today().isoformat(), "cpu": cpu_features(), "openvino": ov.__version__,
            "plugin_default_inference_precision": hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint),
            "runtime": {c: {"compute_precision": t.runtime.compute_precision,
                            "inference_precision": t.runtime.inference_precision,
                            "one_image_per_inference": t.runtime.one_image_per_inference} for c, t in taggers.items()},
            "smallest_graph": small, "images": len(images), "invariance": answers, "speed": speed,
            "rounds": rounds, "iters": iters, "warmup": warmup, "threads": os.cpu_count()}


def markdown(result: dict, command: str) -> str:
    """The report's tables."""
    cpu = result["cpu"]
    lines = ["# OpenVINO INT8: the same answers at every batch size", "",
             f"Machine: {cpu['model']}, {cpu['cores']} cores (shared with other work), features "
             f"{', '.join(cpu['features'])}; OpenVINO {result['openvino']} (plugin default inference precision "
             f"{result['plugin_default_inference_precision']}; ram-edge pins f32)  ",
             f"Date: {result['date']}; command: `{command}`", "",
             "Smallest graph, batch of 8 (error of each image's average against numpy):", "",
             "| graph | reduction computes in | error per image |", "|---|---|---|"]
    for name, row in result["smallest_graph"].items():
        lines.append(f"| {name} | {row['reduce_precision']} | {', '.join(f'{e:g}' for e in row['per_image_error'])} |")
    lines += ["", f"Default model, {result['images']} images: images whose probabilities moved by more than 1e-4 "
              "against one image per call (largest move; tag sets changed):", "",
              "| cell | compute / inference precision | one image per inference | batch 8 | all in one call |",
              "|---|---|---|---|---|"]
    for cell, rows in result["invariance"].items():
        rt = result["runtime"][cell]
        cells = [f"{r['images_moved']} ({r['max']:.3g}; {r['tag_sets_changed']})" for r in rows.values()]
        lines.append(f"| {cell} | {rt['compute_precision']} / {rt['inference_precision']} | "
                     f"{rt['one_image_per_inference']} | {' | '.join(cells)} |")
    lines += ["", f"Speed, ms/image on random input: median of {result['rounds']} interleaved rounds, each the median "
              f"of {result['iters']} calls after {result['warmup']} (the machine is shared: medians, not minima):", "",
              "| cell | batch 1 | batch 8 | per round (1; 8) |", "|---|---:|---:|---|"]
    for cell, per in result["speed"].items():
        rounds = "; ".join(", ".join(f"{m:.2f}" for m in per[str(b)]["rounds"]) for b in BATCHES)
        one, eight = (per[str(b)]["median_ms_per_image"] for b in BATCHES)
        lines.append(f"| {cell} | {one:.2f} | {eight:.2f} | {rounds} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", type=Path, required=True,
                        help="an INT8 bundle with the pooled DequantizeLinear above its Transpose")
    parser.add_argument("--new", type=Path, required=True, help="the same bundle rewritten (the shipped default one)")
    parser.add_argument("--images", type=Path, required=True, help="a folder of images (`ram-edge data scenes` output)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--report", type=Path, default=None, help="write a markdown report here (and .json beside it)")
    args = parser.parse_args(argv)
    try:
        result = run(args.old, args.new, args.images, args.rounds, args.iters, args.warmup)
    except RamEdgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    command = (f"python benchmarks/experiments/openvino_int8_batch.py --old {relative_to_cwd(args.old)} --new "
               f"{relative_to_cwd(args.new)} --images {relative_to_cwd(args.images)} --rounds {args.rounds} "
               f"--iters {args.iters} --warmup {args.warmup}")
    if args.report is not None:
        with atomic_file(args.report, "w") as fh:
            fh.write(markdown(result, command + f" --report {relative_to_cwd(args.report)}"))
        with atomic_file(args.report.with_suffix(".json"), "w") as fh:
            fh.write(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "cpu"}))


if __name__ == "__main__":
    main()
