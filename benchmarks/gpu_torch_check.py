"""GPU check without TensorRT: what one NVIDIA GPU with PyTorch (CUDA) and cuda-python or pycuda can check.

    python -m ram_edge.benchmarks.gpu_torch_check [--report bench-reports/gpu_torch_check.md] [--no-full-size]

1. The `torch` runtime (the reference model in fp32, as `ram-edge tag --runtime torch --device cuda` runs it) and the
   same model in fp16 (`model.half()` on the GPU: the torch runtime itself computes in fp32 only) against the torch
   runtime on the CPU in fp32: max |dp| and tag-set F1, on the shipped default model (its example images) and on a
   full-size Swin-L/384 RAM with random weights (image-like random inputs: random weights say nothing about accuracy,
   only about numerics); ms/image at batch 1 and 8 (numpy in, numpy out, as `ram-edge bench` times a runtime).
2. One AMP training step of the project's Trainer (torch.autocast fp16 + GradScaler on CUDA) on a tiny model and a
   generated dataset: the loss is finite and the parameters change.
3. The trt runtime's CUDA memory layer (runtimes/cuda_memory.py) against the real driver, for each installed library
   (pycuda, cuda-python), each in a child process so that a crash becomes a row: buffers, page-locked host memory, a
   round trip on a stream, buffer reuse, alloc/free cycles, the stream handle TensorRT would be given (checked by
   running torch work on it through torch.cuda.ExternalStream), and device pointers shared with torch tensors.

The TensorRT engine itself stays unmeasured here; `python -m ram_edge.benchmarks.gpu_check` measures it where TensorRT
is installed. Every step that fails becomes a report row with its one-line error and the check goes on; the markdown
report and its JSON are written at the end whatever failed, and the exit status is 1 when a step failed.
`--device cpu` runs the same steps on the CPU (the tests do; the memory layer then needs a CUDA driver all the same).
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import importlib.metadata
import importlib.util
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np


from . import harness
from .harness import git_commit, markdown_table, step_error, write_report_files

# Only a source checkout has one: its commit goes into the report.
REPO = Path(__file__).resolve().parents[1]
COMMAND = "python -m ram_edge.benchmarks.gpu_torch_check"
BATCHES = (1, 8)
DEFAULT = "default"
FULL_SIZE = "full-size Swin-L/384 RAM"
# A round trip through a child process that hangs (a wedged driver) must not eat the rented machine's whole slot.
MEMORY_CHILD_TIMEOUT_S = 300
_START = time.perf_counter()
T = TypeVar("T")


def _log(msg: str) -> None:
    print(f"[{time.perf_counter() - _START:6.0f} s] {msg}", file=sys.stderr, flush=True)


def attempt(row: dict[str, Any], step: str, fn: Callable[[], T]) -> T | None:
    """`fn()`, or None with "STEP failed: <one-line error>" put in row["error"] (the check goes on with the next step)."""
    return harness.attempt(row, step, fn, _log)


# ---------------------------------------------------------------------------------------------
# Pure helpers


def device_arg(value: str) -> str:
    """argparse type of --device: cpu, cuda or cuda:N."""
    text = value.strip().lower()
    if text in ("cpu", "cuda") or (text.startswith("cuda:") and text[5:].isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"--device {value!r} is not a torch device this check knows; use cpu, cuda or cuda:N")


def device_index(device: str) -> int | None:
    """The CUDA device number of a --device value (None for cpu)."""
    if device == "cpu":
        return None
    return int(device.partition(":")[2] or 0)


def compare(reference: np.ndarray, probs: np.ndarray, fired: Callable[[np.ndarray], np.ndarray]) -> dict[str, float]:
    """Max and mean |dp| and the mean per-image tag-set F1 of `probs` against `reference` (both (N, C))."""
    from ram_edge.labels import tag_set_f1

    if reference.shape != probs.shape:
        raise ValueError(f"probabilities of shape {probs.shape} cannot be compared with the reference's {reference.shape}")
    diff = np.abs(probs.astype(np.float64) - reference.astype(np.float64))
    return {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "tag_f1": float(tag_set_f1(fired(probs), fired(reference)).mean())}


def latency(seconds: list[float], batch: int) -> dict[str, float]:
    """Median milliseconds per batch and per image, and images per second at the median, of timed calls."""
    if not seconds:
        raise ValueError("no timed calls to summarise; pass --iters 1 or more")
    ms = 1e3 * float(np.median(seconds))
    return {"ms_per_batch": ms, "ms_per_image": ms / batch, "img_s": 1e3 * batch / ms, "ms_min": 1e3 * float(min(seconds))}


def batch_of(inputs: np.ndarray, size: int) -> np.ndarray:
    """`size` images from `inputs`, cycled when there are fewer."""
    return np.ascontiguousarray(inputs[np.arange(size) % len(inputs)])


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


# ---------------------------------------------------------------------------------------------
# The machine


def _libcuda() -> ctypes.CDLL:
    """The CUDA driver library (OSError where no NVIDIA driver is installed)."""
    return ctypes.CDLL("libcuda.so.1" if sys.platform.startswith("linux") else "nvcuda.dll")


def cuda_driver_problem() -> str | None:
    """Why the CUDA driver cannot be used here (no library, cuInit fails, no device), or None when it can."""
    try:
        lib = _libcuda()
    except OSError as exc:
        return f"no CUDA driver: libcuda could not be loaded ({exc})"
    status = lib.cuInit(0)
    if status != 0:
        return f"the CUDA driver is installed but cuInit failed with CUresult {status} (no usable NVIDIA GPU; see nvidia-smi)"
    count = ctypes.c_int(0)
    status = lib.cuDeviceGetCount(ctypes.byref(count))
    if status != 0 or count.value == 0:
        return f"the CUDA driver sees no device (cuDeviceGetCount: CUresult {status}, {count.value} device(s))"
    return None


def _driver_cuda_version() -> str | None:
    """The CUDA version the driver supports, e.g. "12.4" (cuDriverGetVersion)."""
    version = ctypes.c_int(0)
    if _libcuda().cuDriverGetVersion(ctypes.byref(version)) != 0:
        return None
    return f"{version.value // 1000}.{version.value % 1000 // 10}"


def _nvidia_smi(index: int) -> dict[str, str]:
    """Driver version and GPU name as nvidia-smi reports them ({} where it is absent)."""
    try:
        proc = subprocess.run(["nvidia-smi", f"--id={index}", "--query-gpu=name,driver_version,memory.total",
                               "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return {}
    parts = [p.strip() for p in proc.stdout.strip().split(",")]
    if proc.returncode or len(parts) != 3:
        return {}
    return {"name": parts[0], "driver_version": parts[1], "memory_total": parts[2]}


def environment(device: str) -> dict[str, Any]:
    """GPU, driver, CUDA, torch and library versions; a part that cannot be read is named in "errors"."""
    info: dict[str, Any] = {"device": device, "python": platform.python_version(), "platform": platform.platform(),
                            "git_commit": git_commit(REPO), "errors": []}
    for key, package in (("cuda_python", "cuda-python"), ("pycuda", "pycuda"), ("onnxruntime", "onnxruntime")):
        info[key] = _package_version(package)
    try:
        from ram_edge.runtimes.tensorrt_runtime import tensorrt_import_error

        # A `tensorrt` folder of type stubs imports too: the runtime's own test says whether it is TensorRT.
        info["tensorrt"] = "not usable" if tensorrt_import_error() else "installed (not used by this check)"
    except Exception as exc:  # noqa: BLE001 - informational only
        info["errors"].append(f"TensorRT: {step_error(exc)}")
    try:
        import torch

        info.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available(),
                    cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
                    # What fp32 means on the GPU: TF32 matmuls change the numbers; torch's defaults are reported, not changed.
                    tf32_matmul=torch.backends.cuda.matmul.allow_tf32, tf32_cudnn=torch.backends.cudnn.allow_tf32)
        index = device_index(device)
        if index is not None and torch.cuda.is_available():
            props = torch.cuda.get_device_properties(index)
            info.update(gpu=props.name, compute_capability=f"{props.major}.{props.minor}",
                        gpu_memory_gib=round(props.total_memory / 2**30, 1))
    except Exception as exc:  # noqa: BLE001 - the report says what it could not read; the checks still run
        info["errors"].append(f"torch: {step_error(exc)}")
    index = device_index(device)
    smi = _nvidia_smi(0 if index is None else index)
    info["driver_version"] = smi.get("driver_version")
    info.setdefault("gpu", smi.get("name"))
    problem = cuda_driver_problem()
    info["cuda_driver"] = problem or "usable"
    if problem is None:
        info["driver_cuda_version"] = _driver_cuda_version()
    try:
        info["cpu"] = harness.cpu_features()["model"]
    except Exception as exc:  # noqa: BLE001 - informational only
        info["errors"].append(f"CPU: {step_error(exc)}")
    return info


# ---------------------------------------------------------------------------------------------
# 1. The torch runtime on the device against the CPU


class HalfModel:
    """A checkpoint's model in fp16 (`model.half()`) on a device, numpy in and out like the torch runtime."""

    def __init__(self, checkpoint: Path, device: str) -> None:
        import torch

        from ram_edge.models.checkpoint import load_checkpoint

        model, _ = load_checkpoint(checkpoint)
        self._torch = torch
        self._device = device
        self.model = model.half().to(device).eval()

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities (N, C) in float32 for a preprocessed float32 batch."""
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self._device).half()
            return torch.sigmoid(self.model(x)).float().cpu().numpy()

    def close(self) -> None:
        """Drop the model (and its device memory)."""
        del self.model


def _runner(variant: str, checkpoint: Path, device: str) -> Any:
    """An object with run(batch) and close(): the torch runtime in fp32, or HalfModel."""
    if variant == "fp16":
        return HalfModel(checkpoint, device)
    from ram_edge.runtimes.torch_runtime import TorchRuntime

    return TorchRuntime(checkpoint, device=device)


def _predict(run: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray, batch: int = 8) -> np.ndarray:
    return np.concatenate([run(inputs[i:i + batch]) for i in range(0, len(inputs), batch)])


def _synchronize(device: str) -> None:
    if device != "cpu":
        import torch

        torch.cuda.synchronize(device)


def time_calls(run: Callable[[np.ndarray], Any], batch: np.ndarray, iters: int, warmup: int, device: str) -> list[float]:
    """Seconds of each of `iters` calls of `run(batch)` after `warmup` untimed ones, the device synchronised around each."""
    for _ in range(warmup):
        run(batch)
    times = []
    for _ in range(iters):
        _synchronize(device)
        start = time.perf_counter()
        run(batch)
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def _release(device: str) -> None:
    """Return cached device memory between models (the full-size model fills several GiB)."""
    import gc

    gc.collect()
    if device != "cpu":
        import torch

        torch.cuda.empty_cache()


def check_model(model: str, checkpoint: Path, inputs: np.ndarray, device: str, iters: int, warmup: int
                ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Accuracy rows (fp32 and fp16 on `device` against the torch runtime on the CPU in fp32) and speed rows."""
    from ram_edge.checkpoint_dir import read_checkpoint_dir

    accuracy: list[dict[str, Any]] = []
    speed: list[dict[str, Any]] = []
    reference_row: dict[str, Any] = {"model": model, "variant": "torch runtime, cpu, fp32 (the reference)", "images": len(inputs)}
    accuracy.append(reference_row)
    labels = attempt(reference_row, "reading the checkpoint", lambda: read_checkpoint_dir(checkpoint).labels)

    def cpu_reference() -> np.ndarray:
        runner = _runner("fp32", checkpoint, "cpu")
        try:
            return _predict(runner.run, inputs)
        finally:
            runner.close()

    reference = attempt(reference_row, "the CPU reference", cpu_reference) if labels is not None else None
    _release("cpu")
    for variant in ("fp32", "fp16"):
        name = f"torch runtime, {device}, fp32" if variant == "fp32" else f"model.half(), {device}, fp16"
        row: dict[str, Any] = {"model": model, "variant": name, "images": len(inputs)}
        accuracy.append(row)
        started = time.perf_counter()
        loaded = attempt(row, "loading", lambda: _runner(variant, checkpoint, device))
        rows: list[dict[str, Any]] = [{"model": model, "variant": name, "batch": b} for b in BATCHES]
        speed += rows
        if loaded is None:
            for r in rows:
                r["error"] = "skipped: the model did not load (see the accuracy rows)"
            continue
        runner: Any = loaded
        loaded = None
        try:
            row["load_s"] = time.perf_counter() - started
            probs = attempt(row, "running", lambda: _predict(runner.run, inputs))
            if probs is not None and reference is not None and labels is not None:
                fired, got = labels.fired, probs
                row.update(attempt(row, "comparing", lambda: compare(reference, got, fired)) or {})
            elif probs is not None:
                row["error"] = "no comparison: the CPU reference failed (see its row)"
            for r in rows:
                size = int(r["batch"])
                batch = batch_of(inputs, size)
                seconds = attempt(r, "timing", lambda: time_calls(runner.run, batch, iters, warmup, device))
                if seconds is not None:
                    r.update(latency(seconds, size))
                    _log(f"{model} {name} batch {size}: {r['ms_per_image']:.2f} ms/image")
        finally:
            attempt(row, "releasing", runner.close)
            runner = None  # the torch runtime keeps its model until the object goes: the cache below can only free it then
            _release(device)
        _log(f"{model} {name}: " + ", ".join(f"{k} {row[k]:.3g}" for k in ("max_abs_diff", "tag_f1") if k in row))
    return accuracy, speed


