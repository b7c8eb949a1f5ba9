"""Which quantized operations move the outputs: one PTQ, then each operation's quantizers enabled alone.

The reference is the same NNCF graph with every quantizer disabled (SmoothQuant's rescaling is exact in
float), so each row measures only the rounding that operation's weight and input quantizers add. Rows are
grouped by NNCF node name, which is what `ignored_patterns` in the quantization config matches: the
suggested patterns keep the most sensitive operations in float in the next `ram-edge quantize` run.
"""

from __future__ import annotations

import re
import sys
from typing import Any

import numpy as np
import torch

from ram_edge.labels import LabelSet, tag_set_f1

KEEP_FLOAT = (1, 3, 5, 10)


def _op_of(key: str) -> str:
    """The NNCF node a quantizer belongs to, from its hook-storage name.

    pre_hooks.<op>__<port>: an input (weight or activation) of <op>; post_hooks.<op>__<port>: the output of
    <op>, except SmoothQuant's scaling multiply `<...>/pre_hook__<op with - for />__<port>[i]/mul/<n>`,
    which is the input of the operation it smooths.
    """
    name = key.split("pre_hooks.", 1)[-1] if ".pre_hooks." in key else key.split("post_hooks.", 1)[-1]
    smooth = re.search(r"pre_hook__(.+?)__\d+\[\d+\]/mul/\d+", name)
    if smooth:
        return smooth.group(1).replace("-", "/")
    return name.rsplit("__", 1)[0]


def quantizer_groups(graph: torch.nn.Module) -> dict[str, list[torch.nn.Module]]:
    """Quantizer modules of an NNCF graph, by the operation they quantize (graph order)."""
    from nncf.torch.quantization.layers import BaseQuantizer

    groups: dict[str, list[torch.nn.Module]] = {}
    for key, module in graph.named_modules():
        if isinstance(module, BaseQuantizer):
            groups.setdefault(_op_of(key), []).append(module)
    return groups


def _set(modules, enabled: bool) -> None:
    for module in modules:
        (module.enable_quantization if enabled else module.disable_quantization)()


def _movement(reference: np.ndarray, probs: np.ndarray, labels: LabelSet) -> dict[str, float]:
    diff = np.abs(probs - reference)
    f1 = tag_set_f1(labels.fired(reference), labels.fired(probs))
    return {"mean_abs_diff": float(diff.mean()), "max_abs_diff": float(diff.max()), "tag_set_f1": float(f1.mean())}


@torch.no_grad()
def sensitivity_report(graph: torch.nn.Module, images: np.ndarray, labels: LabelSet, *, batch_size: int = 16,
                       progress: bool = True) -> dict[str, Any]:
    """Per-operation output movement of a PTQ graph on `images`, and the whole model with the worst kept in float."""
    from tqdm import tqdm

    groups = quantizer_groups(graph)
    everything = [m for ms in groups.values() for m in ms]

    def run() -> np.ndarray:
        return np.concatenate([graph(torch.from_numpy(images[i:i + batch_size])).numpy()
                               for i in range(0, len(images), batch_size)])

    try:
        _set(everything, False)
        reference = run()
        rows = []
        for op, modules in tqdm(groups.items(), desc="sensitivity", unit="op", file=sys.stderr, disable=None if progress else True,
                                leave=False):
            _set(modules, True)
            rows.append({"op": op, "quantizers": len(modules), **_movement(reference, run(), labels)})
            _set(modules, False)
        rows.sort(key=lambda r: -r["mean_abs_diff"])
        _set(everything, True)
        whole = [{"kept_in_float": 0, **_movement(reference, run(), labels)}]
        for k in KEEP_FLOAT:
            if k >= len(rows):
                break
            for row in rows[:k]:
                _set(groups[row["op"]], False)
            whole.append({"kept_in_float": k, **_movement(reference, run(), labels)})
            _set(everything, True)
    finally:
        _set(everything, True)
    return {
        "images": int(len(images)),
        "reference": "the same graph with every quantizer disabled (float)",
        "ops": rows,
        "whole_model": whole,
        "suggested_ignored_patterns": {str(k): [f"^{re.escape(r['op'])}$" for r in rows[:k]] for k in KEEP_FLOAT if k < len(rows)},
    }


def format_report(report: dict[str, Any], top: int = 15) -> str:
    """The report as a plain-text table (most sensitive operations first)."""
    lines = [f"sensitivity on {report['images']} calibration images (each operation quantized alone; reference: float)",
             f"{'operation':48s} {'mean|dp|':>9s} {'max|dp|':>8s} {'tag F1':>7s}"]
    for row in report["ops"][:top]:
        lines.append(f"{row['op'][:48]:48s} {row['mean_abs_diff']:9.2e} {row['max_abs_diff']:8.4f} {row['tag_set_f1']:7.4f}")
    if len(report["ops"]) > top:
        lines.append(f"... {len(report['ops']) - top} more operations in sensitivity.json")
    lines.append("whole model:")
    for row in report["whole_model"]:
        lines.append(f"  worst {row['kept_in_float']:2d} kept in float: mean|dp| {row['mean_abs_diff']:.2e}, max|dp| "
                     f"{row['max_abs_diff']:.4f}, tag-set F1 {row['tag_set_f1']:.4f}")
    lines.append("to keep the worst N in float, put sensitivity.json's suggested_ignored_patterns[N] in the config's ignored_patterns")
    return "\n".join(lines)
