"""`ram-edge bench`: time one runtime on one checkpoint directory or bundle, several side by side, or a suite."""

from __future__ import annotations

import json
from dataclasses import asdict

import click

from .options import compute_precision_option


def _mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} MB"


_INT8_KERNELS = {None: "", True: " with int8 kernels", False: " (int8 kernels off)"}
_INT8_U8U8 = {None: "", True: " on U8U8 kernels", False: " on U8S8 kernels"}


def _human(r) -> list[str]:
    """The result as aligned `label  value` lines."""
    b, i = r.latency_batch_ms, r.latency_image_ms
    threads = r.threads if r.threads is not None else "default"
    rows = [
        ("model", f"{r.model} ({r.family}, {r.format}, {r.precision} stored, {r.num_tags} tags at {r.image_size}px)"),
        ("runtime", f"{r.runtime} on {r.device} computing in {r.compute_precision}{_INT8_KERNELS[r.int8_kernels]}"
                    f"{_INT8_U8U8[r.int8_u8u8]}, "
                    f"threads {threads}; batch {r.batch_size}, "
                    f"{r.iters} timed after {r.warmup} warm-up, {r.input} input"),
        ("load", f"{r.load_time_s:.2f} s (first run {r.first_run_ms:.1f} ms, not counted below)"),
        ("per batch", f"p50 {b['p50']:.2f} ms   p90 {b['p90']:.2f} ms   p99 {b['p99']:.2f} ms   "
                      f"mean {b['mean']:.2f} ms   min {b['min']:.2f} ms"),
        ("per image", f"p50 {i['p50']:.2f} ms   p90 {i['p90']:.2f} ms   p99 {i['p99']:.2f} ms"),
        ("throughput", f"{r.throughput_img_s:.1f} img/s"),
        ("peak RSS", f"{_mb(r.peak_rss_mb)} (process high-water mark; {_mb(r.rss_before_load_mb)} before load, "
                     f"{_mb(r.rss_after_load_mb)} after)"),
        ("size", f"{r.model_size_mb:.1f} MB on disk"),
    ]
    width = max(len(label) for label, _ in rows)
    return [f"{label:<{width}}  {value}" for label, value in rows]


@click.command()
@click.argument("models", nargs=-1, metavar="MODEL[@RUNTIME]...")
@click.option("--suite", "suite_file", metavar="FILE|NAME", default=None,
              help="Run a benchmark suite (YAML: models x runtimes x precisions x batches x tag counts) instead of one MODEL: "
                   "a file, or the name of a suite shipped with ram-edge (default_model, full_size_swin_b384, ...).")
@click.option("-o", "--output", "report_dir", type=click.Path(file_okay=False), default="bench-reports", show_default=True,
              help="With --suite: where the report (<machine>-<suite>-<date>.md/.json) and its PNG plots go.")
@click.option("--workdir", type=click.Path(file_okay=False), default=None,
              help="With --suite: where exported bundles are kept between runs [~/.cache/ram-edge/bench/<suite>].")
@click.option("--runtime", default="auto", show_default=True, help="Backend: auto, torch, ort, openvino, trt.")
@click.option("--device", default=None, help="Device for the runtime (e.g. cpu, cuda, cuda:1, GPU, NPU).")
@click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True, help="Images per run call.")
@click.option("--iters", type=click.IntRange(min=1), default=20, show_default=True, help="Timed run calls.")
@click.option("--warmup", type=click.IntRange(min=0), default=3, show_default=True, help="Untimed run calls before timing (after the first, which is timed apart).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads for the runtime.")
@compute_precision_option
@click.option("--images", "images", type=click.Path(exists=True, file_okay=False), default=None, help="Benchmark on these images (cycled to fill the batch) instead of random input.")
@click.option("--rounds", type=click.IntRange(min=1), default=None,
              help="With two or more models: interleaved rounds (A B C, C B A, ...), each run in a fresh process [2].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with every number.")
