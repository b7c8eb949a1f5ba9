"""Full-size Swin-L/384 RAM benchmark with random weights (accuracy does not matter for speed).

    python benchmarks/experiments/full_size.py --workdir /tmp/ram-fullsize --threads 2
    python benchmarks/experiments/full_size.py --workdir /tmp/ram-fullsize-b --preset ram_swin_base_384

Builds the model from the shipped config, exports ONNX and OpenVINO fp32 bundles (full label set
and 1000/100/10-tag subsets), counts multiply-accumulates with torch's FlopCounterMode, measures
the fp32 matmul roofline, then runs `ram-edge bench --json` for every (runtime, bundle, batch) in
its own process (so peak RSS is per runtime) and writes benchmarks/results/full_size/full_size_<preset>.md + .json.
The roofline is read before every row and after the last, because this shared VM drifts.

`ram-edge bench --suite full_size_swin_l384` measures most of this as a suite (fp32 on each runtime at batch 1 and 8
against the roofline, a tag subset against its MAC bound) and INT8, bf16, cold start and accuracy besides; only this
script times torch's decoder alone at each query count (all, 1000, 100, 10 tags).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from ram_edge.benchmarks.harness import roofline_in_subprocess, run_cli, write_markdown_report
from ram_edge.benchmarks.random_weights import PRESET, build_checkpoint, count_macs, subset_queries
from ram_edge.fileio import atomic_file

RESULTS = Path(__file__).resolve().parents[1] / "results" / "full_size"
# Report file stem per architecture (benchmarks/results/full_size/full_size_<stem>.md).
REPORT_NAMES = {"ram_swin_large_384": "swin_l384", "ram_swin_base_384": "swin_b384",
                "ram_plus_swin_large_384": "ram_plus_swin_l384", "ram_plus_swin_base_384": "ram_plus_swin_b384"}
SUBSETS = (1000, 100, 10)


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def torch_decoder_times(ckpt: Path, queries: list[int], threads: int, iters: int = 5) -> dict[int, float]:
    """Median seconds of the decoder alone (batch 1, precomputed queries) in torch eager."""
    import torch

    from ram_edge.models.checkpoint import load_checkpoint

    torch.set_num_threads(threads)
    model, _ = load_checkpoint(ckpt)
    embeds = torch.randn(1, 1 + model.config.swin.num_tokens, model.config.embed_dim)
    out = {}
    ram_plus = model.family == "ram_plus"
    with torch.inference_mode():
        for n in queries:
            q = subset_queries(model, embeds, n)
            model.forward_head(embeds, q)
            times = []
            for _ in range(iters):
                start = time.perf_counter()
                model.forward_head(embeds, subset_queries(model, embeds, n) if ram_plus else q)
                times.append(time.perf_counter() - start)
            out[n] = float(np.median(times))
    return out


def export(ckpt: Path, dest: Path, fmt: str, tags: list[str] | None = None) -> Path:
    """Export one bundle (skipped when it exists)."""
    from ram_edge.export.writer import export_bundle

    if not (dest / "manifest.json").exists():
        _log(f"export {fmt} {len(tags) if tags else 'all'} tags -> {dest}")
        export_bundle(ckpt, dest, fmt=fmt, tags=tags, overwrite=True)
    return dest


def bench(path: Path, runtime: str, batch: int, threads: int, iters: int, warmup: int) -> dict:
    """`ram-edge bench --json` in a fresh process."""
    return json.loads(run_cli("bench", path, "--runtime", runtime, "--batch-size", batch, "--iters", iters, "--warmup", warmup,
                              "--threads", threads, "--json", capture=True))


def _bound_text(macs: dict[str, float], num: int, subset: int) -> str:
    """What the MAC counts allow a query subset to gain, at equal efficiency."""
    enc, dec, sub = macs["encoder"], macs[f"decoder_{num}"], macs[f"decoder_{subset}"]
    return (f"The decoder is {dec / 1e9:.1f} of {(enc + dec) / 1e9:.1f} G MACs at {num} queries, so at equal efficiency a "
            f"{subset}-tag subset can speed the whole model up by at most {(enc + dec) / (enc + sub):.2f}x "
            f"(dropping the decoder entirely: {(enc + dec) / enc:.2f}x).")


def main(argv: list[str] | None = None) -> None:
    """Run the full-size benchmark and write the report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--preset", default=PRESET, choices=sorted(REPORT_NAMES), help="architecture to build")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--report", type=Path, default=None, help="default: benchmarks/results/full_size/full_size_<preset>.md")
    parser.add_argument("--iters", type=int, default=5)
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    report = args.report or RESULTS / f"full_size_{REPORT_NAMES[args.preset]}.md"

    ckpt = build_checkpoint(args.workdir, args.preset)
    tags = (args.workdir / "ckpt" / "tags.txt").read_text().splitlines()
    num = len(tags)
    macs = count_macs(ckpt, [num, *SUBSETS])
    _log(f"MACs per image: {json.dumps({k: round(v / 1e9, 2) for k, v in macs.items()})} G")
    dec_times = torch_decoder_times(ckpt, [num, *SUBSETS], args.threads)
    _log(f"torch decoder-only seconds: {dec_times}")

    bundles = {("onnx", num): export(ckpt, args.workdir / "onnx_full", "onnx"),
               ("openvino", num): export(ckpt, args.workdir / "openvino_full", "openvino")}
    for n in SUBSETS:
        bundles["openvino", n] = export(ckpt, args.workdir / f"openvino_{n}", "openvino", tags[:n])
    bundles["onnx", 100] = export(ckpt, args.workdir / "onnx_100", "onnx", tags[:100])

    plan = [(ckpt, "torch", 1, num), (bundles["onnx", num], "ort", 1, num), (bundles["openvino", num], "openvino", 1, num),
            (ckpt, "torch", 8, num), (bundles["onnx", num], "ort", 8, num), (bundles["openvino", num], "openvino", 8, num)]
    plan += [(bundles["openvino", n], "openvino", 1, n) for n in SUBSETS] + [(bundles["onnx", 100], "ort", 1, 100)]
    rows: list[dict] = []
    # The matmul roofline of this shared VM drifts (37.6 to 79.5 GMAC/s seen in one day), so it is read
    # right before every row and once after the last; each row is judged against the better of the two
    # readings around it, which never flatters a row that ran in a slow spell.
    readings: list[float] = []

    def read_roofline() -> None:
        readings.append(roofline_in_subprocess(threads=args.threads, repeats=3))
        _log(f"  matmul roofline {readings[-1] / 1e9:.1f} GMAC/s")

    def save_json() -> None:
        """The rows so far (rewritten after each one, so that an interrupted run keeps them)."""
        data = {"preset": args.preset, "rows": rows, "macs": macs, "roofline_readings": readings,
                "roofline_macs_s": max(readings), "torch_decoder_s": dec_times}
        with atomic_file(report.with_suffix(".json"), "w") as fh:
            fh.write(json.dumps(data, indent=1))

    for path, runtime, batch, n in plan:
        read_roofline()
        iters = args.iters if batch == 1 else max(2, args.iters // 2)
        result = bench(path, runtime, batch, args.threads, iters, warmup=1)
        per_image = macs["encoder"] + macs[f"decoder_{n}"]
        seconds = result["latency_image_ms"]["p50"] / 1e3
        result.update(queries=n, macs_per_image=per_image, achieved_gmacs=per_image / seconds / 1e9,
                      roofline_gmacs=readings[-1] / 1e9)
        rows.append(result)
        _log(f"  p50 {result['latency_image_ms']['p50']:.0f} ms/image, {result['achieved_gmacs']:.1f} GMAC/s")
        save_json()
    read_roofline()
    for i, row in enumerate(rows):
        row["roofline_gmacs"] = max(readings[i], readings[i + 1]) / 1e9
        row["pct_of_roofline"] = 100 * row["achieved_gmacs"] / row["roofline_gmacs"]
    save_json()

    def p50(runtime, batch, n=num):
        return next(r["latency_image_ms"]["p50"] for r in rows if r["runtime"] == runtime and r["batch_size"] == batch and r["queries"] == n)

    dec_lines = "\n".join(
        f"| {n} | {macs[f'decoder_{n}'] / 1e9:.1f} | {dec_times[n] * 1e3:.0f} | "
        + (f"{p50('openvino', 1, n):.0f} |" if ("openvino", n) in bundles else "– |")
        for n in [num, *SUBSETS]
    )
    gmacs = [r / 1e9 for r in readings]
    notes = f"""Model: {args.preset} ({num} tags), random weights; input: random; {args.threads} threads.
Encoder + image_proj: {macs['encoder'] / 1e9:.1f} G MACs/image. fp32 matmul roofline (the faster of torch and OpenVINO at 4096x4096, {args.threads} threads),
read before every row and after the last: {', '.join(f'{g:.1f}' for g in gmacs)} GMAC/s (min {min(gmacs):.1f}, max {max(gmacs):.1f}).
Each row's "% of roofline" is against the better of the two readings around it (column "roofline GMAC/s").

Ratios (p50 per image, batch 1): openvino / torch eager speed-up = {p50('torch', 1) / p50('openvino', 1):.2f}x;
ort / torch = {p50('torch', 1) / p50('ort', 1):.2f}x; openvino 100-tag subset vs full = {p50('openvino', 1) / p50('openvino', 1, 100):.2f}x;
ort 100-tag subset vs full = {p50('ort', 1) / p50('ort', 1, 100):.2f}x.

Decoder alone (batch 1):

| queries | decoder G MACs | torch eager decoder ms | openvino whole model ms |
| --- | --- | --- | --- |
{dec_lines}

{_bound_text(macs, num, 100)}

Reproduce: `python benchmarks/experiments/full_size.py --workdir /tmp/ram-fullsize-{REPORT_NAMES[args.preset]} --preset {args.preset} --threads {args.threads}`.
"""
    write_markdown_report(rows, report, f"Full-size RAM ({args.preset}) latency on this machine", notes)
    _log(f"wrote {report}")


if __name__ == "__main__":
    main()
