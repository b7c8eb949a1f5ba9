"""Time one runtime on one model: load time, per-batch and per-image latency, throughput, memory.

The numbers mean the same for every backend because only `Runtime.run` is timed, on a batch
that is preprocessed once before the clock starts (random normal data by default, so that no
image decoding or resizing is measured). The first `run` is timed on its own and excluded:
OpenVINO compiles and TensorRT allocates there, which is load cost, not steady-state latency.

Memory: `peak_rss_mb` is the process high-water mark (`getrusage`), so it includes whatever ran
earlier in the same process (a test session, a previous benchmark); `rss_before_load_mb` and
`rss_after_load_mb` (current RSS from /proc, Linux only) bracket the model load. Sizes are in
MiB (2**20 bytes), written "MB" in reports.

Importing this module imports numpy and the standard library only; the runtime, Pillow (for
``--images``), tqdm and torch (for :func:`matmul_roofline`) are imported when used.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import os
import platform
import resource
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np

from ram_edge.cpu import cpu_flags, x86_int8_dot_product
from ram_edge.errors import RamEdgeError
from ram_edge.runtimes.openvino_runtime import INT8_KERNELS_ENV
from ram_edge.runtimes.ort_runtime import INT8_U8U8_ENV

# Per runtime: the environment variable of its CPU choice for INT8 bundles (on / off / auto) and what reports call it.
INT8_SETTINGS = {"openvino": (INT8_KERNELS_ENV, "int8 kernels"), "ort": (INT8_U8U8_ENV, "U8U8")}

_MIB = float(1 << 20)
T = TypeVar("T")

# Distribution whose version describes each built-in backend; plugins fall back to their module's top package.
_RUNTIME_PACKAGES = {"torch": "torch", "ort": "onnxruntime", "openvino": "openvino", "trt": "tensorrt"}


@dataclass
class BenchResult:
    """One benchmark run; `asdict` of it is the `ram-edge bench --json` object."""

    model: str
    runtime: str
    device: str
    precision: str  # stored: the bundle's weights (fp32, fp16, int8)
    compute_precision: str  # arithmetic: what the runtime computes in (fp32, bf16, fp16, ...)
    format: str
    family: str
    batch_size: int
    iters: int
    warmup: int
    threads: int | None
    num_tags: int
    image_size: int
    load_time_s: float
    first_run_ms: float
    latency_batch_ms: dict[str, float]
    latency_image_ms: dict[str, float]
    throughput_img_s: float
    peak_rss_mb: float
    rss_before_load_mb: float | None
    rss_after_load_mb: float | None
    model_size_mb: float
    machine: dict[str, Any]
    input: str
    timestamp: str
    # OpenVINO with an INT8 bundle on a CPU: whether it compiled to int8 kernels (runtimes/openvino_runtime.py); None
    # where the question does not arise.
    int8_kernels: bool | None = None
    # onnxruntime with an INT8 bundle on a CPU: whether its int8 products ran on the U8U8 kernels (exact without VNNI)
    # rather than U8S8 (runtimes/ort_runtime.py); None where the question does not arise.
    int8_u8u8: bool | None = None


# ---------------------------------------------------------------------------------------------
# Facts about the model and the machine


def _precision(path: Path) -> str:
    """The bundle manifest's "precision"; fp32 for checkpoint directories, which have no manifest."""
    manifest = path / "manifest.json"
    if not manifest.is_file():
        return "fp32"
    try:
        value = json.loads(manifest.read_text(encoding="utf-8")).get("precision")
    except (OSError, ValueError, AttributeError):
        return "fp32"
    if value is None:
        return "fp32"
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _dir_size_mb(path: Path) -> float:
    """Total size of the regular files under `path` (of a TensorRT bundle: the engine, not the ONNX kept to rebuild it)."""
    manifest = path / "manifest.json"
    if manifest.is_file():
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))
            if data.get("model_format") == "trt":
                return (path / data["files"]["model"]).stat().st_size / _MIB
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass
    total = 0
    for p in path.rglob("*"):
        if p.is_file() and not p.is_symlink():
            total += p.stat().st_size
    return total / _MIB


