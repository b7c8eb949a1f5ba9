"""`ram-edge bench --suite FILE.yaml`: a matrix of models x runtimes x precisions x batch sizes x tag counts.

Every artifact is made by the ram-edge command a user runs (export, quantize; cached in the work
directory), every cell is timed by `ram-edge bench --json` in a fresh process, the cells run in
`rounds` passes (every second one in reverse order, so drift of a shared machine hits all alike; the
spread between rounds is the noise the report states), and the fp32 matmul roofline is read before
every cell. Cold start (process start to the first tags of `ram-edge tag`), accuracy (the default
model's mAP on its rendered test split and tag-set agreement with torch fp32; probability
differences for random-weight models), file sizes and memory join the same report, with PNG plots.
A cell that fails is a row with its error; the others still run.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from ram_edge.config import config_from_dict
from ram_edge.errors import ConfigError, RamEdgeError
from ram_edge.fileio import atomic_file, check_writable

from .harness import cpu_features, log, map_on_tag_names, roofline_in_subprocess, run_cli

RUNTIME_FORMATS = {"torch": "checkpoint", "ort": "onnx", "openvino": "openvino", "trt": "trt"}
PRECISIONS = ("fp32", "fp16", "int8", "bf16")
# (runtime, precision) pairs that exist: torch is the fp32 reference; bf16 is OpenVINO's compute precision
# on an fp32 IR (refused, as a row with its error, on CPUs without BF16); TensorRT builds fp16 and int8.
VALID = {("torch", "fp32"), ("ort", "fp32"), ("ort", "fp16"), ("ort", "int8"), ("openvino", "fp32"), ("openvino", "fp16"),
         ("openvino", "int8"), ("openvino", "bf16"), ("trt", "fp16"), ("trt", "int8")}
# The suites shipped with ram-edge, by name (`ram-edge bench --suite default_model`).
SUITES_DIR = Path(__file__).resolve().parent / "suites"


@dataclass
class SuiteTargets:
    """Pass/miss thresholds of a suite (its `targets:` section); a threshold left out is not checked.

    roofline_pct: fp32 on the best CPU runtime reaches this % of the matmul roofline. subset_of_bound: a tag subset
    gains this share of the speed-up its MAC counts allow. int8_size, int8_memory: INT8 model files and peak memory
    at most this share of fp32's. int8_speed_vnni / int8_speed_ort / int8_speed_openvino: INT8 at least this many
    times as fast as fp32 on a CPU with VNNI / without VNNI on onnxruntime / without VNNI on OpenVINO.
    cold_start_s: process start to the first tags of `ram-edge tag`, in seconds. not_judged: thresholds whose
    rows are shown with their measured value but no verdict, labelled with not_judged_note.
    """

    roofline_pct: float | None = None
    subset_of_bound: float | None = None
    int8_size: float | None = None
    int8_memory: float | None = None
    int8_speed_vnni: float | None = None
    int8_speed_ort: float | None = None
    int8_speed_openvino: float | None = None
    cold_start_s: float | None = None
    not_judged: list = field(default_factory=list)
    not_judged_note: str = "not judged here"

    def __post_init__(self) -> None:
        thresholds = [f.name for f in fields(self) if f.name not in ("not_judged", "not_judged_note")]
        for name in thresholds:
            value = getattr(self, name)
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                    raise ConfigError(f"suite targets: {name} must be a positive number, got {value!r}")
                setattr(self, name, float(value))
        if not isinstance(self.not_judged, list):
            raise ConfigError(f"suite targets: not_judged must be a list of target names, got {self.not_judged!r}; "
                              f"e.g. [{thresholds[0]}]")
        unknown = [n for n in self.not_judged if n not in thresholds]
        if unknown:
            raise ConfigError(f"suite targets: not_judged names unknown target(s) {unknown}; valid: {', '.join(thresholds)}")


@dataclass
class SuiteModel:
    """One model of the matrix: `source` is 'default' (the shipped model), 'preset:NAME' (random weights of a
    shipped architecture) or a checkpoint directory; `tags` lists tag counts ('all' or the first N tags)."""

    name: str
    source: str
    tags: list = field(default_factory=lambda: ["all"])
    accuracy: bool = True
    test_count: int = 500  # rendered test scenes for the default model's mAP
    targets: Any = None  # this model's own targets instead of the suite's (a mapping like the suite's `targets:`)

    def __post_init__(self) -> None:
        if self.targets is not None and not isinstance(self.targets, SuiteTargets):
            self.targets = config_from_dict(SuiteTargets, self.targets, f"suite model {self.name} targets")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", str(self.name)):
            raise ConfigError(f"suite model name {self.name!r}: use letters, digits, '.', '_' or '-'")
        for t in self.tags:
            if t != "all" and not (isinstance(t, int) and t > 0):
                raise ConfigError(f"suite model {self.name}: tag count {t!r} must be 'all' or a positive integer")


@dataclass
class SuiteConfig:
    """A benchmark suite (a YAML file such as those in benchmarks/suites/)."""

    name: str
    models: list
    runtimes: list = field(default_factory=lambda: ["torch", "ort", "openvino"])
    precisions: list = field(default_factory=lambda: ["fp32"])
    batches: list = field(default_factory=lambda: [1])
    threads: int = 2
    iters: int = 10
    warmup: int = 2
    rounds: int = 2
    cold_start: bool = True
    roofline: bool = True
    calib_size: int = 32
    targets: Any = None  # SuiteTargets; none: the report judges nothing

    def __post_init__(self) -> None:
        if not isinstance(self.targets, SuiteTargets):
            self.targets = config_from_dict(SuiteTargets, {} if self.targets is None else self.targets, "suite targets")
        self.models = [m if isinstance(m, SuiteModel) else config_from_dict(SuiteModel, m, "suite model") for m in self.models]
        if not self.models:
            raise ConfigError("suite: give at least one model")
        unknown = [r for r in self.runtimes if r not in RUNTIME_FORMATS]
        if unknown:
            raise ConfigError(f"suite: unknown runtime(s) {unknown}; valid: {', '.join(RUNTIME_FORMATS)}")
        bad = [p for p in self.precisions if p not in PRECISIONS]
        if bad:
            raise ConfigError(f"suite: unknown precision(s) {bad}; valid: {', '.join(PRECISIONS)}")
        if not self.batches or any(not isinstance(b, int) or b < 1 for b in self.batches):
            raise ConfigError(f"suite: batches must be positive integers, got {self.batches}")
        if self.rounds < 1 or self.iters < 1:
            raise ConfigError("suite: rounds and iters must be >= 1")

    @classmethod
    def load(cls, path: str | Path) -> "SuiteConfig":
        """Read a YAML or JSON suite file."""
        from ram_edge.config import read_mapping_file, config_from_dict

        return config_from_dict(cls, read_mapping_file(path, ConfigError, "benchmark suite"), f"suite {path}")


def suite_path(text: str) -> Path:
    """The suite file `text` names: a file, or the name of a suite shipped with ram-edge."""
    path = Path(text)
    if path.is_file():
        return path
    shipped = sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))
    if text in shipped:
        return SUITES_DIR / f"{text}.yaml"
    raise ConfigError(f"suite {text!r}: no such file and no shipped suite of that name; give a suite file or one of: "
                      f"{', '.join(shipped)}")


@dataclass
class Cell:
    """One timed configuration."""

    model: str
    runtime: str
    precision: str
    batch: int
    tags: Any  # "all" or int

    @property
    def key(self) -> str:
        """Stable identifier."""
        return f"{self.model}/{self.runtime}/{self.precision}/b{self.batch}/{self.tags}"


def plan(config: SuiteConfig) -> list[Cell]:
    """Every valid cell, in a drift-spreading order (runtimes interleaved within each configuration)."""
    cells = []
    for model in config.models:
        for tags in model.tags:
            for batch in config.batches:
                for precision in config.precisions:
                    for runtime in config.runtimes:
                        if (runtime, precision) not in VALID:
                            continue
                        if runtime == "torch" and tags != "all":
                            continue  # the torch runtime runs a checkpoint with its whole label set
                        cells.append(Cell(model.name, runtime, precision, batch, tags))
    return cells


def _compute(run: dict[str, Any]) -> str:
    """What a cell computed in: OpenVINO INT8 on int8 kernels reads int8 (its precision hint says fp32), onnxruntime
    INT8 on its exact U8U8 kernels int8 U8U8 (CPUs without VNNI)."""
    if run.get("int8_kernels"):
        return "int8"
    if run.get("int8_u8u8"):
        return "int8 U8U8"
    return run["compute_precision"]


class Suite:
    """Runs one suite: prepare artifacts, time cells, measure accuracy and cold start, write the report."""

    def __init__(self, config: SuiteConfig, workdir: Path, report_dir: Path, *, command: str = "") -> None:
        self.config, self.workdir, self.report_dir, self.command = config, Path(workdir), Path(report_dir), command
        check_writable(self.report_dir / "report.md")  # not after hours of cells
        check_writable(self.workdir / "model")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.models = {m.name: m for m in config.models}
        self.checkpoints: dict[str, Path] = {}
        self.macs: dict[str, dict[str, float]] = {}
        self.readings: list[float] = []

    # -- artifacts -----------------------------------------------------------------------------------
    def _sh(self, *args: str) -> None:
        run_cli(*args, capture=True)
        # A bundle is hundreds of MB: flush it now, so the kernel's writeback does not compete with the next timed
        # cell for the cores (an INT8 cell timed right after its export once ran 20% slower than its second round).
        os.sync()

    def checkpoint(self, model: SuiteModel) -> Path:
        """The float checkpoint of a suite model."""
        if model.name in self.checkpoints:
            return self.checkpoints[model.name]
        if model.source == "default":
            from ram_edge.default_model import default_model_path

            path = default_model_path("checkpoint")
        elif model.source.startswith("preset:"):
            from .random_weights import build_checkpoint

            root = self.workdir / model.name
            root.mkdir(parents=True, exist_ok=True)
            path = build_checkpoint(root, model.source.split(":", 1)[1])
        else:
            path = Path(model.source)
            if not (path / "config.json").is_file():
                raise ConfigError(f"suite model {model.name}: {path} is not a checkpoint directory")
        self.checkpoints[model.name] = path
        return path

    def _tag_names(self, model: SuiteModel, tags: Any) -> list[str] | None:
        if tags == "all":
            return None
        names = (self.checkpoint(model) / "tags.txt").read_text(encoding="utf-8").splitlines()
        return names[: int(tags)]

    def _calibration(self, model: SuiteModel) -> Path:
        folder = self.workdir / model.name / "calib"
        if (folder / "done").is_file():
            return folder
        if model.source == "default":
            self._sh("data", "scenes", "-o", str(folder), "--count", str(self.config.calib_size), "--split", "train", "--seed", "7",
                     "--overwrite")
        else:
            from PIL import Image

            folder.mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng(0)
            for i in range(self.config.calib_size):
                base = np.linspace(0, 255, 256, dtype=np.float32)[None, :, None] * rng.uniform(0.2, 1.0, 3)
                Image.fromarray(np.clip(base + rng.normal(0, 30, (256, 256, 3)), 0, 255).astype(np.uint8)).save(folder / f"{i:03d}.png")
        (folder / "done").write_text("ok")
        return folder

    def quantized(self, model: SuiteModel) -> Path:
        """A PTQ checkpoint of the model (made once)."""
        target = self.workdir / model.name / "ptq"
        if not (target / "config.json").is_file():
            calib = self._calibration(model)
            self._sh("quantize", str(self.checkpoint(model)), "-o", str(target), "--calib", str(calib),
                     "--calib-size", str(self.config.calib_size))
        return target

    def artifact(self, cell: Cell) -> Path:
        """The checkpoint or bundle a cell runs (exported on first use)."""
        model = self.models[cell.model]
        if cell.runtime == "torch":
            return self.checkpoint(model)
        fmt = RUNTIME_FORMATS[cell.runtime]
        stored = "fp32" if cell.precision == "bf16" else cell.precision
        # TensorRT builds fp16 engines from the fp32 ONNX (it picks fp16 per layer) and int8 from the Q/DQ ONNX.
        onnx_precision = ("int8" if stored == "int8" else "fp32") if fmt == "trt" else stored
        bundle_format = "onnx" if fmt == "trt" else fmt
        target = self.workdir / model.name / f"{bundle_format}-{onnx_precision}-{cell.tags}"
        if not (target / "manifest.json").is_file():
            source = self.quantized(model) if onnx_precision == "int8" else self.checkpoint(model)
            args = ["export", str(source), "-o", str(target), "--format", bundle_format, "--overwrite"]
            if onnx_precision == "fp16":
                args += ["--precision", "fp16"]
            names = self._tag_names(model, cell.tags)
            if names:
                list_file = self.workdir / model.name / f"tags-{cell.tags}.txt"
                list_file.write_text("".join(n + "\n" for n in names), encoding="utf-8")
                args += ["--tags-file", str(list_file)]
            self._sh(*args)
        if fmt != "trt":
            return target
        engine = self.workdir / model.name / f"trt-{stored}-{cell.tags}"
        if not (engine / "manifest.json").is_file():
            self._sh("export", str(target), "--format", "trt", "-o", str(engine), "--precision", stored,
                     "--max-batch", str(max(self.config.batches)), "--overwrite")
        return engine

    # -- measurements --------------------------------------------------------------------------------
    def mac_counts(self, model: SuiteModel) -> dict[str, float]:
        """Multiply-accumulates per image: encoder, and decoder at each tag count of the suite."""
        if model.name not in self.macs:
            from .random_weights import count_macs

            ckpt = self.checkpoint(model)
            total = len((ckpt / "tags.txt").read_text(encoding="utf-8").splitlines())
            counts = sorted({total if t == "all" else int(t) for t in model.tags})
            macs = count_macs(ckpt, counts)
            macs["decoder_all"] = macs[f"decoder_{total}"]
            macs["num_tags"] = total
            self.macs[model.name] = macs
        return self.macs[model.name]

    def _roofline(self) -> float:
        """The fp32 matmul roofline (MAC/s), read in a fresh process (see `roofline_in_subprocess`)."""
        return roofline_in_subprocess(self.config.threads, n=3072, repeats=2)

    def bench_cell(self, cell: Cell, path: Path) -> dict[str, Any]:
        """`ram-edge bench --json` on the cell's artifact `path` in a fresh process; a failure is returned as {'error': ...}."""
        args = ["bench", str(path), "--runtime", cell.runtime, "--batch-size", str(cell.batch), "--iters", str(self.config.iters),
                "--warmup", str(self.config.warmup), "--threads", str(self.config.threads), "--json"]
        if cell.precision == "bf16":
            args += ["--compute-precision", "bf16"]
        proc = subprocess.run([sys.executable, "-m", "ram_edge.cli.main", *args], capture_output=True, text=True)
        if proc.returncode:
            return {"error": (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1].removeprefix("error: ")}
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def cold_start(self, cell: Cell) -> float | None:
        """Seconds from process start to the first line of tags of `ram-edge tag` (batch-1 cells only)."""
        from ram_edge.default_model import default_model_path

        try:
            path = self.artifact(cell)
        except RamEdgeError:
            return None
        image = default_model_path("bundle").parent / "examples" / "scene-1.png"
        args = [sys.executable, "-m", "ram_edge.cli.main", "tag", "--model", str(path), "--runtime", cell.runtime,
                "--threads", str(self.config.threads), str(image)]
        if cell.precision == "bf16":
            args[-1:-1] = ["--compute-precision", "bf16"]
        started = time.perf_counter()
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = proc.stdout.readline() if proc.stdout else ""
        seconds = time.perf_counter() - started
        proc.communicate()
        return seconds if proc.returncode == 0 and line else None

    def accuracy(self, cell: Cell, reference: dict[str, Any]) -> dict[str, Any]:
        """mAP + agreement (default model) or probability differences (others) against torch fp32, at the cell's tags."""
        from ram_edge import Tagger
        from ram_edge.labels import tag_set_f1

        inputs, truth = reference["inputs"], reference["truth"]
        try:
            with Tagger.load(self.artifact(cell), runtime=cell.runtime, threads=self.config.threads,
                             compute_precision="bf16" if cell.precision == "bf16" else None) as tagger:
                probs = np.concatenate([tagger.predict(inputs[i:i + 16]) for i in range(0, len(inputs), 16)])
                labels = tagger.labels
        except RamEdgeError as exc:
            return {"error": str(exc)}
        ref_probs = reference["probs"]
        if cell.tags != "all":
            index = {t: i for i, t in enumerate(reference["labels"].tags)}
            ref_probs = ref_probs[:, [index[t] for t in labels.tags]]
        out = {"max_abs_diff": float(np.abs(probs - ref_probs).max()),
               "agreement": float(tag_set_f1(labels.fired(probs), labels.fired(ref_probs)).mean())}
        if truth is not None:
            out["mAP"] = map_on_tag_names(probs, labels.tags, truth)
        return out

    def reference(self, model: SuiteModel) -> dict[str, Any]:
        """torch fp32 probabilities on the accuracy inputs: the test split (default model) or validation inputs."""
        from ram_edge import Tagger
        from ram_edge.checkpoint_dir import read_checkpoint_dir

        ckpt = self.checkpoint(model)
        cfg = read_checkpoint_dir(ckpt).config.preprocess
        truth = None
        if model.source == "default":
            split = self.workdir / model.name / "test"
            if not (split / "annotations.jsonl").is_file():
                self._sh("data", "scenes", "-o", str(split), "--count", str(model.test_count), "--split", "test", "--seed", "0",
                         "--overwrite")
            from ram_edge.preprocess import load_image, preprocess

            rows = [json.loads(l) for l in (split / "annotations.jsonl").read_text().splitlines() if l.strip()]
            inputs = np.stack([preprocess(load_image(split / r["image"]), cfg) for r in rows]).astype(np.float32)
            truth = [r["tags"] for r in rows]
        else:
            from ram_edge.export.validate import validation_inputs

            inputs = np.concatenate(validation_inputs(cfg.image_size, (2,), seed=11))
        with Tagger.load(ckpt, runtime="torch", threads=self.config.threads) as tagger:
            probs = np.concatenate([tagger.predict(inputs[i:i + 16]) for i in range(0, len(inputs), 16)])
            labels = tagger.labels
        return {"inputs": inputs, "truth": truth, "probs": probs, "labels": labels}

    # -- the run ---------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Time every cell in every round, then cold starts and accuracy; write the report; return the result."""
        from tqdm import tqdm

        cells = plan(self.config)
        if not cells:
            raise ConfigError(f"suite {self.config.name}: no valid (runtime, precision) cell; valid pairs: {sorted(VALID)}")
        rows: dict[str, dict[str, Any]] = {c.key: {**asdict(c), "rounds": [], "errors": []} for c in cells}
        order = []
        for r in range(self.config.rounds):
            order += [(r, c) for c in (cells if r % 2 == 0 else list(reversed(cells)))]
        with tqdm(total=len(order), desc=f"suite {self.config.name}", unit="cell", file=sys.stderr, disable=None) as bar:
            for r, cell in order:
                try:  # made (exported, quantized) before the roofline reading and the timing, never between them
                    path = self.artifact(cell)
                except RamEdgeError as exc:
                    result = {"error": str(exc)}
                else:
                    if self.config.roofline:
                        self.readings.append(self._roofline())
                    result = self.bench_cell(cell, path)
                row = rows[cell.key]
                if "error" in result:
                    row["errors"].append(result["error"])
                    log(f"{cell.key}: error: {result['error']}")
                else:
                    result["roofline_macs_s"] = self.readings[-1] if self.readings else None
                    row["rounds"].append(result)
                    log(f"{cell.key}: {result['latency_image_ms']['p50']:.2f} ms/image")
                bar.update(1)
        if self.config.roofline:
            self.readings.append(self._roofline())
        # Cold starts before anything runs torch in this process: its idle thread pool keeps cores busy.
        if self.config.cold_start:
            for cell in cells:
                if cell.batch == min(self.config.batches) and rows[cell.key]["rounds"]:
                    rows[cell.key]["cold_start_s"] = self.cold_start(cell)
        for cell in cells:
            self._summarise(cell, rows[cell.key])
        for model in self.config.models:
            if not model.accuracy:
                continue
            try:
                reference = self.reference(model)
            except RamEdgeError as exc:
                log(f"{model.name}: no accuracy reference: {exc}")
                continue
            done: dict[tuple, dict] = {}
            for cell in cells:
                if cell.model != model.name or rows[cell.key].get("ms_per_image") is None:
                    continue
                key = (cell.runtime, cell.precision, cell.tags)
                if key not in done:
                    done[key] = self.accuracy(cell, reference)
                rows[cell.key]["accuracy"] = done[key]
        result = {"suite": asdict(self.config), "date": datetime.date.today().isoformat(), "command": self.command,
                  "cpu": cpu_features(), "roofline_readings": self.readings, "macs": self.macs, "rows": list(rows.values())}
        result["targets"] = targets(result)
        result["reproduction"] = reproduction(result, self.report_dir)
        write_report(result, self.report_dir)
        return result

    def _summarise(self, cell: Cell, row: dict[str, Any]) -> None:
        runs = row["rounds"]
        if not runs:
            row["error"] = row["errors"][-1] if row["errors"] else "not run"
            return
        per_image = [r["latency_image_ms"]["p50"] for r in runs]
        row.update(ms_per_image=float(np.median(per_image)),
                   round_spread_pct=100 * (max(per_image) - min(per_image)) / min(per_image) if len(per_image) > 1 else None,
                   img_s=float(np.median([r["throughput_img_s"] for r in runs])),
                   peak_rss_mb=float(max(r["peak_rss_mb"] for r in runs)),
                   rss_after_load_mb=runs[-1].get("rss_after_load_mb"), size_mb=runs[-1]["model_size_mb"],
                   load_s=float(np.median([r["load_time_s"] for r in runs])), device=runs[-1]["device"],
                   compute_precision=_compute(runs[-1]),
                   num_tags=runs[-1]["num_tags"])
        if self.config.roofline:
            try:
                macs = self.mac_counts(self.models[cell.model])
            except Exception as exc:  # noqa: BLE001 - MAC counting needs torch; the row stays without it
                log(f"{cell.model}: no MAC counts ({exc})")
                return
            n = macs["num_tags"] if cell.tags == "all" else int(cell.tags)
            per_image_macs = macs["encoder"] + macs[f"decoder_{n}"]
            achieved = per_image_macs / (row["ms_per_image"] / 1e3)
            roofs = [r["roofline_macs_s"] for r in runs if r.get("roofline_macs_s")]
            if not roofs:
                return
            roof = max(roofs)
            row.update(macs_per_image=per_image_macs, achieved_gmacs=achieved / 1e9, pct_of_roofline=100 * achieved / roof)


