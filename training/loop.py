"""The training loop: AdamW + warmup/cosine, gradient accumulation, AMP on CUDA, clipping,
torchrun DDP (gloo on CPU, NCCL on GPU), atomic checkpoints, exact resume, JSONL log, eval."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from ram_edge.dir_lock import exclusive_directory
from ram_edge.errors import ConfigError
from ram_edge.fileio import atomic_dir, atomic_file
from ram_edge.labels import DEFAULT_THRESHOLD

from .config import TrainConfig
from .data import (
    EvalTransform, MapDataset, ResumableSampler, ShardStream, TargetBuilder, TrainTransform, collate, expand_shards, open_source,
)
from .model import TrainForward
from .setup_model import build_training_model, describe_model

STATE_FILE = "train_state.pt"
LATEST = "latest"
# Test hook: hard-exit (no cleanup) right after this optimizer step, to prove exact resume.
CRASH_ENV = "RAM_EDGE_TRAIN_CRASH_AFTER_STEP"
# Skipped images named on the console; all of them are listed in the run's skipped_images.tsv.
SKIPPED_NAMED = 5
# Samples read without one readable image after which a run stops (a wrong data.image_root, not bad luck).
NO_IMAGE_LIMIT = 256


class Distributed:
    """Rank/world from torchrun's environment; a no-op for a single process."""

    def __init__(self, device_pref: str = "auto") -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = torch.cuda.is_available() and device_pref in ("auto", "cuda")
        self.device = torch.device(f"cuda:{self.local_rank}" if use_cuda else "cpu")
        if use_cuda:
            torch.cuda.set_device(self.device)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if use_cuda else "gloo")

    @property
    def main(self) -> bool:
        """True on rank 0."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.world > 1:
            dist.barrier()

    def mean(self, value: float) -> float:
        """Average a float over ranks."""
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        return float(t.item()) / self.world

    def any(self, flag: bool) -> bool:
        """True where `flag` is true on any rank."""
        if self.world == 1:
            return flag
        t = torch.tensor([int(flag)], dtype=torch.int32, device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def close(self) -> None:
        """Tear down the process group."""
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


class _Stream(torch.utils.data.IterableDataset):
    """A ShardStream as DataLoader's iterable dataset (training/data.py defines it without importing torch)."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def __iter__(self):
        return iter(self.stream)