def _proc_status_mb(field: str) -> float | None:
    """A memory field of /proc/self/status in MiB, or None where /proc is absent (macOS, Windows)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return None


def _current_rss_mb() -> float | None:
    """Resident set size now (VmRSS)."""
    return _proc_status_mb("VmRSS")


def _peak_rss_mb() -> float:
    """Process high-water resident set size."""
    # VmHWM first: Linux carries ru_maxrss across fork+exec, so a benchmark started from a big
    # parent process would report the parent's peak.
    hwm = _proc_status_mb("VmHWM")
    if hwm is not None:
        return hwm
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kibibytes, macOS bytes.
    return peak / _MIB if sys.platform == "darwin" else peak / 1024.0


def _amd_core(fields: dict[str, str]) -> str:
    """'Zen 3' / 'Zen 4' / 'Zen 5' from an AMD CPU's family and model numbers ('' if unknown): a cloud VM often
    names its CPU just 'AMD EPYC', and the generation decides INT8/BF16 speed (VNNI and BF16 from Zen 4;
    full-width AVX-512, twice Zen 4's fp32 peak per cycle, from Zen 5)."""
    if fields.get("vendor_id") != "AuthenticAMD":
        return ""
    try:
        family, model = int(fields.get("cpu family", "")), int(fields.get("model", ""))
    except ValueError:
        return ""
    if family == 26:
        return "Zen 5"
    if family == 25:
        return "Zen 4" if (0x10 <= model <= 0x1F or 0x60 <= model <= 0x7F or 0xA0 <= model <= 0xAF) else "Zen 3"
    if family == 23:
        return "Zen 2" if model >= 0x30 else "Zen"
    return ""


def _cpu_model() -> str:
    """A human name for the CPU (or the board, on ARM boards whose cpuinfo names no model)."""
    try:
        fields: dict[str, str] = {}
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if not line.strip():
                    break  # the first processor's block is enough
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
        for key in ("model name", "Model", "Hardware"):
            if fields.get(key):
                core = _amd_core(fields)
                return fields[key] + (f" ({core}, family {fields['cpu family']} model {fields['model']})" if core else "")
    except OSError:
        pass
    try:
        # Jetson and other device-tree boards: "NVIDIA Jetson AGX Orin Developer Kit".
        return Path("/proc/device-tree/model").read_text(errors="replace").strip("\x00\n ") or platform.machine()
    except OSError:
        return platform.processor() or platform.machine()


def cpu_features() -> dict[str, Any]:
    """The CPU's name, cores and INT8 / BF16 instruction-set features (ram_edge.cpu: /proc/cpuinfo or CPUID), and
    OpenVINO's view of them."""
    flags = cpu_flags()
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")
    try:
        import openvino as ov

        capabilities = [str(c) for c in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")]
    except Exception:  # noqa: BLE001 - informational only: OpenVINO absent or without a CPU plugin
        capabilities = []
    return {"model": _cpu_model(), "cores": os.cpu_count(), "features": [f for f in wanted if f in flags],
            "vnni": x86_int8_dot_product(flags) is True,
            "bf16": "BF16" in capabilities, "openvino_capabilities": capabilities}


def relative_to_cwd(path: str | Path) -> str:
    """A path inside the current directory as a relative one (reproduce lines that run from any checkout);
    anything else unchanged."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def log(msg: str) -> None:
    """A timestamped progress line on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class CliFailed(RamEdgeError):
    """A `ram-edge` command run by a benchmark script exited with an error."""


def run_cli(*args: Any, capture: bool = False, log_file: str | Path | None = None, env: dict[str, str] | None = None) -> str:
    """Run `ram-edge ARGS` in a fresh interpreter (with `env` added to the environment), announced on stderr first;
    its stdout when `capture`.

    Output goes to the terminal, is appended to `log_file`, or (`capture`) is returned (stdout) and kept for
    the error (stderr). A non-zero exit raises CliFailed naming the command and its last error line.
    """
    import subprocess

    words = [str(a) for a in args]
    log(" ".join([*(f"{k}={v}" for k, v in (env or {}).items()), "ram-edge", *words]))
    command = [sys.executable, "-m", "ram_edge.cli.main", *words]
    environment = {**os.environ, **env} if env else None
    if log_file is not None:
        with open(log_file, "a", encoding="utf-8") as fh:
            proc = subprocess.run(command, stdout=fh, stderr=subprocess.STDOUT, text=True, env=environment)
    else:
        pipe = subprocess.PIPE if capture else None
        proc = subprocess.run(command, stdout=pipe, stderr=pipe, text=True, env=environment)
    if proc.returncode:
        last = ((proc.stderr or "").strip().splitlines() or [f"exit code {proc.returncode}"])[-1].removeprefix("error: ")
        where = f" (see {log_file})" if log_file is not None else ""
        raise CliFailed(f"`ram-edge {' '.join(words[:2])}` failed: {last}{where}")
    return proc.stdout or ""


def step_error(exc: BaseException, limit: int = 300) -> str:
    """One line for a report row naming why a step failed: the exception's type and its message, whitespace folded."""
    text = " ".join(str(exc).split())
    line = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 1] + "…"


def attempt(row: dict[str, Any], step: str, fn: Callable[[], T], say: Callable[[str], None] = log) -> T | None:
    """`fn()`, or None with "STEP failed: <one-line error>" put in row["error"] (a check script then goes on with its next
    step, and its report shows the row)."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - on a rented GPU any failure (CUDA, TensorRT, a CLI) is a row, not the end
        error = f"{step} failed: {step_error(exc)}"
        row["error"] = f"{row['error']}; {error}" if row.get("error") else error
        what = " ".join(str(row[k]) for k in ("model", "variant", "runtime", "batch", "check") if row.get(k) is not None)
        say(f"{what}: {error}")
        return None


def git_commit(repo: str | Path) -> str | None:
    """The checkout's HEAD commit, with "+ local changes" when the work tree differs; None outside a git checkout."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=30)
        if head.returncode:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo, capture_output=True,
                               text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + (" + local changes" if dirty.stdout.strip() else "")


def write_report_files(path: str | Path, text: str, result: dict[str, Any]) -> None:
    """A markdown report at `path` and its data as JSON beside it (`.json`), each written atomically."""
    from ram_edge.fileio import atomic_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, "w") as fh:
        fh.write(text)
    with atomic_file(path.with_suffix(".json"), "w") as fh:
        json.dump(result, fh, indent=1, default=str)