def default_model_inputs(count: int) -> tuple[Path, np.ndarray]:
    """The shipped default checkpoint and `count` of its preprocessed example images (cycled)."""
    from ram_edge.checkpoint_dir import read_checkpoint_dir
    from ram_edge.default_model import PACKAGE_DIR, default_model_path
    from ram_edge.preprocess import load_image, preprocess

    checkpoint = default_model_path("checkpoint")
    config = read_checkpoint_dir(checkpoint).config.preprocess
    examples = PACKAGE_DIR / "examples"
    files = sorted(examples.glob("*.png"))
    if not files:
        raise FileNotFoundError(f"no example images in {examples}; reinstall ram-edge (the default model ships them)")
    images = np.stack([preprocess(load_image(f), config) for f in files]).astype(np.float32)
    return checkpoint, batch_of(images, count)


def full_size_inputs(workdir: Path, count: int) -> tuple[Path, np.ndarray]:
    """A random-weight Swin-L/384 RAM checkpoint under `workdir` (reused when there) and `count` image-like inputs."""
    from ram_edge.checkpoint_dir import read_checkpoint_dir
    from ram_edge.export.validate import validation_inputs

    from .random_weights import build_checkpoint

    _log("full-size Swin-L/384 RAM checkpoint (random weights)")
    checkpoint = build_checkpoint(workdir / "full_size")
    size = int(read_checkpoint_dir(checkpoint).config.preprocess.image_size)
    return checkpoint, validation_inputs(size, (count,), seed=5)[0]


