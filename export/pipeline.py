"""`ram-edge export` as a library: every decision between a model on disk and a written bundle.

    from ram_edge.export import export
    export("ram_plus_l384", "ram_plus_onnx")                                         # fp32 ONNX bundle
    export("ram_plus_l384", "ram_plus_int8", format="openvino", precision="int8", calib="my_photos/")
    export("ram_plus_onnx", "ram_plus_trt", format="trt", trt=TrtBuildOptions(max_batch=4))

A format is an entry of FORMATS (one exporter per format, TensorRT included): ONNX and OpenVINO
bundles are written from a checkpoint directory (float, or quantized by `ram-edge quantize`, or
quantized on the way with `calib`); a TensorRT bundle is built from an ONNX bundle, or from a
checkpoint through a temporary ONNX bundle. Invalid combinations are ExportError naming the option.
"""

from __future__ import annotations

import importlib.util
import shlex
import tempfile
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ram_edge.errors import ExportError, RamEdgeWarning
from ram_edge.fileio import refuse_existing

from .tensorrt_format import TrtBuildOptions


@dataclass
class ExportRequest:
    """What to export and how: the arguments of `export`, checked once."""

    source: str
    out: str
    format: str = "onnx"
    precision: str | None = None
    tags: Sequence[str] | None = None
    vocab: str | None = None  # an open-set vocabulary file (one tag per line, or RAM++ JSON tag -> descriptions)
    text_encoder: str | None = None  # for vocab: a local CLIP text model directory, or "minilm"
    vocab_threshold: float | None = None
    calib: str | None = None  # with precision int8 on a float checkpoint: PTQ on the way
    calib_size: int = 300
    trt: TrtBuildOptions = field(default_factory=TrtBuildOptions)
    device: str | None = None
    overwrite: bool = False

    def check(self) -> None:
        """ExportError for a combination that cannot be exported, naming the options."""
        if self.format not in FORMATS:
            raise ExportError(f"unknown export format {self.format!r}; valid: {', '.join(FORMATS)}")
        if self.tags is not None and not list(self.tags):
            raise ExportError("--tags names no tag; give the tags to keep")
        if (self.vocab is None) != (self.text_encoder is None):
            raise ExportError("--vocab and --text-encoder go together")
        if self.vocab and self.tags:
            raise ExportError("--vocab replaces the label set; it cannot be combined with --tags/--tags-file")
        if self.calib is not None:
            wanted = self.trt.precision if self.format == "trt" else self.precision
            if wanted != "int8":
                raise ExportError("--calib is for --precision int8 (post-training quantization on the way)")
            if self.tags or self.vocab:
                raise ExportError("--calib quantizes the whole model: it cannot be combined with --tags, --tags-file or --vocab")