def markdown_table(rows: list[dict[str, Any]], keys: list[str]) -> list[str]:
    """`rows` as markdown table lines, one column per key (missing values as "–", numbers as in the bench reports)."""
    lines = ["| " + " | ".join(keys) + " |", "|" + "|".join("---" for _ in keys) + "|"]
    lines += ["| " + " | ".join(_cell(row.get(key)) for key in keys) + " |" for row in rows]
    return lines


def map_on_tag_names(probs: np.ndarray, tags: list[str], truth: list[list[str]]) -> float:
    """mAP (in %) of `probs` (N, len(tags)) against per-image true tag names (names outside `tags` ignored)."""
    from ram_edge.training.metrics import mean_average_precision

    index = {t: i for i, t in enumerate(tags)}
    targets = np.zeros(probs.shape, np.float32)
    for i, names in enumerate(truth):
        for name in names:
            if name in index:
                targets[i, index[name]] = 1
    return 100 * mean_average_precision(probs, targets)


def bundle_model_mb(bundle: str | Path) -> float:
    """Size of the model files a bundle's manifest lists (not the manifest), in MB (10^6 bytes)."""
    bundle = Path(bundle)
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    return sum((bundle / name).stat().st_size for name in manifest["files"].values()) / 1e6


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _machine(runtime_cls: type | None = None) -> dict[str, Any]:
    """CPU, cores, OS and Python, plus the runtime's package and version when known."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        # A container or taskset can allow fewer cores than the machine has.
        "cores_usable": usable,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    if runtime_cls is not None:
        name = getattr(runtime_cls, "name", "")
        package = _RUNTIME_PACKAGES.get(name) or runtime_cls.__module__.split(".")[0]
        info["runtime_package"] = package
        info["runtime_version"] = _package_version(package)
    return info


# ---------------------------------------------------------------------------------------------
# Input


def _image_batch(images_dir: str | Path, config, batch_size: int) -> np.ndarray:
    """Preprocess the images under `images_dir`, cycling them to fill one batch."""
    from ram_edge.preprocess import iter_image_files, load_image, preprocess

    directory = Path(images_dir)
    if not directory.is_dir():
        raise RamEdgeError(f"images {directory} is not a directory; pass a folder of images or leave it out for random input")
    files = iter_image_files([directory])
    if not files:
        raise RamEdgeError(f"no image files found in {directory}; it needs at least one .jpg, .png, ... file")
    # Only as many files as one batch needs are decoded; extra files are not used.
    arrays = [preprocess(load_image(f), config) for f in files[:batch_size]]
    return np.stack([arrays[i % len(arrays)] for i in range(batch_size)])


def _random_batch(batch_size: int, image_size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch_size, 3, image_size, image_size), dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# The benchmark


def run_benchmark(
    path: str | Path,
    runtime: str = "auto",
    device: str | None = None,
    batch_size: int = 1,
    iters: int = 20,
    warmup: int = 3,
    threads: int | None = None,
    images_dir: str | Path | None = None,
    seed: int = 0,
    progress: bool = True,
    compute_precision: str | None = None,
) -> BenchResult:
    """Load the model at `path` with `runtime` and time `iters` runs of one batch after `warmup` untimed ones."""
    from ram_edge.artifacts import describe
    from ram_edge.runtimes.registry import resolve_runtime

    for name, value, least in (("batch_size", batch_size, 1), ("iters", iters, 1), ("warmup", warmup, 0)):
        if isinstance(value, bool) or int(value) != value or value < least:
            raise RamEdgeError(f"{name} must be an integer >= {least}, got {value!r}")
    if threads is not None and (isinstance(threads, bool) or int(threads) != threads or threads < 1):
        raise RamEdgeError(f"threads must be a positive integer or None, got {threads!r}")

    path = Path(path)
    info = describe(path)
    runtime_cls = resolve_runtime(runtime, info.format)
    image_size = int(info.preprocess.image_size)
    if images_dir is not None:
        batch = _image_batch(images_dir, info.preprocess, batch_size)
    else:
        batch = _random_batch(batch_size, image_size, seed)

    rss_before = _current_rss_mb()
    start = time.perf_counter()
    model = runtime_cls(path, device=device, threads=threads, compute_precision=compute_precision)
    load_time = time.perf_counter() - start
    try:
        rss_after = _current_rss_mb()
        start = time.perf_counter()
        probs = model.run(batch)
        first_run = time.perf_counter() - start
        # Counted from the output: what the model computes is what the latency pays for.
        num_tags = int(np.shape(probs)[-1])
        times = _timed_runs(model, batch, iters, warmup, progress, f"bench {runtime_cls.name}")
        used_device = model.device
        used_precision = model.compute_precision
        int8_kernels = model.int8_kernels
        int8_u8u8 = model.int8_u8u8
    finally:
        model.close()

    per_batch = np.asarray(times, dtype=np.float64) * 1e3
    p50, p90, p99 = np.percentile(per_batch, [50, 90, 99])
    return BenchResult(
        model=str(path),
        runtime=runtime_cls.name,
        device=used_device,
        precision=_precision(path),
        compute_precision=used_precision,
        format=info.format,
        family=info.family,
        batch_size=batch_size,
        iters=iters,
        warmup=warmup,
        threads=threads,
        num_tags=num_tags,
        image_size=image_size,
        load_time_s=load_time,
        first_run_ms=first_run * 1e3,
        latency_batch_ms={"p50": float(p50), "p90": float(p90), "p99": float(p99),
                          "mean": float(per_batch.mean()), "min": float(per_batch.min())},
        latency_image_ms={"p50": float(p50) / batch_size, "p90": float(p90) / batch_size, "p99": float(p99) / batch_size},
        throughput_img_s=batch_size * iters / float(np.sum(times)),
        peak_rss_mb=_peak_rss_mb(),
        rss_before_load_mb=rss_before,
        rss_after_load_mb=rss_after,
        model_size_mb=_dir_size_mb(path),
        machine=_machine(runtime_cls),
        input="random" if images_dir is None else str(images_dir),
        timestamp=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        int8_kernels=int8_kernels,
        int8_u8u8=int8_u8u8,
    )


def _timed_runs(model, batch: np.ndarray, iters: int, warmup: int, progress: bool, desc: str) -> list[float]:
    """`warmup` untimed then `iters` timed calls of `model.run`; seconds per call."""
    from tqdm import tqdm

    times: list[float] = []
    # disable=None: the bar shows on a terminal only, so logs and CI output stay clean.
    with tqdm(total=warmup + iters, desc=desc, unit="batch", file=sys.stderr,
              disable=None if progress else True, leave=False) as bar:
        for _ in range(warmup):
            model.run(batch)
            bar.update(1)
        for _ in range(iters):
            # Only the call is inside the clock; the bar's own update is not.
            start = time.perf_counter()
            model.run(batch)
            times.append(time.perf_counter() - start)
            bar.update(1)
    return times


def matmul_roofline(threads: int | None = None, n: int = 4096, repeats: int = 5) -> float:
    """Multiply-accumulates per second of the faster n x n float32 matmul of torch and OpenVINO (best of `repeats`).

    Both, because neither is the machine's peak everywhere: torch's CPU build (MKL) stays at AVX2 width on AMD
    CPUs, so on a Zen 5 (full-width AVX-512) OpenVINO and onnxruntime ran the whole model at twice torch's GEMM rate.
    """
    return max(_torch_matmul_macs(threads, n, repeats), _openvino_matmul_macs(threads, n, repeats))


def _openvino_matmul_macs(threads: int | None, n: int, repeats: int) -> float:
    """MAC/s of an n x n float32 MatMul compiled by OpenVINO's CPU plugin at fp32; 0.0 without OpenVINO."""
    try:
        import openvino as ov
        from openvino import opset13 as ops
    except ImportError:
        return 0.0
    rng = np.random.default_rng(0)
    a = ops.parameter([n, n], np.float32)
    model = ov.Model([ops.matmul(a, ops.constant(rng.standard_normal((n, n), dtype=np.float32)), False, False)], [a])
    config: dict[str, object] = {"INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    request = ov.Core().compile_model(model, "CPU", config).create_infer_request()
    x = rng.standard_normal((n, n), dtype=np.float32)
    request.infer({0: x})  # warm-up
    best = float("inf")
    for _ in range(max(1, int(repeats))):
        start = time.perf_counter()
        request.infer({0: x})
        best = min(best, time.perf_counter() - start)
    return float(n) ** 3 / best


def _torch_matmul_macs(threads: int | None, n: int, repeats: int) -> float:
    """MAC/s of an n x n float32 torch.matmul; 0.0 without torch."""
    try:
        import torch
    except ImportError:
        return 0.0
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        gen = torch.Generator().manual_seed(0)
        a = torch.randn(n, n, generator=gen, dtype=torch.float32)
        b = torch.randn(n, n, generator=gen, dtype=torch.float32)
        out = torch.empty(n, n, dtype=torch.float32)
        torch.matmul(a, b, out=out)  # warm-up: thread pool start, page faults on `out`
        best = float("inf")
        for _ in range(max(1, int(repeats))):
            start = time.perf_counter()
            torch.matmul(a, b, out=out)
            best = min(best, time.perf_counter() - start)
    finally:
        # The thread count is process-wide; leave it as the caller had it.
        torch.set_num_threads(previous)
    return float(n) ** 3 / best


def roofline_in_subprocess(threads: int | None = None, n: int = 4096, repeats: int = 3) -> float:
    """`matmul_roofline` read in a fresh Python process (0.0 if it fails).

    Reading it in the benchmarking process leaves torch's OpenMP pool spinning on every core for the rest of the
    run (seen: the parent at ~190% CPU while its `ram-edge bench` children were timed), which slows the next cell.
    """
    import subprocess
    import sys

    code = f"from ram_edge.benchmarks.harness import matmul_roofline; print(matmul_roofline(threads={threads!r}, n={n}, repeats={repeats}))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    try:
        return float(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return 0.0


# ---------------------------------------------------------------------------------------------
# Reports

# (header, key path into a BenchResult dict); every row has these.
_BASE_COLUMNS = (
    ("runtime", ("runtime",)),
    ("device", ("device",)),
    ("precision", ("precision",)),
    ("compute", ("compute_precision",)),
    ("batch", ("batch_size",)),
    ("p50 ms/batch", ("latency_batch_ms", "p50")),
    ("p50 ms/image", ("latency_image_ms", "p50")),
    ("img/s", ("throughput_img_s",)),
    ("load s", ("load_time_s",)),
    ("peak RSS MB", ("peak_rss_mb",)),
    ("size MB", ("model_size_mb",)),
)
# Headers for the optional columns callers commonly add; other extra keys keep their own name.
_EXTRA_HEADERS = {
    "macs_per_image": "MACs/image",
    "achieved_gmacs": "GMAC/s",
    "roofline_gmacs": "roofline GMAC/s",
    "pct_of_roofline": "% of roofline",
    "queries": "queries",
}
_RESULT_FIELDS = {f.name for f in fields(BenchResult)}


def _lookup(row: dict, keys: tuple[str, ...]) -> Any:
    value: Any = row
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _cell(value: Any) -> str:
    """Format one table cell: numbers to a readable precision, pipes escaped."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        if value != value:  # NaN
            return "–"
        magnitude = abs(value)
        # MAC counts and rates run to 1e9..1e12; an SI prefix keeps them readable.
        if magnitude >= 1e12:
            return f"{value / 1e12:.2f} T"
        if magnitude >= 1e9:
            return f"{value / 1e9:.2f} G"
        if magnitude >= 1e6:
            return f"{value / 1e6:.2f} M"
        if isinstance(value, int):
            return str(value)
        if magnitude >= 100:
            return f"{value:.0f}"
        if magnitude >= 1:
            return f"{value:.2f}"
        return f"{value:.3g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _describe_machine(machine: dict[str, Any]) -> str:
    parts = [str(machine.get("cpu") or "unknown CPU")]
    if machine.get("cores"):
        usable = machine.get("cores_usable")
        cores = f"{machine['cores']} cores" + (f" ({usable} usable)" if usable and usable != machine["cores"] else "")
        parts.append(cores)
    if machine.get("platform"):
        parts.append(str(machine["platform"]))
    if machine.get("python"):
        parts.append(f"Python {machine['python']}")
    return ", ".join(parts)


def write_markdown_report(rows: list[dict], path: str | Path, title: str, notes: str = "") -> None:
    """Write `rows` (BenchResult dicts, optionally with extra keys) as a markdown table at `path`."""
    from ram_edge.fileio import atomic_file

    rows = [asdict(r) if isinstance(r, BenchResult) else dict(r) for r in rows]
    extra: list[str] = []
    for row in rows:
        for key, value in row.items():
            # Nested values (machine, latency dicts) are not table cells.
            if key not in _RESULT_FIELDS and key not in extra and not isinstance(value, (dict, list, tuple)):
                extra.append(key)
    headers = [h for h, _ in _BASE_COLUMNS] + [_EXTRA_HEADERS.get(k, k) for k in extra]

    lines = [f"# {title}", ""]
    machines: list[str] = []
    for row in rows:
        if isinstance(row.get("machine"), dict):
            text = _describe_machine(row["machine"])
            if text not in machines:
                machines.append(text)
    for text in machines or ["unknown"]:
        lines.append(f"Machine: {text}  ")
    lines += [f"Date: {_dt.date.today().isoformat()}", ""]
    lines.append("| " + " | ".join(headers) + " |")
    lines.append("|" + "|".join("---" if i < 4 else "---:" for i in range(len(headers))) + "|")
    for row in rows:
        cells = [_cell(_lookup(row, keys)) for _, keys in _BASE_COLUMNS]
        cells += [_cell(row.get(k)) for k in extra]
        lines.append("| " + " | ".join(cells) + " |")
    if notes.strip():
        lines += ["", notes.strip()]
    with atomic_file(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")
