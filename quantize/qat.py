"""Quantization-aware fine-tuning (QAT): PTQ first, then the fake-quantized tagging graph is trained through
the ordinary training loop (`training/loop.py`: progress bar, atomic checkpoints, exact resume, torchrun).

The default loss needs no labels: the float model is a frozen teacher held by the trainer (as the CLIP
teacher is in training) and the quantized graph learns to reproduce its per-tag probabilities (binary KL
per tag, summed over tags, mean over images). Where the data has tags, `qat.tagging_weight` adds the
asymmetric tagging loss. The run directory holds the PTQ starting point (`ptq/`, itself a quantized
checkpoint), the training checkpoints and log; the result is written to the output directory as a
quantized checkpoint directory (method "qat") that export, eval and the torch runtime take like PTQ.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ram_edge.errors import QuantizeError
from ram_edge.fileio import refuse_existing
from ram_edge.models.quantized import load_quantized, nncf_output_to_stderr, tagging_graph
from ram_edge.training.config import DataConfig, LossConfig, OptimConfig, TrainConfig
from ram_edge.training.loop import Trainer, run_directory

from .calibration import CalibrationData, detect_kind
from .config import QATConfig, QuantizeConfig
from .quantizer import graph_state, quantization_record, quantize_checkpoint, write_quantized

PTQ_DIR = "ptq"
RUN_FILE = "qat_run.json"


def binary_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) of independent per-tag Bernoullis, summed over tags, mean over images; 0 when equal."""
    target = torch.sigmoid(teacher_logits)
    cross = F.binary_cross_entropy_with_logits(student_logits.float(), target, reduction="none")
    entropy = F.binary_cross_entropy_with_logits(teacher_logits.float(), target, reduction="none")
    return (cross - entropy).sum(1).mean()


def freeze_unused_parameters(graph: nn.Module, image_size: int) -> list[str]:
    """Stop training the parameters the tagging graph never reads (returns their names).

    The graph's label queries are precomputed constants, so `label_embed` and `wordvec_proj` get no gradient:
    harmless in one process, but torchrun's DistributedDataParallel waits for every parameter's gradient and
    stops the run. One forward and backward on a blank image finds them, whatever the model family.
    """
    emit = getattr(graph, "emit_logits", False)
    graph.emit_logits = True
    try:
        graph(torch.zeros(1, 3, image_size, image_size)).sum().backward()
    finally:
        graph.emit_logits = emit
    unused = [name for name, p in graph.named_parameters() if p.requires_grad and p.grad is None]
    for name, param in graph.named_parameters():
        if name in unused:
            param.requires_grad_(False)
        param.grad = None
    return unused


class QATModel(nn.Module):
    """The trainable wrapper the training loop sees: the fake-quantized tagging graph and its losses."""

    def __init__(self, graph: nn.Module, model_config, cfg: QATConfig) -> None:
        super().__init__()
        from ram_edge.training.losses import AsymmetricLoss

        self.graph = graph
        self.config = model_config
        self.family = model_config.family
        self.cfg = cfg
        tagging = LossConfig()
        self.asl = AsymmetricLoss(tagging.gamma_neg, tagging.gamma_pos, tagging.clip)

    def train(self, mode: bool = True) -> "QATModel":
        """The graph stays in eval mode: the student must match a deterministic teacher, and BatchNorm (the
        default model's stem) must keep its running statistics (in train mode it normalised with each
        batch's own and drifted: recall fell 4 points in a first run). Gradients flow either way."""
        super().train(mode)
        self.graph.eval()
        return self

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C) logits of the quantized graph."""
        self.graph.emit_logits = True
        try:
            return self.graph(images)
        finally:
            self.graph.emit_logits = False

    def forward_train(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """{'loss', 'distillation', 'tagging'} for one batch (terms with weight 0 omitted)."""
        logits = self.logits(batch["image"])
        out: dict[str, torch.Tensor] = {}
        total = torch.zeros((), device=logits.device)
        if self.cfg.distillation_weight > 0:
            out["distillation"] = binary_kl(logits, batch["teacher_logits"])
            total = total + self.cfg.distillation_weight * out["distillation"]
        if self.cfg.tagging_weight > 0:
            out["tagging"] = self.asl(logits, batch["target"]) / logits.shape[0]
            total = total + self.cfg.tagging_weight * out["tagging"]
        out["loss"] = total
        return out

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Probabilities (B, C)."""
        return self.graph(images)


