"""Why is batch 8 slower per image than batch 1 on a CPU? Encoder and decoder timed apart, per batch size.

    python benchmarks/experiments/batching.py --workdir /tmp/ram-fullsize-b --preset ram_swin_base_384 --report benchmarks/results/batching/batching_swin_b384.md
    python benchmarks/experiments/batching.py --default-model --report benchmarks/results/batching/batching_default_model.md

torch eager, fp32, the given threads: per-image milliseconds of the Swin encoder (`forward_features`)
and of the recognition decoder at every tag (`forward_head` with the precomputed queries) at batch
1, 2, 4, 8, plus the size of the decoder's largest activation (batch x queries x hidden x 4 bytes)
against the CPU's last-level cache. Random weights for presets: timing only.
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

from ram_edge.fileio import atomic_file

from ram_edge.benchmarks.harness import cpu_features

BATCHES = (1, 2, 4, 8)


def _cache_mb() -> float | None:
    """The last-level cache in MB, from sysfs (None where unknown)."""
    best = None
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            level = int((index / "level").read_text())
            size = (index / "size").read_text().strip()
        except (OSError, ValueError):
            continue
        mb = float(size[:-1]) / 1024 if size.endswith("K") else float(size[:-1]) if size.endswith("M") else None
        if mb is not None and (best is None or level >= best[0]):
            best = (level, mb)
    return best[1] if best else None


def _median_ms(fn, iters: int) -> float:
    fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def measure(checkpoint: Path, threads: int, iters: int) -> dict[str, Any]:
    """Per-image ms of encoder and decoder at each batch size."""
    import torch

    from ram_edge.models.checkpoint import load_checkpoint

    torch.set_num_threads(threads)
    model, info = load_checkpoint(checkpoint)
    model.eval()
    size = model.config.preprocess.image_size
    rows = []
    with torch.inference_mode():
        queries = model.label_queries()
        for batch in BATCHES:
            x = torch.randn(batch, 3, size, size)
            embeds = model.forward_features(x)
            enc = _median_ms(lambda: model.forward_features(x), iters) / batch
            dec = _median_ms(lambda: model.forward_head(embeds, queries), iters) / batch
            hidden = model.config.head.hidden_size
            activation_mb = batch * queries.shape[1] * hidden * 4 / 2**20
            rows.append({"batch": batch, "encoder_ms_per_image": enc, "decoder_ms_per_image": dec,
                         "total_ms_per_image": enc + dec, "decoder_activation_mb": activation_mb})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return {"model": str(checkpoint), "tags": int(queries.shape[1]), "image_size": size, "threads": threads, "rows": rows}


def write_report(path: Path, result: dict[str, Any], title: str) -> None:
    """Markdown + JSON."""
    cache = result["llc_mb"]
    base = result["rows"][0]
    lines = [f"# {title}", "",
             f"Machine: {result['cpu']['model']}, {result['cpu']['cores']} cores ({', '.join(result['cpu']['features']) or 'AVX2'}), "
             f"last-level cache {cache if cache is not None else '?'} MB; torch eager fp32, {result['threads']} threads; "
             f"{result['tags']} tags at {result['image_size']} px; date {result['date']}  ",
             f"Command: `{result['command']}`", "",
             "| batch | encoder ms/image | decoder ms/image | total ms/image | total vs batch 1 | decoder activation MB |",
             "|---:|---:|---:|---:|---:|---:|"]
    for row in result["rows"]:
        lines.append(f"| {row['batch']} | {row['encoder_ms_per_image']:.1f} | {row['decoder_ms_per_image']:.1f} | "
                     f"{row['total_ms_per_image']:.1f} | {row['total_ms_per_image'] / base['total_ms_per_image']:.2f}x | "
                     f"{row['decoder_activation_mb']:.1f} |")
    lines += ["", result.get("finding", "")]
    with atomic_file(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    with atomic_file(path.with_suffix(".json"), "w") as fh:
        json.dump(result, fh, indent=1)


def finding(result: dict[str, Any]) -> str:
    """What the numbers say, computed from them."""
    rows = {r["batch"]: r for r in result["rows"]}
    one, eight = rows[1], rows[max(rows)]
    enc = eight["encoder_ms_per_image"] / one["encoder_ms_per_image"]
    dec = eight["decoder_ms_per_image"] / one["decoder_ms_per_image"]
    best = min(result["rows"], key=lambda r: r["total_ms_per_image"])
    return (f"From batch 1 to {max(rows)}, the encoder's time per image changes {enc:.2f}x and the decoder's {dec:.2f}x. "
            f"The fastest batch per image here is {best['batch']} ({best['total_ms_per_image']:.1f} ms/image).")


def main(argv: list[str] | None = None) -> None:
    """Measure and write the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ram-batching"))
    parser.add_argument("--preset", default="ram_swin_base_384")
    parser.add_argument("--default-model", action="store_true", help="the shipped default model instead of a preset")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--report", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.default_model:
        from ram_edge.default_model import default_model_path

        checkpoint, title = default_model_path("checkpoint"), "Batching on a CPU: the default model"
    else:
        from ram_edge.benchmarks.random_weights import build_checkpoint

        args.workdir.mkdir(parents=True, exist_ok=True)
        checkpoint, title = build_checkpoint(args.workdir, args.preset), f"Batching on a CPU: {args.preset}"
    result = measure(checkpoint, args.threads, args.iters)
    result.update(cpu=cpu_features(), llc_mb=_cache_mb(), date=datetime.date.today().isoformat(),
                  command=" ".join(["python benchmarks/experiments/batching.py", *(argv if argv is not None else sys.argv[1:])]))
    result["finding"] = finding(result)
    write_report(args.report, result, title)
    print(result["finding"])


if __name__ == "__main__":
    main()