def bench(models, suite_file, report_dir, workdir, runtime, device, batch_size, iters, warmup, threads, compute_precision, images,
          rounds, as_json) -> None:
    """Benchmark MODEL (checkpoint directory or bundle): load time, latency, throughput, memory.

    With two or more models (each PATH or PATH@RUNTIME, e.g. fp32_bundle int8_ir@openvino): each timed in
    its own process in interleaved rounds, one table with the speed-up against the first.

    With --suite FILE.yaml (or a shipped suite's name): the whole matrix the file describes, each cell in a
    fresh process, written as a markdown + JSON report with plots, judged by the suite's targets.
    """
    from ..benchmarks.harness import run_benchmark

    if suite_file:
        if models:
            raise click.UsageError("give MODEL or --suite, not both (the suite file names its models)")
        _refuse_given(_CELL_OPTIONS + ("rounds",), "not with --suite: the suite file sets them for each cell; edit it instead")
        _run_suite(suite_file, report_dir, workdir, as_json)
        return
    if not models:
        raise click.UsageError("give MODEL (a checkpoint directory or bundle), two or more to compare, or --suite FILE.yaml")
    _refuse_given(_SUITE_OPTIONS, "only with --suite; to keep one MODEL's numbers, use --json > FILE.json")
    if len(models) > 1:
        _side_by_side(models, runtime, device, batch_size, iters, warmup, threads, compute_precision, images, rounds or 2, as_json)
        return
    _refuse_given(("rounds",), "only with two or more models")
    from .compare import parse_model_spec

    spec = parse_model_spec(models[0], option="MODEL")
    model = str(spec.path)
    if spec.runtime != "auto":
        if runtime != "auto":
            raise click.UsageError(f"{models[0]}: give the runtime once, as MODEL@RUNTIME or --runtime")
        runtime = spec.runtime

    result = run_benchmark(
        model, runtime=runtime, device=device, batch_size=batch_size, iters=iters, warmup=warmup,
        threads=threads, images_dir=images, compute_precision=compute_precision,
    )
    if as_json:
        click.echo(json.dumps(asdict(result)))
    else:
        for line in _human(result):
            click.echo(line)


def _side_by_side(models, runtime, device, batch_size, iters, warmup, threads, compute_precision, images, rounds, as_json) -> None:
    """Several models timed in interleaved rounds, one table (ram_edge.benchmarks.side_by_side)."""
    from ..benchmarks.side_by_side import bench_side_by_side, table_lines
    from .compare import parse_model_spec

    specs = [parse_model_spec(text, option="MODEL") for text in models]
    for spec in specs:
        if not spec.path.exists():
            raise click.UsageError(f"MODEL {spec.text}: {spec.path} does not exist")
    options = ["--batch-size", str(batch_size), "--iters", str(iters), "--warmup", str(warmup)]
    for flag, value in (("--device", device), ("--threads", threads), ("--compute-precision", compute_precision),
                        ("--images", images)):
        if value is not None:
            options += [flag, str(value)]
    pairs = [(str(s.path), s.runtime if s.runtime != "auto" else runtime) for s in specs]
    rows = bench_side_by_side(pairs, options, rounds=rounds)
    for row, spec in zip(rows, specs):
        row["model"] = spec.text
    if as_json:
        click.echo(json.dumps({"rounds": rounds, "rows": rows}))
    else:
        for line in table_lines(rows):
            click.echo(line)
    if any(r["ms_per_image"] is None for r in rows):
        raise SystemExit(1)


_SUITE_OPTIONS = ("report_dir", "workdir")
_CELL_OPTIONS = ("runtime", "device", "batch_size", "iters", "warmup", "threads", "compute_precision", "images")


def _refuse_given(names: tuple[str, ...], why: str) -> None:
    """Refuse options given on the command line that this mode of `bench` would ignore."""
    ctx = click.get_current_context()
    given = [p.opts[-1] for p in ctx.command.params
             if p.name in names and ctx.get_parameter_source(p.name) is click.core.ParameterSource.COMMANDLINE]
    if given:
        raise click.UsageError(f"{', '.join(given)}: {why}")


def _run_suite(suite_file: str, report_dir: str, workdir: str | None, as_json: bool) -> None:
    import os
    from pathlib import Path

    from ..benchmarks.suite import Suite, SuiteConfig, suite_path

    config = SuiteConfig.load(suite_path(suite_file))
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ram-edge" / "bench" / config.name
    command = f"ram-edge bench --suite {suite_file} -o {report_dir}" + (f" --workdir {workdir}" if workdir else "")
    result = Suite(config, Path(workdir) if workdir else cache, Path(report_dir), command=command).run()
    if as_json:
        click.echo(json.dumps({"targets": result["targets"], "rows": result["rows"]}, default=str))
    else:
        for target in result["targets"]:
            verdict = "not judged" if target["pass"] is None else ("pass" if target["pass"] else "MISS")
            click.echo(f"{target['model']}: {target['target']}: {target['value']}: {verdict}")
        failed = [r for r in result["rows"] if r.get("error")]
        click.echo(f"{len(result['rows']) - len(failed)} of {len(result['rows'])} cell(s) measured; report in {report_dir}")