def _find(rows, **match) -> dict[str, Any] | None:
    for row in rows:
        if all(row.get(k) == v for k, v in match.items()) and row.get("ms_per_image") is not None:
            return row
    return None


def _targets_for(result: dict[str, Any], model: str) -> dict[str, Any]:
    """The targets a model's rows are judged by: its own, else the suite's."""
    suite = result["suite"]
    own = next((m.get("targets") for m in suite["models"] if m["name"] == model), None)
    return own or suite.get("targets") or {}


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The suite's targets, each with the measured value and pass/miss (only those the suite's cells can judge)."""
    rows, out = result["rows"], []
    vnni = bool(result["cpu"].get("vnni"))
    for model in {r["model"] for r in rows}:
        goal = _targets_for(result, model)
        unjudged = set(goal.get("not_judged") or [])
        aside = f" ({goal.get('not_judged_note') or 'not judged here'})"
        mine = [r for r in rows if r["model"] == model]
        fp32 = [r for r in mine if r["precision"] == "fp32" and r["tags"] == "all" and r.get("pct_of_roofline") is not None
                and r["runtime"] != "trt"]
        if fp32 and goal.get("roofline_pct") is not None:
            best = max(fp32, key=lambda r: r["pct_of_roofline"])
            ok = best["pct_of_roofline"] >= goal["roofline_pct"]
            out.append({"model": model, "target": f"fp32 on the best CPU runtime >= {goal['roofline_pct']:.0f}% of the matmul roofline"
                                                  + (aside if "roofline_pct" in unjudged else ""),
                        "value": f"{best['runtime']} batch {best['batch']}: {best['pct_of_roofline']:.0f}%",
                        "pass": None if "roofline_pct" in unjudged else ok})
        macs = result["macs"].get(model)
        for row in mine:
            if goal.get("subset_of_bound") is None or row["tags"] == "all" or row.get("ms_per_image") is None or not macs:
                continue
            full = _find(mine, runtime=row["runtime"], precision=row["precision"], batch=row["batch"], tags="all")
            if full is None:
                continue
            n = int(row["tags"])
            bound = (macs["encoder"] + macs["decoder_all"]) / (macs["encoder"] + macs[f"decoder_{n}"])
            gained = full["ms_per_image"] / row["ms_per_image"]
            ok = gained >= goal["subset_of_bound"] * bound
            out.append({"model": model, "target": f"{n}-tag subset >= {goal['subset_of_bound']:.0%} of the MAC bound "
                                                  f"({row['runtime']} {row['precision']} batch {row['batch']})"
                                                  + (aside if "subset_of_bound" in unjudged else ""),
                        "value": f"{gained:.2f}x of {bound:.2f}x ({gained / bound:.0%})",
                        "pass": None if "subset_of_bound" in unjudged else ok})
        for row in mine:
            if row["precision"] != "int8" or row.get("ms_per_image") is None or row["tags"] != "all":
                continue
            base = _find(mine, runtime=row["runtime"], precision="fp32", batch=row["batch"], tags="all")
            if base is None:
                continue
            speed = base["ms_per_image"] / row["ms_per_image"]
            speed_key = "int8_speed_vnni" if vnni else ("int8_speed_ort" if row["runtime"] == "ort" else "int8_speed_openvino")
            checks = []
            if goal.get("int8_size") is not None:
                checks.append(("int8_size", f"files <= {goal['int8_size']:.0%} of fp32", f"{row['size_mb'] / base['size_mb']:.0%}",
                               row["size_mb"] <= goal["int8_size"] * base["size_mb"]))
            if goal.get("int8_memory") is not None:
                checks.append(("int8_memory", f"peak memory <= {goal['int8_memory']:.0%} of fp32",
                               f"{row['peak_rss_mb'] / base['peak_rss_mb']:.0%}",
                               row["peak_rss_mb"] <= goal["int8_memory"] * base["peak_rss_mb"]))
            if goal.get(speed_key) is not None:
                checks.append((speed_key, f">= {goal[speed_key]}x fp32 ({'VNNI' if vnni else 'no VNNI'})", f"{speed:.2f}x",
                               speed >= goal[speed_key]))
            label = f"{row['runtime']} INT8 batch {row['batch']}"
            out += [{"model": model, "target": f"{label}{aside if key in unjudged else ''}: {target}", "value": value,
                     "pass": None if key in unjudged else ok} for key, target, value, ok in checks]
        colds = [r for r in mine if r.get("cold_start_s")]
        if colds and goal.get("cold_start_s") is not None:
            best = min(colds, key=lambda r: r["cold_start_s"])
            ok = best["cold_start_s"] < goal["cold_start_s"]
            out.append({"model": model, "target": f"cold start to the first tags < {goal['cold_start_s']:.0f} s"
                                                  + (aside if "cold_start_s" in unjudged else ""),
                        "value": f"{best['cold_start_s']:.2f} s ({best['runtime']} {best['precision']})",
                        "pass": None if "cold_start_s" in unjudged else ok})
    return out


def machine_name(cpu: dict[str, Any]) -> str:
    """'avx512-vnni-2c' style: the CPU family (from its flags) and core count, for report file names; an Intel CPU
    is named as such and AMX is named where present, so that reports of different CPU kinds never share a name (and
    a rerun is compared only with a run on the same kind)."""
    flags = set(cpu.get("features") or [])
    kind = "avx512" if any(f.startswith("avx512") for f in flags) else ("avx2" if "avx2" in flags else "cpu")
    if cpu.get("vnni"):
        kind += "-vnni"
    if "amx_int8" in flags:
        kind += "-amx"
    if "intel" in str(cpu.get("model", "")).lower():
        kind = "intel-" + kind
    return f"{kind}-{cpu.get('cores')}c"


def plots(result: dict[str, Any], directory: Path, stem: str) -> list[str]:
    """PNG plots beside the report; returns their file names (none without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: no plots (pip install 'ram-edge[plots]')")
        return []
    rows = [r for r in result["rows"] if r.get("ms_per_image") is not None]
    written = []

    def save(fig, name: str) -> None:
        path = directory / f"{stem}-{name}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path.name)

    for model in sorted({r["model"] for r in rows}):
        mine = [r for r in rows if r["model"] == model]
        series = sorted({(r["runtime"], r["precision"]) for r in mine if r["tags"] == "all"})
        batches = sorted({r["batch"] for r in mine})
        if len(batches) > 1:
            fig, ax = plt.subplots(figsize=(6, 4))
            for runtime, precision in series:
                pts = sorted((r["batch"], r["ms_per_image"]) for r in mine if (r["runtime"], r["precision"]) == (runtime, precision)
                             and r["tags"] == "all")
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{runtime} {precision}")
            ax.set(xlabel="batch size", ylabel="ms per image (p50)", title=f"{model}: latency per image against batch", xscale="log")
            ax.set_xticks(batches, [str(b) for b in batches])
            ax.legend(fontsize=8)
            save(fig, f"{model}-batch")
        base = {r["batch"]: r["ms_per_image"] for r in mine if r["runtime"] == "torch" and r["precision"] == "fp32" and r["tags"] == "all"}
        if base:
            fig, ax = plt.subplots(figsize=(7, 4))
            labels, values = [], []
            for r in sorted(mine, key=lambda r: (r["batch"], r["runtime"], r["precision"])):
                if r["tags"] == "all" and r["batch"] in base:
                    labels.append(f"{r['runtime']}\n{r['precision']} b{r['batch']}")
                    values.append(base[r["batch"]] / r["ms_per_image"])
            ax.bar(range(len(values)), values)
            ax.axhline(1.0, color="grey", lw=0.8)
            ax.set_xticks(range(len(values)), labels, fontsize=7)
            ax.set(ylabel="speed-up over torch fp32 eager", title=f"{model}: speed-up over torch fp32 (same batch)")
            save(fig, f"{model}-speedup")
        macs = result["macs"].get(model)
        tag_counts = sorted({r["tags"] for r in mine if r["tags"] != "all"})
        if tag_counts and macs:
            fig, ax = plt.subplots(figsize=(6, 4))
            for runtime, precision in series:
                full = _find(mine, runtime=runtime, precision=precision, batch=min(batches), tags="all")
                pts = [(int(r["tags"]), r["ms_per_image"]) for r in mine if (r["runtime"], r["precision"]) == (runtime, precision)
                       and r["tags"] != "all" and r["batch"] == min(batches)]
                if full is None or not pts:
                    continue
                pts = sorted(pts + [(int(macs["num_tags"]), full["ms_per_image"])])
                line = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{runtime} {precision}")[0]
                bound = [full["ms_per_image"] * (macs["encoder"] + macs[f"decoder_{n}"]) / (macs["encoder"] + macs["decoder_all"])
                         for n, _ in pts]
                ax.plot([p[0] for p in pts], bound, ls="--", color=line.get_color(), alpha=0.6)
            ax.set(xlabel="tags (queries)", ylabel="ms per image (p50)", xscale="log",
                   title=f"{model}: time against tags (dashed: MAC bound)")
            ax.legend(fontsize=8)
            save(fig, f"{model}-tags")
        acc = [r for r in mine if (r.get("accuracy") or {}).get("mAP") is not None and r["batch"] == min(batches) and r["tags"] == "all"]
        if acc:
            fig, ax = plt.subplots(figsize=(6, 4))
            for r in acc:
                ax.scatter(r["ms_per_image"], r["accuracy"]["mAP"])
                ax.annotate(f"{r['runtime']} {r['precision']}", (r["ms_per_image"], r["accuracy"]["mAP"]), fontsize=7)
            ax.set(xlabel=f"ms per image (p50, batch {min(batches)})", ylabel="mAP on the test split",
                   title=f"{model}: accuracy against speed")
            save(fig, f"{model}-accuracy")
    return written


def _fmt(value: Any, digits: str = ".2f") -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return format(value, digits)
    return str(value)


def _cell_key(row: dict[str, Any]) -> str:
    return f"{row['model']}/{row['runtime']}/{row['precision']}/b{row['batch']}/{row['tags']}"


def reproduction(result: dict[str, Any], directory: Path) -> dict[str, Any] | None:
    """This run against the newest earlier report of the same suite on the same kind of machine in `directory`
    (the same file, when the command runs twice in a day): per cell, how far the p50 per image moved."""
    stem = f"{machine_name(result['cpu'])}-{result['suite']['name']}-"
    earlier = sorted(p for p in directory.glob(f"{stem}*.json") if p.name[len(stem):-5][:4].isdigit())
    if not earlier:
        return None
    previous_path = earlier[-1]
    try:
        previous = json.loads(previous_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log(f"cannot read the earlier report {previous_path} ({exc}); no reproduction figures")
        return None
    before = {_cell_key(r): r["ms_per_image"] for r in previous.get("rows", []) if r.get("ms_per_image")}
    cells = []
    for row in result["rows"]:
        key = _cell_key(row)
        if row.get("ms_per_image") and key in before:
            diff = 100 * abs(row["ms_per_image"] - before[key]) / min(row["ms_per_image"], before[key])
            cells.append({"cell": key, "previous_ms": before[key], "ms": row["ms_per_image"], "diff_pct": diff})
    if not cells:
        return None
    diffs = [c["diff_pct"] for c in cells]
    worst = max(cells, key=lambda c: c["diff_pct"])
    return {"previous": previous_path.name, "previous_date": previous.get("date"), "previous_command": previous.get("command"),
            "cells": cells, "median_pct": float(np.median(diffs)), "largest_pct": worst["diff_pct"], "largest_cell": worst["cell"]}


def write_report(result: dict[str, Any], directory: Path) -> Path:
    """REPORT_DIR/<machine>-<suite>-<date>.md + .json + PNG plots; returns the markdown path."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"{machine_name(result['cpu'])}-{result['suite']['name']}-{result['date']}"
    images = plots(result, directory, stem)
    cpu, rows = result["cpu"], result["rows"]
    readings = [g / 1e9 for g in result["roofline_readings"]]
    spreads = [r["round_spread_pct"] for r in rows if r.get("round_spread_pct") is not None]
    lines = [f"# Benchmark suite `{result['suite']['name']}`", "",
             f"Machine: {cpu['model']}, {cpu['cores']} cores, features {', '.join(cpu['features']) or 'none of AVX-512/VNNI/AMX'} "
             f"(VNNI: {'yes' if cpu.get('vnni') else 'no'}, BF16: {'yes' if cpu.get('bf16') else 'no'}); {result['suite']['threads']} threads  ",
             f"Date: {result['date']}; command: `{result['command']}`  ",
             f"Rounds: {result['suite']['rounds']} (every second one in reverse order; a cell's figure is the median of its rounds); noise: the p50 per image of one cell differed "
             f"between rounds by {_fmt(float(np.median(spreads)) if spreads else None, '.1f')}% (median), "
             f"{_fmt(max(spreads) if spreads else None, '.1f')}% (largest)  ",
             "fp32 matmul roofline (the faster of torch and OpenVINO at 3072², in its own process before every cell): "
             + (f"{min(readings):.1f}–{max(readings):.1f} GMAC/s" if readings else "not read") + "  "]
    again = result.get("reproduction")
    if again:
        lines.append(
            f"Reproduction: against the previous run of this suite here ({again['previous']}, {again['previous_date']}), the p50 "
            f"per image of the {len(again['cells'])} cells measured by both moved by {again['median_pct']:.1f}% (median), "
            f"{again['largest_pct']:.1f}% (largest: {again['largest_cell']})")
    else:
        lines.append("Reproduction: no earlier run of this suite on this kind of machine in this folder; run the command again "
                     "to measure how far two runs are apart")
    lines += ["", "## Targets", ""]
    for t in result["targets"] or [{"model": "–", "target": "no target applies to these cells", "value": "–", "pass": None}]:
        verdict = "–" if t["pass"] is None else ("pass" if t["pass"] else "**miss**")
        lines.append(f"- {t['model']}: {t['target']}: {t['value']}: {verdict}")
    lines += ["", "## Cells", "", "| model | runtime | precision | compute | batch | tags | ms/image p50 | spread | img/s | "
              "% roofline | cold start s | peak RSS MB | size MB | mAP | agreement | max Δp | error |",
              "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        acc = r.get("accuracy") or {}
        lines.append("| " + " | ".join([
            r["model"], r["runtime"], r["precision"], _fmt(r.get("compute_precision")), str(r["batch"]), str(r["tags"]),
            _fmt(r.get("ms_per_image")), _fmt(r.get("round_spread_pct"), ".1f") + ("%" if r.get("round_spread_pct") is not None else ""),
            _fmt(r.get("img_s"), ".1f"), _fmt(r.get("pct_of_roofline"), ".0f"), _fmt(r.get("cold_start_s")),
            _fmt(r.get("peak_rss_mb"), ".0f"), _fmt(r.get("size_mb"), ".1f"), _fmt(acc.get("mAP")), _fmt(acc.get("agreement"), ".3f"),
            _fmt(acc.get("max_abs_diff"), ".2g"), (r.get("error") or acc.get("error") or "").replace("|", "\\|")[:160],
        ]) + " |")
    if result["macs"]:
        lines += ["", "MACs per image (FlopCounterMode): " + "; ".join(
            f"{m}: encoder {v['encoder'] / 1e9:.2f} G, decoder at all {int(v['num_tags'])} tags {v['decoder_all'] / 1e9:.2f} G"
            for m, v in result["macs"].items())]
    lines += ["", "Accuracy: against torch fp32 on the same inputs (the default model: its rendered test split; "
              "random-weight models: validation inputs); mAP only where labels exist.", ""]
    lines += [f"![{name}]({name})" for name in images]
    path = directory / f"{stem}.md"
    with atomic_file(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    with atomic_file(path.with_suffix(".json"), "w") as fh:
        json.dump({**result, "plots": images}, fh, indent=1, default=str)
    log(f"wrote {path}")
    return path