def export(source: str | Path, out: str | Path, *, format: str = "onnx", precision: str | None = None,
           tags: Sequence[str] | None = None, vocab: str | Path | None = None, text_encoder: str | None = None,
           vocab_threshold: float | None = None, calib: str | Path | None = None, calib_size: int = 300,
           trt: TrtBuildOptions | None = None, device: str | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Export `source` (a checkpoint directory, or an ONNX / TensorRT bundle for format "trt") to a bundle at `out`;
    returns its manifest. `precision` for "trt" is the engine's (default fp16; `trt.precision` when given)."""
    options = trt or TrtBuildOptions()
    if format == "trt" and precision is not None:
        options = replace(options, precision=precision)
    request = ExportRequest(str(source), str(out), format, precision, list(tags) if tags is not None else None,
                            None if vocab is None else str(vocab), text_encoder, vocab_threshold,
                            None if calib is None else str(calib), calib_size, options, device, overwrite)
    request.check()
    return FORMATS[request.format](request)


def trt_options(precision: str | None = None, max_batch: int | None = None, opt_batch: int | None = None, *,
                dla_core: int | None = None, workspace_mb: int | None = None, timing_cache: str | None = None) -> TrtBuildOptions:
    """TensorRT build options with the defaults a user expects: batch 1..8 tuned for 1 (a camera); on a DLA one
    static batch (default 1), which TensorRT tunes for exactly."""
    max_batch = max_batch or (1 if dla_core is not None else 8)
    opt_batch = opt_batch or (max_batch if dla_core is not None else 1)
    if opt_batch > max_batch:
        raise ExportError(f"--opt-batch {opt_batch} is larger than --max-batch {max_batch}")
    return TrtBuildOptions(precision=precision or "fp16", max_batch=max_batch, opt_batch=opt_batch, workspace_mb=workspace_mb,
                           dla_core=dla_core, timing_cache=timing_cache)


def _export_checkpoint(request: ExportRequest) -> dict[str, Any]:
    """ONNX or OpenVINO bundle from a checkpoint directory (PTQ on the way with calib)."""
    if request.calib is not None:
        return export_int8_via_ptq(request.source, request.out, request.format, request.calib, request.calib_size, request.overwrite)
    from .writer import export_bundle

    vocab = vocab_embeddings(request.source, request.vocab, request.text_encoder, request.vocab_threshold) if request.vocab else None
    return export_bundle(request.source, request.out, fmt=request.format, precision=request.precision, tags=request.tags,
                         vocab=vocab, overwrite=request.overwrite)


def _export_trt(request: ExportRequest) -> dict[str, Any]:
    """A TensorRT bundle from an ONNX/TensorRT bundle, or from a checkpoint through a temporary ONNX bundle."""
    from ram_edge.runtimes.tensorrt_runtime import TensorRTRuntime

    from .tensorrt_format import build_trt_bundle

    if not TensorRTRuntime.is_installed():
        raise ExportError(f"--format trt needs TensorRT on this machine: {TensorRTRuntime.install_hint()}")
    options, model, output = request.trt, request.source, request.out
    if (Path(model) / "manifest.json").is_file():
        if request.tags or request.vocab or request.calib:
            raise ExportError("a bundle's label set and precision are fixed: --tags, --vocab and --calib apply when MODEL is a "
                              "checkpoint directory")
        return build_trt_bundle(model, output, options, device=request.device, overwrite=request.overwrite)
    refuse_existing(output, request.overwrite)  # before the ONNX export and the engine build
    require_torch_for_checkpoint(model, output, options.precision)
    with tempfile.TemporaryDirectory(prefix="ram-edge-trt-") as tmp:
        onnx_bundle = str(Path(tmp) / "onnx")
        if request.calib is not None:
            export_int8_via_ptq(model, onnx_bundle, "onnx", request.calib, request.calib_size, False)
        else:
            from ram_edge.checkpoint_dir import is_quantized, read_checkpoint_dir

            from .writer import export_bundle

            quantized = is_quantized(read_checkpoint_dir(model))
            if options.precision == "int8" and not quantized:
                raise ExportError(f"--format trt --precision int8 needs quantized activations: pass --calib PHOTOS/ (post-training "
                                  f"quantization on the way) or a checkpoint from `ram-edge quantize {model} -o Q --calib PHOTOS/`")
            if options.precision != "int8" and quantized:
                raise ExportError(f"{model} is quantized: build --precision int8 from it, or fp16 from the float checkpoint")
            vocab = vocab_embeddings(model, request.vocab, request.text_encoder, request.vocab_threshold) if request.vocab else None
            export_bundle(model, onnx_bundle, fmt="onnx", precision="int8" if quantized else "fp32", tags=request.tags, vocab=vocab)
        return build_trt_bundle(onnx_bundle, output, options, device=request.device, overwrite=request.overwrite)


# format -> exporter; `ram-edge export --format` offers these.
FORMATS: dict[str, Callable[[ExportRequest], dict[str, Any]]] = {
    "onnx": _export_checkpoint,
    "openvino": _export_checkpoint,
    "trt": _export_trt,
}


def require_torch_for_checkpoint(model: str, output: str, precision: str) -> None:
    """A checkpoint reaches TensorRT through an ONNX export, which needs torch: say how to go without it."""
    if not Path(model).is_dir():
        raise ExportError(f"{model}: no such bundle or checkpoint directory; give an ONNX bundle (a folder with manifest.json) "
                          f"or a checkpoint directory")
    try:
        missing = importlib.util.find_spec("torch") is None
    except (ImportError, ValueError):
        missing = True
    if missing:
        flag = "" if precision == "fp16" else f" --precision {precision}"
        raise ExportError(
            f"{model} is a checkpoint directory: turning it into an engine exports an ONNX bundle first, which needs torch "
            f"(pip install 'ram-edge[export]'). Without torch here, export the ONNX bundle on a machine with the [export] extra: "
            f"`ram-edge export {shlex.quote(model)} -o BUNDLE`, copy BUNDLE here and run "
            f"`ram-edge export BUNDLE --format trt{flag} -o {shlex.quote(output)}`"
        )


def export_int8_via_ptq(model: str, output: str, fmt: str, calib: str, calib_size: int, overwrite: bool) -> dict[str, Any]:
    """PTQ of a float checkpoint (1 in 5 photos held out for the check) into a temporary quantized checkpoint, then its
    INT8 bundle."""
    from ram_edge.checkpoint_dir import is_quantized, read_checkpoint_dir
    from ram_edge.quantize.calibration import load_calibration
    from ram_edge.quantize.config import QuantizeConfig
    from ram_edge.quantize.held_out import extra_images, held_out_check, record_held_out, split_held_out
    from ram_edge.quantize.quantizer import quantize_checkpoint

    from .writer import export_bundle

    info = read_checkpoint_dir(model)
    if is_quantized(info):
        raise ExportError(f"{model} is already quantized; export it without --calib")
    refuse_existing(output, overwrite)  # before minutes of calibration
    cfg = QuantizeConfig(method="ptq", calib_size=calib_size)
    data = load_calibration(calib, info.config.preprocess, calib_size + extra_images(cfg))
    if data.unreadable:
        warnings.warn(f"{data.unreadable} calibration image(s) could not be read and were skipped "
                      f"(first: {data.examples_unreadable[0]})", RamEdgeWarning, stacklevel=2)
    data, check = split_held_out(data, cfg)
    with tempfile.TemporaryDirectory(prefix="ram-edge-ptq-") as tmp:
        quantized = Path(tmp) / f"{Path(model).name}-ptq"
        quantize_checkpoint(model, quantized, cfg, data)
        if check is not None:  # recorded for export_bundle, which checks the written bundle on the same photos
            record_held_out(quantized, held_out_check(model, quantized, check, cfg))
        return export_bundle(quantized, output, fmt=fmt, precision="int8", overwrite=overwrite)


def vocab_embeddings(model: str, vocab: str, text_encoder: str, threshold: float | None) -> tuple[list[str], np.ndarray, float]:
    """(tags, embeddings, threshold) for an open-set vocabulary, in the checkpoint's label-query space."""
    from ram_edge.checkpoint_dir import read_checkpoint_dir
    from ram_edge.models.queries import vocab as vocab_mod
    from ram_edge.models.queries.space import MINILM, check_clip_space, minilm_vocab_embeddings

    info = read_checkpoint_dir(model)
    config = info.config
    names, descriptions = vocab_mod.read_vocab(vocab)
    threshold = vocab_mod.DEFAULT_OPEN_SET_THRESHOLD if threshold is None else threshold
    if text_encoder == MINILM:
        if descriptions:
            raise ExportError(f"{vocab}: tag descriptions need a CLIP text encoder; give one tag per line for --text-encoder minilm")
        return names, minilm_vocab_embeddings(info, names), threshold
    check_clip_space(info)
    encoder = vocab_mod.ClipTextEncoder(text_encoder)
    if config.family == "ram_plus":
        # The checkpoint's layout (des_per_class rows per tag), so the per-image mixing stays as trained;
        # a tag without descriptions repeats its prompt-ensemble embedding, which the mixing returns unchanged.
        embed = vocab_mod.description_embeddings(encoder, names, descriptions or {}, per_tag=config.des_per_class)
    else:
        if descriptions:
            raise ExportError(f"{vocab}: tag descriptions are for RAM++ models; {model} is a RAM model (give one tag per line)")
        embed = vocab_mod.tag_embeddings(encoder, names)
    return names, embed, threshold