class QATTrainer(Trainer):
    """The training loop with a quantized graph as the model and the float graph as a frozen teacher."""

    def __init__(self, model_dir: str | Path, out_dir: str | Path, qcfg: QuantizeConfig, train_cfg: TrainConfig,
                 calib: CalibrationData | None, *, progress: bool = True) -> None:
        from ram_edge.checkpoint_dir import read_checkpoint_dir

        self.model_dir = Path(model_dir)
        # The float checkpoint (weights, labels, config) that the quantized one carries.
        self.info_float = read_checkpoint_dir(self.model_dir)
        self.qcfg = qcfg
        self.calib = calib
        super().__init__(train_cfg, progress=progress)
        self.final_dir = Path(out_dir)

    def _build_model(self):
        from ram_edge.training.label_system import LabelSystem

        ptq = self.out / PTQ_DIR
        if self.dist.main and not ptq.is_dir():
            self.say(f"post-training quantization first (the starting point of QAT): {ptq}")
            quantize_checkpoint(self.model_dir, ptq, dataclasses.replace(self.qcfg, method="ptq"), self.calib)
        self.dist.barrier()
        graph, info = load_quantized(ptq)
        freeze_unused_parameters(graph, info.config.preprocess.image_size)
        self.ptq_record = info.source["quantization"]
        labels = info.labels
        system = LabelSystem(tags=list(labels.tags), synonyms=[[] for _ in labels.tags], tags_zh=labels.tags_zh,
                             thresholds=labels.thresholds)
        return QATModel(graph, info.config, self.qcfg.qat), system

    def _build_teachers(self) -> None:
        from ram_edge.models.checkpoint import load_checkpoint

        model, _ = load_checkpoint(self.model_dir)
        self.teacher = tagging_graph(model).to(self.dist.device)
        self.teacher.emit_logits = True
        self.teacher.requires_grad_(False)
        self.caption_embedder = None

    @torch.no_grad()
    def _add_targets(self, batch: dict[str, Any]) -> dict[str, Any]:
        batch["teacher_logits"] = self.teacher(batch["image"])
        return batch

    def finish(self) -> None:
        """Write the output directory only when the run is complete (a run stopped early resumes instead)."""
        if self.step >= self.cfg.total_steps:
            super().finish()
        else:
            self.dist.barrier()

    def export_checkpoint(self, path: Path) -> Path:
        """The fine-tuned quantized graph as a quantized checkpoint directory (method "qat")."""
        with nncf_output_to_stderr():
            state, nncf_config = graph_state(self.model.graph)
        data = self.cfg.data
        record = quantization_record(
            self.model_dir, self.info_float, self.qcfg, self.ptq_record.get("calibration"),
            qat={"steps": self.step, "data": {"kind": data.kind, "path": data.path}, "run_dir": str(self.out),
                 "loss": {"distillation_weight": self.qcfg.qat.distillation_weight,
                          "tagging_weight": self.qcfg.qat.tagging_weight}},
        )
        return write_quantized(path, self.info_float, record, state, nncf_config, overwrite=True)


def qat_train_config(qcfg: QuantizeConfig, data: str | Path, run_dir: str | Path) -> TrainConfig:
    """The training-loop configuration of a QAT run."""
    q = qcfg.qat
    data = Path(data)
    kind = detect_kind(data)
    data_cfg = DataConfig(kind=kind, path=str(data), num_workers=q.num_workers, crop_scale=q.crop_scale, hflip=q.hflip,
                          color_jitter=0.0, tags_from=q.tags_from,
                          samples_per_epoch=q.batch_size * q.steps if kind == "wds" else None)
    optim = OptimConfig(lr=q.lr, weight_decay=q.weight_decay, warmup_steps=q.warmup_steps, clip_grad=q.clip_grad)
    return TrainConfig(output_dir=str(run_dir), data=data_cfg, optim=optim, batch_size=q.batch_size, total_steps=q.steps,
                       amp=False, seed=qcfg.seed, checkpoint_every=q.checkpoint_every, keep_checkpoints=2,
                       eval_every=0, log_every=q.log_every, device=q.device)


def _check_tags_match(model_dir: str | Path, data: DataConfig, sample: int = 200) -> None:
    """The tagging loss needs data whose tags are the model's: refuse a label set that does not match."""
    from ram_edge.checkpoint_dir import read_checkpoint_dir
    from ram_edge.training.data import TargetBuilder, open_source
    from ram_edge.training.label_system import LabelSystem

    if data.kind == "wds":
        return  # streamed: checked by the loss itself (all-negative targets) rather than by reading shards twice
    labels = read_checkpoint_dir(model_dir).labels
    targets = TargetBuilder(LabelSystem(tags=list(labels.tags), synonyms=[[] for _ in labels.tags]), data.tags_from)
    source = open_source(data)
    count = min(len(source), sample)
    if not any(targets.ids(source.example(i)) for i in range(count)):
        raise QuantizeError(
            f"qat.tagging_weight is set but none of the first {count} examples has a tag of the model's label set "
            f"({data.path}, tags_from {data.tags_from!r}); give data labelled with the model's tags, or set qat.tagging_weight: 0 "
            f"(distillation needs no labels)"
        )


def quantization_aware_training(model_dir: str | Path, out_dir: str | Path, qcfg: QuantizeConfig, data: str | Path,
                                calib: CalibrationData | None, *, run_dir: str | Path | None = None, overwrite: bool = False,
                                progress: bool = True, stop_at: int | None = None) -> dict[str, Any]:
    """PTQ then QAT of the checkpoint at `model_dir`; resumes a run in `run_dir`; returns the last log record."""
    out_dir = Path(out_dir)
    run_dir = Path(run_dir) if run_dir is not None else out_dir.with_name(out_dir.name + ".qat-run")
    refuse_existing(out_dir, overwrite)  # before PTQ and training, not at the end
    train_cfg = qat_train_config(qcfg, data, run_dir)
    if qcfg.qat.tagging_weight > 0:
        _check_tags_match(model_dir, train_cfg.data)
    identity = {"model": str(Path(model_dir).resolve()), "data": str(Path(data).resolve()), "config": json.loads(json.dumps(qcfg.to_dict()))}
    with run_directory(run_dir, "pass another --run-dir (and -o)"):
        run_file = run_dir / RUN_FILE
        if run_file.is_file():
            previous = json.loads(run_file.read_text(encoding="utf-8"))
            if previous != identity:
                changed = sorted(k for k in identity if previous.get(k) != identity[k])
                raise QuantizeError(f"{run_dir} holds a QAT run of another setup ({', '.join(changed)} differ); "
                                    f"pass --run-dir with a new folder, or delete {run_dir} to start over")
        else:
            run_dir.mkdir(parents=True, exist_ok=True)
            run_file.write_text(json.dumps(identity, indent=1), encoding="utf-8")
        trainer = QATTrainer(model_dir, out_dir, qcfg, train_cfg, calib, progress=progress)
        try:
            return trainer.train(resume=True, stop_at=stop_at)
        finally:
            trainer.dist.close()