# ---------------------------------------------------------------------------------------------
# 2. One AMP training step

_SHAPES = ("square", "circle")
_COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 170, 60)}
AMP_TAGS = [f"{c} {s}" for c in _COLOURS for s in _SHAPES]


def tiny_dataset(root: Path, count: int = 16, size: int = 32) -> Path:
    """`count` drawn shapes with their tags and captions: a folder + annotations.jsonl the trainer reads."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(count):
        image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(180, 255, 3)))
        draw = ImageDraw.Draw(image)
        tags = sorted({AMP_TAGS[int(j)] for j in rng.integers(0, len(AMP_TAGS), 2)})
        for tag in tags:
            colour, shape = tag.split()
            x, y = (int(v) for v in rng.integers(0, size // 2, 2))
            box = (x, y, x + size // 2 - 1, y + size // 2 - 1)
            (draw.rectangle if shape == "square" else draw.ellipse)(box, fill=_COLOURS[colour])
        name = f"images/{i:03d}.png"
        image.save(root / name)
        lines.append(json.dumps({"image": name, "captions": ["a " + " and a ".join(tags)], "tags": tags}))
    (root / "annotations.jsonl").write_text("\n".join(lines) + "\n")
    return root


def amp_training_step(workdir: Path, device: str, steps: int) -> dict[str, Any]:
    """`steps` steps of the project's Trainer on a tiny model: device, whether AMP ran (autocast dtype seen in a
    Linear layer), losses, GradScaler scale before and after, how many parameter tensors changed."""
    import torch

    from ram_edge.training.config import TrainConfig
    from ram_edge.training.loop import Trainer

    root = Path(tempfile.mkdtemp(prefix="amp-", dir=workdir))
    (root / "labels.tsv").write_text("tag\tsynonyms\n" + "".join(f"{t}\t\n" for t in AMP_TAGS))
    config = {
        "output_dir": str(root / "run"),
        "model": {"family": "ram",
                  "swin": {"image_size": 32, "patch_size": 4, "embed_dim": 16, "depths": [1, 1], "num_heads": [1, 2],
                           "window_size": 4},
                  "head": {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64, "num_hidden_layers": 2},
                  "num_classes": len(AMP_TAGS), "embed_dim": 32, "label_embed_dim": 16, "preprocess": {"image_size": 32}},
        "labels": str(root / "labels.tsv"), "text_encoder": "learned",
        "data": {"kind": "jsonl", "path": str(tiny_dataset(root / "data")), "tags_from": "given"},
        "optim": {"lr": 1e-3, "warmup_steps": 0}, "batch_size": 8, "total_steps": steps, "log_every": 1,
        "checkpoint_every": steps, "amp": True, "seed": 0,
        # The trainer picks cuda:LOCAL_RANK (0) on "cuda"; the row records the device it used.
        "device": "cpu" if device == "cpu" else "cuda",
    }
    trainer = Trainer(TrainConfig.from_dict(config), progress=False)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    linear = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Linear))
    seen: set[str] = set()
    hook = linear.register_forward_hook(lambda module, args, out: seen.add(str(out.dtype).removeprefix("torch.")))
    scale_before = trainer.scaler.get_scale() if trainer.scaler.is_enabled() else None
    try:
        trainer.train(resume=False)
    finally:
        hook.remove()
    log = [json.loads(line) for line in (root / "run" / "log.jsonl").read_text().splitlines() if line.strip()]
    losses = [float(r["loss"]) for r in log if "loss" in r]
    changed = sum(not torch.equal(before[n], p.detach()) for n, p in trainer.model.named_parameters() if n in before)
    row: dict[str, Any] = {
        "device": str(trainer.dist.device), "amp": trainer.amp, "autocast_dtype": ", ".join(sorted(seen)) or None,
        "steps": steps, "losses": [round(x, 5) for x in losses],
        "grad_scale_before": scale_before, "grad_scale_after": trainer.scaler.get_scale() if trainer.scaler.is_enabled() else None,
        "params_changed": changed, "param_tensors": len(before),
    }
    problems = []
    if len(losses) != steps or not all(np.isfinite(losses)):
        problems.append(f"losses {losses} are not {steps} finite values")
    if changed == 0:
        problems.append("no parameter changed (GradScaler skips a step whose gradients overflow; try --train-steps 4)")
    if device != "cpu" and not (trainer.amp and "float16" in seen):
        problems.append(f"AMP did not run: the trainer ran on {trainer.dist.device} with amp {trainer.amp}, a Linear layer's "
                        f"output dtype {sorted(seen)}")
    if problems:
        row["error"] = "; ".join(problems)
    elif device == "cpu":
        row["note"] = "AMP is CUDA-only in the trainer: this step ran in fp32"
    return row


# ---------------------------------------------------------------------------------------------
# 3. The CUDA memory layer of the trt runtime


def raw_stream_value(memory: Any, stream: Any) -> int | None:
    """The cudaStream_t value of a library's stream object as the library itself gives it (None for another library)."""
    if memory.name == "cuda-python":
        return int(stream)
    if memory.name == "pycuda":
        return int(stream.handle)
    return None


