"""ONNX export (legacy TorchScript exporter, opset 17, dynamic batch), fp32 or fp16, validated with onnxruntime."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from ram_edge.errors import ExportError

from .onnx_file import onnx_files, save_onnx
from .validate import validate_outputs
from .writer import FormatResult

INPUT, OUTPUT = "images", "probs"
OPSET = 17


def write_onnx(graph: torch.nn.Module, path: Path, image_size: int) -> None:
    """Export `graph` to an fp32 ONNX file with a dynamic batch axis."""
    # The dynamo exporter fixes the batch to the example's size or breaks a Reshape at batch > 1;
    # the legacy exporter with opset 17 keeps a correct dynamic batch (validated at batch 1 and 3).
    dummy = torch.zeros(1, 3, image_size, image_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph, (dummy,), str(path), dynamo=False, opset_version=OPSET,
            input_names=[INPUT], output_names=[OUTPUT],
            dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}}, do_constant_folding=True,
        )


# LayerNorm/Softmax statistics in fp16 lose too much: these ops stay float32.
FP16_KEPT_FLOAT = ("LayerNormalization", "ReduceMean", "Softmax", "Identity")


def unshare_kept_float_initializers(graph, kept_float=FP16_KEPT_FLOAT) -> None:
    """Let onnxconverter's fp16 pass type every initializer right: read constants through Identity directly, and give
    the float32 ops their own copy of an initializer that converted ops read too."""
    from onnx import TensorProto

    from .onnx_graph import consumers, initializer_aliases, remove_nodes

    # The exporter writes a second use of one weight as an Identity of it (a LayerNorm bias used twice, or equal
    # weights deduplicated: an untrained model's all-zero position-bias tables). The fp16 pass leaves such an
    # initializer float32 once any reader stays float32, yet converts the other readers without a Cast, and
    # onnxruntime refuses the graph.
    initializers = {init.name: init for init in graph.initializer}
    alias = initializer_aliases(graph)
    if alias:
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name in alias:
                    node.input[i] = alias[name]
        remove_nodes(graph, set())
    float_types = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}
    for name, readers in consumers(graph).items():
        init = initializers.get(name)
        if init is None or init.data_type not in float_types:
            continue
        kept = [n for n in readers if n.op_type in kept_float]
        if kept and len(kept) < len(readers):
            copy = graph.initializer.add()
            copy.CopyFrom(init)
            copy.name = f"{name}_float32"
            for node in kept:
                for i, input_name in enumerate(node.input):
                    if input_name == name:
                        node.input[i] = copy.name


def to_fp16(model):
    """An ONNX model with its weights and arithmetic in fp16, keeping float32 inputs and outputs."""
    from onnxconverter_common import float16

    unshare_kept_float_initializers(model.graph)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one warning per weight too small for fp16: noise
        return float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=list(FP16_KEPT_FLOAT))


PRECISIONS = ("fp32", "fp16", "int8", "int8-weights")


def write_model_onnx(graph: torch.nn.Module, path: Path, precision: str, image_size: int, for_openvino: bool = False) -> None:
    """The ONNX file of a bundle in `precision`: fp32, fp16, int8 (Q/DQ from an NNCF-quantized graph) or
    int8-weights (a float graph whose weights are stored in 8 bit, computed in float); `for_openvino`: the
    intermediate ONNX of an OpenVINO IR."""
    if precision not in PRECISIONS:
        raise ExportError(f"precision {precision!r} is not supported by the onnx exporter; use fp32, fp16 or int8")
    if precision == "int8":
        from .int8 import write_int8_onnx

        # OpenVINO folds the slices of RAM++'s 8-bit embeddings into stored copies (Swin-B/384 INT8 IR: 26% -> 39%
        # of fp32) and needs no slicing to avoid a float copy of them.
        write_int8_onnx(graph, path, image_size, for_openvino=for_openvino)
        return
    write_onnx(graph, path, image_size)
    if for_openvino and precision == "fp32":
        return
    import onnx

    from .query_chunks import chunk_label_queries
    from .swin_chunks import chunk_swin_stages

    # One load and one save for what follows the export (a full-size fp32 graph is close to 1 GB).
    model = onnx.load(str(path))
    if not for_openvino:
        chunk_label_queries(model.graph)
        if precision == "fp32":
            # fp16 and 8-bit-weight graphs stay whole: neither form is measured for memory at batch 8 (a chunked
            # fp16 graph converts and validates since the fp16 pass unshares initializers, but its speed is unmeasured).
            chunk_swin_stages(model)
    if precision == "fp16":
        model = to_fp16(model)
    elif precision == "int8-weights":
        from .int8 import compress_weights

        compress_weights(model.graph)
    save_onnx(model, path)


def export(graph: torch.nn.Module, directory: Path, precision: str, image_size: int, device: str | None = None,
           reference: torch.nn.Module | None = None) -> FormatResult:
    """Write model.onnx into `directory` and validate it with onnxruntime on the CPU against `reference` (default: graph)."""
    import onnxruntime as ort

    path = directory / "model.onnx"
    write_model_onnx(graph, path, precision, image_size)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    # onnxruntime computes the graph in its own types: what it validates is what users run.
    report = validate_outputs(reference if reference is not None else graph, lambda x: session.run([OUTPUT], {INPUT: x})[0],
                              image_size, precision, OUTPUT, runtime="onnxruntime CPU",
                              compute_precision="fp32" if precision == "int8-weights" else precision)
    return FormatResult(files=onnx_files(path), input_name=INPUT, output_name=OUTPUT, validation=report,
                        queries="folded into the graph as constants")