def lr_lambda(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup then cosine decay to min_ratio."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def param_groups(model: torch.nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """No weight decay for norms, biases and position tables; per-prefix learning-rate multipliers."""
    groups: dict[tuple[float, float], list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = 0.0 if (param.ndim <= 1 or name.endswith(".bias") or "relative_position_bias_table" in name) else cfg.optim.weight_decay
        mult = next((m for prefix, m in cfg.optim.lr_mult.items() if name.startswith(prefix)), 1.0)
        groups.setdefault((decay, mult), []).append(param)
    return [{"params": ps, "weight_decay": d, "lr": cfg.optim.lr * m} for (d, m), ps in groups.items()]


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    return {
        "python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None, "sampler": generator.get_state(),
    }


def _set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    generator.set_state(state["sampler"])


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run, if any."""
    pointer = output_dir / "checkpoints" / LATEST
    if not pointer.is_file():
        return None
    path = output_dir / "checkpoints" / pointer.read_text().strip()
    return path if (path / STATE_FILE).is_file() else None


def checkpoint_step(path: Path) -> int:
    """The step a checkpoint folder (checkpoints/step-00000300) was written at."""
    return int(path.name.rsplit("-", 1)[-1])


class Trainer:
    """One training run (single process or one rank of torchrun)."""

    def __init__(self, cfg: TrainConfig, *, progress: bool = True) -> None:
        self.cfg = cfg
        self.dist = Distributed(cfg.device)
        self.out = Path(cfg.output_dir)
        self.progress = progress and self.dist.main
        self._bar = None
        torch.manual_seed(cfg.seed)  # same initial weights on every rank
        np.random.seed(cfg.seed)
        random.seed(cfg.seed)
        self.model, self.labels = self._build_model()
        self.model.to(self.dist.device)
        self._build_teachers()
        # Where finish() writes the inference checkpoint directory.
        self.final_dir = self.out / "model"
        self.engine: torch.nn.Module = TrainForward(self.model)
        if self.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.dist.device.index] if self.dist.device.type == "cuda" else None
            self.engine = DDP(self.engine, device_ids=ids)
        self.optimizer = torch.optim.AdamW(param_groups(self.model, cfg), lr=cfg.optim.lr, betas=cfg.optim.betas)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_lambda(s, cfg.optim.warmup_steps, cfg.total_steps, cfg.optim.min_lr_ratio)
        )
        self.amp = cfg.amp and self.dist.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.generator = torch.Generator().manual_seed(cfg.seed + 1)
        self.step = self.epoch = self.batches_in_epoch = 0
        self.skipped = 0
        self.skipped_listed = 0  # lines in skipped_file(); restored on resume so that replayed steps do not repeat
        self._skipped_keys: set[str] = set()  # each unreadable image is listed once, not once per epoch
        self._first_skipped: tuple[str, str] | None = None  # named when no image at all can be read
        self._build_data()

    def _build_model(self) -> tuple[torch.nn.Module, Any]:
        """(model with `forward_train`, `predict` and `config`, label system); quantization-aware training overrides it."""
        return build_training_model(self.cfg)

    # ------------------------------------------------------------ frozen teachers
    def _build_teachers(self) -> None:
        """The CLIP image teacher and the caption text encoder, when the losses need them."""
        from .teachers import ClipImageTeacher, CaptionEmbedder

        loss = self.cfg.loss
        self.teacher = None
        if loss.distillation.startswith("clip:"):
            self.teacher = ClipImageTeacher(loss.distillation, self.model.config.preprocess, self.dist.device)
        self.caption_embedder = None
        if loss.alignment:
            space = self.model.query_space
            kind = loss.alignment_text_encoder or space.text_encoder
            self.caption_embedder = CaptionEmbedder(kind, space.center, space.scale, self.dist.device)

    def _add_targets(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Teacher image embeddings and caption embeddings for this batch (computed without gradient)."""
        if self.teacher is not None:
            batch["teacher"] = self.teacher(batch["image"])
        if self.caption_embedder is not None:
            batch["text_embed"] = self.caption_embedder(batch["caption"])
        return batch

    # ------------------------------------------------------------ data
    def _build_data(self) -> None:
        cfg, d = self.cfg, self.cfg.data
        pre = self.model.config.preprocess
        transform = TrainTransform(pre, d.crop_scale, d.hflip, d.color_jitter)
        self.targets = TargetBuilder(self.labels, d.tags_from)
        if d.kind == "wds":
            shards = expand_shards(d.path)
            if not d.samples_per_epoch:
                raise ConfigError("data.kind 'wds' needs data.samples_per_epoch (streams have no length; every rank reads that many / world)")
            per_rank = d.samples_per_epoch // self.dist.world
            self.dataset = ShardStream(shards, transform, self.targets, cfg.seed, per_rank, self.dist.rank, self.dist.world,
                                       cfg.batch_size, d.shuffle_buffer)
            self.sampler = None
            self.batches_per_epoch = per_rank // cfg.batch_size
        else:
            source = open_source(d)
            self.dataset = MapDataset(source, transform, self.targets, cfg.seed)
            self.sampler = ResumableSampler(len(source), self.dist.rank, self.dist.world, cfg.seed)
            self.batches_per_epoch = self.sampler.per_rank() // cfg.batch_size
        if self.batches_per_epoch < 1:
            samples = d.samples_per_epoch if d.kind == "wds" else len(source)
            world = f" over {self.dist.world} processes" if self.dist.world > 1 else ""
            raise ConfigError(f"data.path {d.path}: {samples} sample(s){world}, fewer than one batch of {cfg.batch_size} "
                              "per process; lower batch_size or add data")

    def _loader(self):
        cfg = self.cfg
        start = self.batches_in_epoch
        if self.sampler is not None:
            self.sampler.set_epoch(self.epoch, start * cfg.batch_size)
            return DataLoader(self.dataset, batch_size=cfg.batch_size, sampler=self.sampler, collate_fn=collate,
                              num_workers=cfg.data.num_workers, drop_last=True, persistent_workers=False)
        self.dataset.set_epoch(self.epoch, start)
        return DataLoader(_Stream(self.dataset), batch_size=cfg.batch_size, collate_fn=collate,
                          num_workers=cfg.data.num_workers)

    # ------------------------------------------------------------ console and skipped images
    def say(self, message: str) -> None:
        """One line on stderr (rank 0, when progress is on), above the progress bar if one is shown."""
        if not self.progress:
            return
        if self._bar is not None and not self._bar.disable:
            self._bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    @property
    def skipped_file(self) -> Path:
        """Every image this rank skipped as unreadable, one `key<TAB>reason` line each (once per image)."""
        return self.out / ("skipped_images.tsv" if self.dist.world == 1 else f"skipped_images.rank{self.dist.rank}.tsv")

    def _note_skipped(self, items: list[tuple[str, str]]) -> None:
        if not items:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.skipped_file, "a", encoding="utf-8") as fh:
            for key, reason in items:
                if key in self._skipped_keys:
                    continue
                self._skipped_keys.add(key)
                self._first_skipped = self._first_skipped or (key, reason)
                fh.write(f"{key}\t{' '.join(reason.split())}\n")
                self.skipped_listed += 1
                if self.skipped_listed <= SKIPPED_NAMED:
                    self.say(f"skipped unreadable image {key}: {reason}")
                if self.skipped_listed == SKIPPED_NAMED:
                    self.say(f"further skipped images are not shown; all are listed in {self.skipped_file}")

    def _no_readable_image(self, samples: int) -> ConfigError:
        example = f"e.g. {self._first_skipped[0]}: {self._first_skipped[1]}; " if self._first_skipped else ""
        where = f"data.path {self.cfg.data.path}"
        if self.dist.world > 1:  # every rank skips a batch that is empty on any rank: this one may have read its own
            what = (f"in the first {samples} samples per process of {where}, no batch had a readable image on every one of "
                    f"the {self.dist.world} processes")
        else:
            what = f"none of the first {samples} samples of {where} could be read"
        return ConfigError(f"{what} ({example}this process's skipped images are listed in {self.skipped_file}); check the "
                           "image paths and data.image_root")

    def _truncate_skipped(self) -> None:
        # Steps after the checkpoint are replayed: drop what they had listed.
        path = self.skipped_file
        if not path.is_file():
            return
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        if len(lines) > self.skipped_listed:
            lines = lines[: self.skipped_listed]
            with atomic_file(path, "w") as fh:
                fh.writelines(lines)
        self._skipped_keys = {line.split("\t", 1)[0] for line in lines}

    # ------------------------------------------------------------ checkpoints
    def save(self) -> Path | None:
        """Write the full training state atomically (rank 0); every rank waits for it."""
        path = None
        # Every rank lists its own skipped images; the checkpoint records how many each had listed.
        if self.dist.world > 1:
            listed: list[int] = [0] * self.dist.world
            dist.all_gather_object(listed, self.skipped_listed)
        else:
            listed = [self.skipped_listed]
        if self.dist.main:
            ckpt_root = self.out / "checkpoints"
            name = f"step-{self.step:08d}"
            path = ckpt_root / name
            state = {
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "step": self.step, "epoch": self.epoch, "batches_in_epoch": self.batches_in_epoch,
                "skipped": self.skipped, "skipped_listed": listed, "rng": _rng_state(self.generator),
                "config": self.cfg.to_dict(), "world": self.dist.world,
            }
            with atomic_dir(path, overwrite=True) as tmp:
                torch.save(state, tmp / STATE_FILE)
            with atomic_file(ckpt_root / LATEST, "w") as fh:
                fh.write(name)
            old = sorted(p for p in ckpt_root.glob("step-*") if p.is_dir() and p.name != name)
            for stale in old[: max(0, len(old) - (self.cfg.keep_checkpoints - 1))]:
                shutil.rmtree(stale, ignore_errors=True)
        self.dist.barrier()
        return path

    def resume(self, path: Path) -> None:
        """Restore model, optimizer, scheduler, step, data position and RNG from a checkpoint."""
        # Our own checkpoint: it holds RNG states (numpy/python objects), so weights_only is off.
        state = torch.load(path / STATE_FILE, map_location=self.dist.device, weights_only=False)
        if state.get("world", 1) != self.dist.world:
            raise ConfigError(
                f"{path} was written by a run with {state.get('world')} processes; resume with the same number "
                f"(data order is split per process)"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch, self.batches_in_epoch = state["step"], state["epoch"], state["batches_in_epoch"]
        self.skipped = state.get("skipped", 0)
        self.skipped_listed = list(state.get("skipped_listed", [0] * self.dist.world))[self.dist.rank]
        self._truncate_skipped()
        _set_rng_state(state["rng"], self.generator)

    # ------------------------------------------------------------ loop
    def log(self, record: dict[str, Any]) -> None:
        """Append one JSON line to log.jsonl (rank 0)."""
        if not self.dist.main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "log.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")

    def train(self, resume: bool = True, stop_at: int | None = None) -> dict[str, Any]:
        """Run until cfg.total_steps (or stop_at, keeping the schedule of total_steps); returns the last log record."""
        cfg = self.cfg
        # A run split into sessions stops at a checkpoint and resumes there with the same schedule.
        end = cfg.total_steps if stop_at is None else min(stop_at, cfg.total_steps)
        if resume and (ckpt := latest_checkpoint(self.out)) is not None:
            self.resume(ckpt)
            self.log({"event": "resumed", "from": str(ckpt), "step": self.step})
            self.say(f"resuming from {ckpt} at step {self.step} of {cfg.total_steps} (epoch {self.epoch})")
        else:
            self.skipped_file.unlink(missing_ok=True)  # a fresh run lists its own skipped images
            if self.dist.main:
                self.out.mkdir(parents=True, exist_ok=True)
                (self.out / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
                self.log({"event": "start", "model": json.loads(describe_model(self.model)), "world": self.dist.world})
            self.say(f"training {describe_model(self.model)} for {cfg.total_steps} steps into {self.out}")
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=cfg.total_steps, initial=self.step, unit="step", file=sys.stderr, disable=None, dynamic_ncols=True)
        self._bar = bar
        # Without a terminal the bar is off: a line per log record keeps a redirected log informative.
        log_lines = bar is None or bar.disable
        crash_after = int(os.environ.get(CRASH_ENV, "0") or 0)
        record: dict[str, Any] = {}
        sums: dict[str, float] = {}
        images, window, tick = 0, 0, time.perf_counter()
        self.model.train()
        while self.step < end:
            micro = 0
            seen = used = 0  # batches of this epoch read by this process, and those with a readable image
            for batch in self._loader():
                self.batches_in_epoch += 1
                self.skipped += batch["skipped"]
                self._note_skipped(batch.get("skipped_keys", []))
                seen += 1
                # A batch with no readable image is skipped by every rank: DDP's gradient all-reduce needs them all.
                if self.dist.any(batch["size"] == 0):
                    if not used and seen * cfg.batch_size >= NO_IMAGE_LIMIT:
                        raise self._no_readable_image(seen * cfg.batch_size)
                    continue
                used += 1
                batch = {k: (v.to(self.dist.device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
                batch = self._add_targets(batch)
                last_micro = micro + 1 == cfg.grad_accum
                sync = self.engine.no_sync() if (self.dist.world > 1 and not last_micro) else contextlib.nullcontext()
                with sync, torch.autocast("cuda", dtype=torch.float16, enabled=self.amp):
                    losses = self.engine(batch, self.generator)
                    loss = losses["loss"] / cfg.grad_accum
                self.scaler.scale(loss).backward()
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
                images += batch["size"]
                micro += 1
                if micro < cfg.grad_accum:
                    continue
                micro = 0
                if cfg.optim.clip_grad:
                    self.scaler.unscale_(self.optimizer)
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.clip_grad)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
                self.step += 1
                window += 1
                if bar is not None:
                    bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == end:
                    elapsed = time.perf_counter() - tick
                    # Steps since the last record: fewer than log_every right after a resume.
                    n = window * cfg.grad_accum
                    record = {"step": self.step, "epoch": self.epoch, "lr": self.scheduler.get_last_lr()[0],
                              **{k: self.dist.mean(v / n) for k, v in sums.items()},
                              "images_per_s": images * self.dist.world / max(elapsed, 1e-9), "skipped": self.skipped}
                    self.log(record)
                    if bar is not None:
                        bar.set_postfix(loss=f"{record.get('loss', 0):.4g}")
                    if log_lines:
                        self.say(f"step {self.step}/{cfg.total_steps}: loss {record.get('loss', float('nan')):.4g}, "
                                 f"lr {record['lr']:.3g}, {record['images_per_s']:.1f} images/s"
                                 + (f", {self.skipped} skipped" if self.skipped else ""))
                    sums, images, window, tick = {}, 0, 0, time.perf_counter()
                if cfg.eval_every and self.step % cfg.eval_every == 0:
                    result = self.evaluate()
                    self.log({"step": self.step, **result})
                    if result:
                        self.say(f"step {self.step}: eval mAP {result['eval_map']:.2f} on {result['eval_images']} images")
                    self.model.train()
                if self.step % cfg.checkpoint_every == 0 or self.step == end:
                    saved = self.save()
                    if saved is not None:
                        self.say(f"step {self.step}: checkpoint {saved}")
                if crash_after and self.step == crash_after:
                    os._exit(17)
                if self.step >= end:
                    break
            else:
                # A whole epoch (of fewer than NO_IMAGE_LIMIT samples) without one readable image. (A run resumed
                # at the end of an epoch reads nothing here, rightly.)
                if seen and not used:
                    raise self._no_readable_image(seen * cfg.batch_size)
                self.epoch += 1
                self.batches_in_epoch = 0
        if bar is not None:
            bar.close()
        self._bar = None
        self.finish()
        if self.skipped:
            self.say(f"{self.skipped} unreadable image(s) were skipped; listed in {self.skipped_file}")
        if self.step >= cfg.total_steps:
            self.say(f"finished at step {self.step}: model written to {self.final_dir}")
            untuned = self._default_thresholds()
            if untuned:
                model = self.final_dir
                self.say(f"{untuned} of {len(self.labels.tags)} tags have the default threshold {DEFAULT_THRESHOLD:g}; tune them on "
                         f"held-out data: ram-edge eval {model} DATA --tune-thresholds {model / 'thresholds.txt'}")
        else:
            self.say(f"stopped at step {self.step} of {cfg.total_steps}; run the same command without --stop-at to go on")
        return record

    # ------------------------------------------------------------ evaluation and export
    @torch.no_grad()
    def evaluate(self, max_images: int | None = None) -> dict[str, Any]:
        """mAP on cfg.eval_data (rank 0 computes; other ranks wait)."""
        from .metrics import mean_average_precision

        result: dict[str, Any] = {}
        if self.dist.main and self.cfg.eval_data is not None:
            self.model.eval()
            source = open_source(self.cfg.eval_data)
            transform = EvalTransform(self.model.config.preprocess)
            targets = TargetBuilder(self.labels, self.cfg.eval_data.tags_from)
            scores, truth = [], []
            count = len(source) if max_images is None else min(len(source), max_images)
            batch_imgs, batch_t = [], []
            for i in range(count):
                example = source.example(i)
                try:
                    batch_imgs.append(transform(example.load()))
                except Exception:  # noqa: BLE001 - an unreadable eval image is skipped, never fatal
                    continue
                batch_t.append(targets(example))
                if len(batch_imgs) == self.cfg.batch_size or i == count - 1:
                    x = torch.from_numpy(np.stack(batch_imgs)).to(self.dist.device)
                    scores.append(self.model.predict(x).float().cpu().numpy())
                    truth.append(np.stack(batch_t))
                    batch_imgs, batch_t = [], []
            if scores:
                result = {"eval_map": 100 * float(mean_average_precision(np.concatenate(scores), np.concatenate(truth))),
                          "eval_images": int(sum(len(s) for s in scores))}
        self.dist.barrier()
        return result

    def finish(self) -> None:
        """Save the inference checkpoint directory (output_dir/model) and check rank agreement."""
        checksum = hashlib.sha256()
        for name, tensor in sorted(self.model.state_dict().items()):
            checksum.update(name.encode())
            checksum.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        digest = checksum.hexdigest()
        if self.dist.world > 1:
            gathered: list[str] = [""] * self.dist.world
            dist.all_gather_object(gathered, digest)
        else:
            gathered = [digest]
        if self.dist.main:
            (self.out / "rank_checksums.json").write_text(json.dumps(gathered))
            self.export_checkpoint(self.final_dir)
            self.log({"event": "finished", "step": self.step, "ranks_identical": len(set(gathered)) == 1, "skipped": self.skipped})
        self.dist.barrier()

    def _default_thresholds(self) -> int:
        """How many tags got no threshold from the label file or the initial checkpoint."""
        th = self.labels.thresholds
        return len(self.labels.tags) if th is None else int(np.isnan(th).sum())

    def _query_space(self) -> dict[str, Any]:
        """How text embeddings became label queries, so that export (and a later fine-tuning) embeds new tags the same way."""
        return self.model.query_space.to_record()

    def export_checkpoint(self, path: Path) -> Path:
        """The trained model as an ordinary checkpoint directory (captioning weights kept aside)."""
        from ram_edge.models import RAM
        from ram_edge.models.checkpoint import save_checkpoint

        inference = RAM(self.model.config)
        inference.load_state_dict(self.model.inference_state_dict(), strict=True)
        extra = self.model.captioning_state_dict() or None
        return save_checkpoint(inference.eval(), self.labels.to_label_set(), path, overwrite=True,
                               source={"kind": "trained", "steps": self.step, "config": self.cfg.to_dict(),
                                       "label_queries": self._query_space()},
                               extra_tensors=extra)


def train(cfg: TrainConfig, *, resume: bool = True, progress: bool = True, stop_at: int | None = None) -> dict[str, Any]:
    """Train (or resume) a run described by `cfg`, optionally stopping early at step `stop_at`."""
    with run_directory(cfg.output_dir, "give this run another output_dir (--output-dir)"):
        trainer = Trainer(cfg, progress=progress)
        try:
            return trainer.train(resume=resume, stop_at=stop_at)
        finally:
            trainer.dist.close()


def run_directory(path: str | Path, hint: str) -> contextlib.AbstractContextManager:
    """The run directory held by this run for its whole length (by rank 0 under torchrun: the ranks of one run share
    it), so that a second run started on it fails at once instead of overwriting checkpoints."""
    if int(os.environ.get("RANK", "0")) != 0:
        return contextlib.nullcontext(Path(path))
    return exclusive_directory(path, hint)