def memory_checks(memory: Any, iterations: int, nbytes: int, torch_device: int | None) -> list[dict[str, Any]]:
    """Check rows of one CudaMemory (runtimes/cuda_memory.py); `torch_device`: cross-check with torch on that CUDA device."""
    from ram_edge.runtimes.cuda_memory import DeviceBuffer

    rows: list[dict[str, Any]] = []

    def check(name: str, fn: Callable[[], str]) -> bool:
        row: dict[str, Any] = {"check": name}
        rows.append(row)
        detail = attempt(row, name, fn)
        if detail is not None:
            row["detail"] = detail
        row["ok"] = "error" not in row
        return row["ok"]

    count = max(1, nbytes // 4)

    def device() -> str:
        gpu = memory.gpu()
        return f"{gpu.name} (compute capability {gpu.compute_capability}), {memory.device_count()} device(s)"

    check("device", device)
    with memory.active():
        def device_buffer() -> str:
            buffer = memory.alloc_device(nbytes)
            memory.free_device(buffer)
            if not isinstance(buffer.ptr, int) or buffer.ptr == 0 or buffer.nbytes != nbytes:
                raise AssertionError(f"alloc_device({nbytes}) gave {buffer}")
            return f"{nbytes} bytes at {buffer.ptr:#x}, freed"

        def host_buffer() -> str:
            array = memory.alloc_host(count, np.float32)
            try:
                if array.shape != (count,) or array.dtype != np.float32:
                    raise AssertionError(f"alloc_host({count}, float32) gave shape {array.shape} dtype {array.dtype}")
                array[:] = 1.0
                if float(array.sum()) != count:
                    raise AssertionError("the page-locked array does not hold what was written")
            finally:
                memory.free_host(array)
            return f"{count} float32, written and read, freed"

        check("device buffer alloc/free", device_buffer)
        check("page-locked host alloc/free", host_buffer)
        stream = memory.create_stream()
        src, dst = memory.alloc_host(count, np.float32), memory.alloc_host(count, np.float32)
        buffer = memory.alloc_device(nbytes)
        try:
            def round_trip() -> str:
                src[:] = np.random.default_rng(0).standard_normal(count, dtype=np.float32)
                dst[:] = 0
                memory.copy_to_device(buffer, src, stream)
                memory.copy_to_host(dst, buffer, stream)
                memory.synchronize(stream)
                if not np.array_equal(src, dst):
                    raise AssertionError(f"{int((src != dst).sum())} of {count} values differ after host -> device -> host")
                return f"{nbytes} bytes host -> device -> host on one stream, equal"

            def reuse() -> str:
                base = np.arange(count, dtype=np.float32)
                bad, started = 0, time.perf_counter()
                for i in range(iterations):
                    src[:] = base + i
                    memory.copy_to_device(buffer, src, stream)
                    memory.copy_to_host(dst, buffer, stream)
                    memory.synchronize(stream)
                    bad += not np.array_equal(src, dst)
                seconds = (time.perf_counter() - started) / max(iterations, 1)
                if bad:
                    raise AssertionError(f"{bad} of {iterations} round trips through the same buffers differ")
                return f"{iterations} round trips through the same buffers, all equal; {1e6 * seconds:.0f} us each"

            def cycles() -> str:
                free_before = _free_device_memory(torch_device)
                for _ in range(iterations):
                    memory.free_device(memory.alloc_device(nbytes))
                    memory.free_host(memory.alloc_host(count, np.float32))
                free_after = _free_device_memory(torch_device)
                if free_before is None or free_after is None:
                    return f"{iterations} alloc/free cycles of each kind (device free memory not read: no torch on CUDA)"
                lost = free_before - free_after
                # A leak keeps every cycle's buffer; the driver's own bookkeeping moves by far less than half of that.
                if lost > iterations * nbytes / 2:
                    raise AssertionError(f"device free memory fell by {lost / 2**20:.0f} MiB over {iterations} alloc/free cycles")
                return f"{iterations} alloc/free cycles of each kind; device free memory changed by {-lost / 2**20:+.1f} MiB"

            check("round trip on a stream", round_trip)
            check(f"buffer reuse, {iterations} iterations", reuse)
            check(f"alloc/free, {iterations} cycles", cycles)
            handle_ok = check("stream handle", lambda: _stream_handle(memory, stream))
            if torch_device is not None:
                if handle_ok:
                    check("torch work on the handle (ExternalStream)",
                          lambda: _external_stream(memory, stream, dst, torch_device, DeviceBuffer))
                else:
                    rows.append({"check": "torch work on the handle (ExternalStream)", "ok": False,
                                 "error": "skipped: the stream handle is wrong (above); giving it to torch could crash the process"})
                check("device pointers shared with torch", lambda: _shared_pointers(memory, stream, src, dst, torch_device,
                                                                                    DeviceBuffer))
        finally:
            def release() -> str:
                memory.free_device(buffer)
                memory.free_host(src)
                memory.free_host(dst)
                memory.destroy_stream(stream)
                return "the checks' buffers and stream released"

            check("release", release)
    return rows


def _free_device_memory(torch_device: int | None) -> int | None:
    if torch_device is None:
        return None
    import torch

    torch.cuda.synchronize(torch_device)
    return int(torch.cuda.mem_get_info(torch_device)[0])


def _stream_handle(memory: Any, stream: Any) -> str:
    handle = memory.stream_handle(stream)
    if not isinstance(handle, int) or isinstance(handle, bool):
        raise AssertionError(f"stream_handle gave {type(handle).__name__}, not int (execute_async_v3 takes an int)")
    raw = raw_stream_value(memory, stream)
    if raw is None:
        return f"{handle:#x} (no raw value known for the {memory.name!r} library)"
    if handle != raw:
        raise AssertionError(f"stream_handle gave {handle:#x} but the raw cudaStream_t is {raw:#x}: TensorRT's "
                             "execute_async_v3 would be given something that is not the stream")
    return f"{handle:#x}, the raw cudaStream_t"


def _external_stream(memory: Any, stream: Any, dst: np.ndarray, index: int, buffer_type: Any) -> str:
    """torch work enqueued on torch.cuda.ExternalStream(handle), then a copy_to_host on the library's stream: the copy
    sees the work's result only when both are the same stream (or the work happened to finish first)."""
    import torch

    device = torch.device("cuda", index)
    count = dst.size
    expected = np.arange(count, dtype=np.float32)
    y = torch.zeros(count, device=device)
    torch.cuda.synchronize(device)
    external = torch.cuda.ExternalStream(memory.stream_handle(stream), device=device)
    with torch.cuda.stream(external):
        # Long enough that a copy on another stream would overtake it and read zeros.
        a = torch.randn(2048, 2048, device=device)
        for _ in range(20):
            a = a @ a
            a = a / a.norm()
        y.copy_(torch.arange(count, device=device, dtype=torch.float32) + 0 * a[0, 0].nan_to_num())
    dst[:] = -1
    memory.copy_to_host(dst, buffer_type(y.data_ptr(), count * 4), stream)
    memory.synchronize(stream)
    # The library destroys its stream after the checks: nothing of torch's may still be queued on it then.
    external.synchronize()
    del a
    if not np.array_equal(dst, expected):
        raise AssertionError("a copy enqueued on the library's stream after torch work on ExternalStream(handle) did not "
                             "see that work's result: the handle is not the library's stream")
    return "torch work on ExternalStream(stream_handle) is ordered before the library's next copy on its stream"


def _shared_pointers(memory: Any, stream: Any, src: np.ndarray, dst: np.ndarray, index: int, buffer_type: Any) -> str:
    """copy_to_host from, and copy_to_device into, torch tensors by data_ptr: one address space (the primary context)."""
    import torch

    device = torch.device("cuda", index)
    count = dst.size
    tensor = torch.arange(count, device=device, dtype=torch.float32) * 0.5
    target = torch.zeros(count, device=device)
    torch.cuda.synchronize(device)
    memory.copy_to_host(dst, buffer_type(tensor.data_ptr(), count * 4), stream)
    src[:] = np.random.default_rng(1).standard_normal(count, dtype=np.float32)
    memory.copy_to_device(buffer_type(target.data_ptr(), count * 4), src, stream)
    memory.synchronize(stream)
    if not np.array_equal(dst, tensor.cpu().numpy()):
        raise AssertionError("copy_to_host from a torch tensor's data_ptr did not read the tensor")
    if not np.array_equal(target.cpu().numpy(), src):
        raise AssertionError("copy_to_device into a torch tensor's data_ptr did not write the tensor")
    return "copy_to_host from and copy_to_device into torch tensors by data_ptr, both equal"


def memory_child(backend: str, index: int, iterations: int, nbytes: int) -> int:
    """In a child process: open `backend` on device `index`, run memory_checks, print the rows as one JSON line."""
    from ram_edge.runtimes.cuda_memory import open_cuda

    rows: list[dict[str, Any]] = []
    opened: dict[str, Any] = {"check": "open_cuda"}
    memory = attempt(opened, "open_cuda", lambda: open_cuda(index, backend))
    if memory is None:
        rows.append({**opened, "ok": False})
    else:
        torch_device = None
        if importlib.util.find_spec("torch") is not None:
            import torch

            torch_device = index if torch.cuda.is_available() else None
        rows.append({**opened, "ok": True, "detail": f"{memory.name} on device {index}"
                     + ("" if torch_device is not None else "; torch sees no CUDA device: no cross-checks with torch")})
        checks: dict[str, Any] = {"check": "memory checks"}
        rows += attempt(checks, "the memory checks", lambda: memory_checks(memory, iterations, nbytes, torch_device)) or \
            [{**checks, "ok": False}]
        closed: dict[str, Any] = {"check": "close"}
        attempt(closed, "close", memory.close)
        rows.append({**closed, "ok": "error" not in closed})
    print(json.dumps(rows))
    return 0


def _child_rows(backend: str, index: int, iterations: int, nbytes: int, timeout: float) -> list[dict[str, Any]]:
    """memory_child in a fresh interpreter; a crash, a hang or unreadable output is a failed row."""
    command = [sys.executable, "-m", "ram_edge.benchmarks.gpu_torch_check", "--memory-child", backend, "--device", f"cuda:{index}",
               "--memory-iters", str(iterations), "--memory-mb", str(nbytes / 2**20)]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return [{"check": "child process", "ok": False, "error": f"timed out after {timeout:.0f} s (a hung CUDA call?)"}]
    last_err = (proc.stderr.strip().splitlines() or [""])[-1]
    if proc.returncode:
        how = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit status {proc.returncode}"
        return [{"check": "child process", "ok": False, "error": f"{how}: {last_err}".rstrip(": ")}]
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return [{"check": "child process", "ok": False, "error": f"no result line on its stdout; stderr: {last_err}"}]


def memory_section(device: str, iterations: int, nbytes: int, timeout: float) -> dict[str, Any]:
    """{"skipped": reason} where no CUDA driver or library is usable, else {"backends": {library: check rows}}."""
    from ram_edge.runtimes.cuda_memory import INSTALL_HINT, installed_backends

    problem = cuda_driver_problem()
    if problem is not None:
        return {"skipped": problem}
    names = installed_backends()
    if not names:
        return {"skipped": f"neither pycuda nor cuda-python is installed; {INSTALL_HINT}"}
    index = device_index(device) or 0
    backends = {}
    for name in names:
        _log(f"CUDA memory layer through {name} (child process)")
        backends[name] = _child_rows(name, index, iterations, nbytes, timeout)
    return {"backends": backends}


# ---------------------------------------------------------------------------------------------
# Report


def failures(result: dict[str, Any]) -> list[str]:
    """Every failed step of a result, one line each."""
    lines = [f"- environment: {e}" for e in result.get("environment", {}).get("errors", [])]
    for section in ("accuracy", "speed"):
        for row in result.get(section, []):
            if row.get("error"):
                words = [str(row[k]) for k in ("model", "variant") if k in row]
                what = " ".join(words + ([f"batch {row['batch']}"] if "batch" in row else []))
                lines.append(f"- {section}: {what}: {row['error']}")
    if result.get("training", {}).get("error"):
        lines.append(f"- AMP training step: {result['training']['error']}")
    for name, rows in result.get("memory", {}).get("backends", {}).items():
        lines += [f"- memory layer ({name}): {r['check']}: {r['error']}" for r in rows if r.get("error")]
    lines += [f"- {e}" for e in result.get("errors", [])]
    return lines


def render(result: dict[str, Any]) -> str:
    """The markdown report of a result (whatever parts of it exist)."""
    env = result.get("environment", {})
    gpu = (f"{env.get('gpu') or 'none'} (compute capability {env.get('compute_capability', '–')}, "
           f"{env.get('gpu_memory_gib', '–')} GiB)")
    failed = failures(result)
    lines = [
        "# GPU check without TensorRT: torch runtime, AMP training step, CUDA memory layer", "",
        "**The TensorRT engine itself stays unmeasured here** (its build, numerics and speed): this machine is checked "
        f"without TensorRT (TensorRT: {env.get('tensorrt', 'unknown')}). `python -m ram_edge.benchmarks.gpu_check` "
        "measures it where TensorRT is installed.", "",
        f"Device: `{env.get('device')}`; GPU: {gpu}; NVIDIA driver {env.get('driver_version') or 'unknown'} "
        f"(CUDA {env.get('driver_cuda_version') or 'unknown'}; driver: {env.get('cuda_driver', 'unknown')})  ",
        f"torch {env.get('torch')} (built for CUDA {env.get('torch_cuda')}, cuDNN {env.get('cudnn')}; TF32 matmul "
        f"{env.get('tf32_matmul')}, TF32 cuDNN {env.get('tf32_cudnn')}: torch's defaults, unchanged); cuda-python "
        f"{env.get('cuda_python') or 'not installed'}; pycuda {env.get('pycuda') or 'not installed'}  ",
        f"CPU: {env.get('cpu', 'unknown')}; {env.get('platform')}; Python {env.get('python')}  ",
        f"Date: {result.get('date')}; command: `{result.get('command')}`; git commit {env.get('git_commit') or 'unknown'}; "
        f"wall time {result.get('seconds', 0.0):.0f} s", "",
        "## Failed steps", "", *(failed or ["- none"]), "",
        "## Torch runtime against the CPU (fp32)", "",
        "fp32: the `torch` runtime on the device (`ram-edge tag --runtime torch --device ...`); fp16: the same checkpoint's "
        "model under `model.half()` on the device (the torch runtime computes in fp32 only). Reference: the torch runtime "
        "on the CPU in fp32. Default model: its example images; full size: random weights on image-like random inputs, "
        "so only the numerics mean something.", "",
        *markdown_table(result.get("accuracy", []), ["model", "variant", "images", "max_abs_diff", "mean_abs_diff", "tag_f1",
                                                     "load_s", "error"]), "",
        f"## Speed ({result.get('iters')} timed calls after {result.get('warmup')} warm-up, median; numpy in, numpy out)", "",
        *markdown_table(result.get("speed", []), ["model", "variant", "batch", "ms_per_batch", "ms_per_image", "img_s", "ms_min",
                                                  "error"]), "",
        "## One AMP training step (the project's Trainer, tiny model)", "",
    ]
    training = result.get("training")
    if training:
        lines += markdown_table([training], ["device", "amp", "autocast_dtype", "steps", "losses", "grad_scale_before",
                                             "grad_scale_after", "params_changed", "param_tensors", "note", "error"])
    else:
        lines.append("- not reached")
    lines += ["", "## CUDA memory layer of the trt runtime (runtimes/cuda_memory.py)", ""]
    memory = result.get("memory", {})
    if "skipped" in memory:
        lines.append(f"Skipped: {memory['skipped']}.")
    elif not memory.get("backends"):
        lines.append("- not reached")
    for name, rows in memory.get("backends", {}).items():
        lines += [f"### {name}", "", *markdown_table(rows, ["check", "ok", "detail", "error"]), ""]
    return "\n".join(lines).rstrip() + "\n"


def write_report(path: Path, result: dict[str, Any]) -> None:
    """The markdown report at `path` and the JSON beside it."""
    write_report_files(path, render(result), result)


# ---------------------------------------------------------------------------------------------
# Main


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0])
    parser.add_argument("--report", type=Path, default=Path("bench-reports") / "gpu_torch_check.md",
                        help="Markdown report to write; the JSON goes beside it [bench-reports/gpu_torch_check.md].")
    parser.add_argument("--device", type=device_arg, default="cuda", help="Torch device under test: cuda, cuda:N or cpu [cuda].")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="Where the full-size checkpoint and the training run go (reused on rerun) [a new temporary folder].")
    parser.add_argument("--full-size", action=argparse.BooleanOptionalAction, default=True,
                        help="Also the full-size Swin-L/384 RAM with random weights [on].")
    parser.add_argument("--images", type=int, default=8, help="Images compared against the CPU per model [8].")
    parser.add_argument("--iters", type=int, default=20, help="Timed calls per speed row [20].")
    parser.add_argument("--warmup", type=int, default=5, help="Untimed calls before them [5].")
    parser.add_argument("--train-steps", type=int, default=2, help="AMP training steps [2].")
    parser.add_argument("--memory-iters", type=int, default=200, help="Round trips and alloc/free cycles of the memory layer [200].")
    parser.add_argument("--memory-mb", type=float, default=4.0, help="Buffer size of the memory-layer checks in MiB [4].")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the check and write the report; 1 when a step failed, else 0."""
    parser = _parser()
    args = parser.parse_args(argv)
    for name in ("images", "iters", "train_steps", "memory_iters"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.warmup < 0 or args.memory_mb <= 0:
        parser.error("--warmup must be 0 or more and --memory-mb more than 0")
    nbytes = max(4, int(args.memory_mb * 2**20) // 4 * 4)
    if args.memory_child:
        return memory_child(args.memory_child, device_index(args.device) or 0, args.memory_iters, nbytes)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ram-edge-gpu-torch-check-"))
    workdir.mkdir(parents=True, exist_ok=True)
    command = " ".join([COMMAND, *(sys.argv[1:] if argv is None else argv)])
    result: dict[str, Any] = {"date": datetime.date.today().isoformat(), "command": command, "iters": args.iters,
                              "warmup": args.warmup, "workdir": str(workdir), "accuracy": [], "speed": [], "errors": []}
    # Whatever happens below, what was measured reaches the report (a rented GPU may be gone before a rerun).
    try:
        result["environment"] = environment(args.device)
        _log(f"environment: {result['environment']}")
        models: list[tuple[str, Callable[[], tuple[Path, np.ndarray]]]] = [(DEFAULT, lambda: default_model_inputs(args.images))]
        if args.full_size:
            models.append((FULL_SIZE, lambda: full_size_inputs(workdir, args.images)))
        for model, prepare in models:
            setup: dict[str, Any] = {"model": model, "variant": "setup"}
            prepared = attempt(setup, "preparing the model", prepare)
            if prepared is None:
                result["accuracy"].append(setup)
                continue
            accuracy, speed = check_model(model, *prepared, args.device, args.iters, args.warmup)
            result["accuracy"] += accuracy
            result["speed"] += speed
        training: dict[str, Any] = {"device": args.device}
        result["training"] = attempt(training, "AMP training step",
                                     lambda: amp_training_step(workdir, args.device, args.train_steps)) or training
        _log(f"AMP training step: {result['training']}")
        result["memory"] = memory_section(args.device, args.memory_iters, nbytes, MEMORY_CHILD_TIMEOUT_S)
        _log(f"memory layer: {result['memory']}")
    except Exception as exc:  # noqa: BLE001 - an unforeseen failure still leaves the report of what ran
        result["errors"].append(f"the check stopped early: {step_error(exc)}")
        _log(result["errors"][-1])
    finally:
        result["seconds"] = time.perf_counter() - _START
        result["failed"] = failures(result)
        write_report(args.report, result)
        _log(f"wrote {args.report} and {args.report.with_suffix('.json')}")
    if result["failed"]:
        print(f"{len(result['failed'])} step(s) failed; see {args.report}", file=sys.stderr)
    return 1 if result["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
