"""Cleaning: drop the tags whose image regions disagree with the rest of their category or with the model.

For each annotated tag that has regions in its image (a detector's boxes), every region is cropped and embedded
with the baseline model's image encoder (the pooled token), and the model's probability for that tag on the crop
is kept. Per category, the region embeddings of the whole dataset are clustered with k-means++ and the farthest
`outlier_fraction` are outliers. A tag is dropped when all of its regions in the image are outliers ("outlier"),
or when the model predicts it on none of them ("contrary": the paper's contrary predictions between whole images
and regions). Tags without regions are kept unless `unlocated="drop"`.

Pass 1 (embedding) runs in shards of images, each saved atomically under the work folder, so an interrupted run
resumes and gives the same output as an uninterrupted one; passes 2 and 3 (clustering, writing) are quick.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ram_edge.errors import ConfigError, RamEdgeError

from .records import Record, annotation_file, read_records, start_tags, write_output
from .regions import Region, RegionIndex, read_regions

SHARD_SUFFIX = ".npz"


@dataclass
class CleanOptions:
    """Which regions count as wrong and how the work is split."""

    tags_from: str = "given"
    outlier_fraction: float = 0.1
    clusters: int = 3
    min_regions: int = 20  # categories with fewer regions in the dataset are not clustered
    region_check: bool = True
    region_threshold: float | None = None  # None: the model's own per-tag thresholds
    unlocated: str = "keep"  # tags without regions in their image: "keep" or "drop"
    min_box: float = 4.0  # boxes narrower or lower than this (pixels) are ignored
    # Crops are squares of `context` times the box's longer side around its centre (clipped to the image): a
    # tight crop fills the frame, unlike the objects the model saw in training. On the default model's scenes the
    # model predicted a true region's tag on 38% of tight crops, 77% at 1.5, 87% at 2 and 89% at 3.
    context: float = 2.0
    min_score: float = 0.0  # detector score below which a region is ignored
    batch_size: int = 64
    shard_size: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.outlier_fraction < 1.0:
            raise ConfigError(f"outlier fraction {self.outlier_fraction} must be in [0, 1)")
        if self.clusters < 1 or self.min_regions < 1 or self.batch_size < 1 or self.shard_size < 1:
            raise ConfigError("clusters, min_regions, batch_size and shard_size must be at least 1")
        if self.context < 1.0:
            raise ConfigError(f"context {self.context} must be at least 1 (1: the box itself)")
        if self.unlocated not in ("keep", "drop"):
            raise ConfigError(f"unlocated {self.unlocated!r} is unknown; valid: keep, drop")
        if self.region_threshold is not None and not 0.0 < self.region_threshold < 1.0:
            raise ConfigError(f"region threshold {self.region_threshold} must be between 0 and 1")


class RegionEmbedder:
    """Crops -> (unit pooled-token embeddings, per-class probabilities) with a torch checkpoint."""

    def __init__(self, model_path: str | Path, device: str | None = None) -> None:
        from ram_edge.checkpoint_dir import is_checkpoint_dir
        from ram_edge.models.checkpoint import load_checkpoint

        if not is_checkpoint_dir(model_path):
            raise ConfigError(f"{model_path}: cleaning needs a checkpoint directory (it embeds regions with the image "
                              "encoder, which a bundle does not expose); pass the checkpoint the bundle was exported from")
        self.model, self.info = load_checkpoint(model_path)
        self.device = torch_device(device)
        self.model.to(self.device)
        self.tags = list(self.info.labels.tags)
        self.index = {t: i for i, t in enumerate(self.tags)}

    def __call__(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 3, S, S) preprocessed crops -> ((N, D) float32 unit embeddings, (N, C) probabilities)."""
        import torch

        with torch.inference_mode():
            feats = self.model.forward_features(torch.from_numpy(crops).to(self.device))
            probs = torch.sigmoid(self.model.forward_head(feats))
            pooled = torch.nn.functional.normalize(feats[:, 0], dim=-1)
        return pooled.float().cpu().numpy(), probs.float().cpu().numpy()


def torch_device(device: str | None):
    """cpu unless asked; a CUDA device that is not there is a clear error."""
    import torch

    name = (device or "cpu").strip().lower()
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available to torch here; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"--device {device!r} is not a torch device ({exc}); use cpu or cuda[:N]") from None


def _regions_of(rec: Record, index: RegionIndex, options: CleanOptions, size: tuple[int, int]) -> list[Region]:
    """The usable regions of the record's current tags, as crop boxes (with context) clipped to the image."""
    w, h = size
    out = []
    for r in index.lookup(rec.image):
        if r.tag not in rec.sources or r.score < options.min_score:
            continue
        x0, y0, x1, y1 = max(0.0, r.box[0]), max(0.0, r.box[1]), min(float(w), r.box[2]), min(float(h), r.box[3])
        if x1 - x0 < options.min_box or y1 - y0 < options.min_box:
            continue
        cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, options.context * max(x1 - x0, y1 - y0) / 2
        crop = (max(0.0, cx - half), max(0.0, cy - half), min(float(w), cx + half), min(float(h), cy + half))
        out.append(Region(r.tag, crop, r.score))
    return out


def embed_shard(records: list[Record], index: RegionIndex, embedder: RegionEmbedder, options: CleanOptions,
                tag_ids: dict[str, int], failed: list[dict[str, str]], bar=None) -> dict[str, np.ndarray]:
    """Pass 1 for one shard: per region its record, tag id, embedding and the model's probability for its tag."""
    from ram_edge.preprocess import load_image, preprocess

    cfg = embedder.info.config.preprocess
    rec_ids: list[int] = []
    tags: list[int] = []
    embeds: list[np.ndarray] = []
    probs: list[float] = []
    pending: list[tuple[int, str, np.ndarray]] = []

    def flush() -> None:
        if not pending:
            return
        emb, p = embedder(np.stack([x for _, _, x in pending]))
        for (rid, tag, _), e, row in zip(pending, emb, p):
            rec_ids.append(rid)
            tags.append(tag_ids[tag])
            embeds.append(e.astype(np.float16))
            col = embedder.index.get(tag)
            probs.append(float(row[col]) if col is not None else float("nan"))
        pending.clear()

    for rec in records:
        try:
            image = load_image(rec.image)
        except (RamEdgeError, OSError) as exc:
            failed.append({"image": str(rec.image), "error": str(exc)})
            image = None
        if image is not None:
            for region in _regions_of(rec, index, options, image.size):
                pending.append((rec.index, region.tag, preprocess(image.crop(tuple(round(v) for v in region.box)), cfg)))
                if len(pending) >= options.batch_size:
                    flush()
        if bar is not None:
            bar.update(1)
    flush()
    dim = embedder.model.config.embed_dim
    return {"record": np.asarray(rec_ids, np.int64), "tag": np.asarray(tags, np.int64),
            "embed": np.stack(embeds) if embeds else np.zeros((0, dim), np.float16),
            "prob": np.asarray(probs, np.float32)}


def find_outliers(tag: np.ndarray, embed: np.ndarray, options: CleanOptions) -> np.ndarray:
    """Pass 2: per category with at least min_regions regions, the k-means++ outliers."""
    from .kmeans import outliers

    mask = np.zeros(len(tag), bool)
    for t in np.unique(tag):
        members = np.flatnonzero(tag == t)
        if len(members) < options.min_regions:
            continue
        k = max(1, min(options.clusters, len(members) // options.min_regions))
        mask[members] = outliers(embed[members].astype(np.float32), k, options.outlier_fraction, seed=options.seed + int(t))
    return mask


def decide(records: list[Record], data: dict[str, np.ndarray], outlier: np.ndarray, names: list[str],
           index: RegionIndex, thresholds: dict[str, float], options: CleanOptions) -> dict[str, int]:
    """Pass 3: remove the judged tags from each record; counts per reason."""
    by_record: dict[int, dict[str, list[int]]] = {}
    for i, (rid, t) in enumerate(zip(data["record"].tolist(), data["tag"].tolist())):
        by_record.setdefault(rid, {}).setdefault(names[t], []).append(i)
    covered = set(index.categories)
    counts = {"outlier": 0, "contrary": 0, "unlocated": 0, "kept": 0, "judged": 0}
    for rec in records:
        regions = by_record.get(rec.index, {})
        dropped: dict[str, str] = {}
        for tag in rec.tags:
            rows = regions.get(tag)
            reason = None
            if not rows:
                if options.unlocated == "drop" and tag in covered:
                    reason = "unlocated"
            else:
                counts["judged"] += 1
                probs = data["prob"][rows]
                threshold = options.region_threshold if options.region_threshold is not None else thresholds.get(tag)
                if bool(np.all(outlier[rows])):
                    reason = "outlier"
                elif options.region_check and threshold is not None and not np.any(probs >= threshold):
                    reason = "contrary"
            if reason is None:
                counts["kept"] += 1
            else:
                dropped[tag] = reason
                counts[reason] += 1
        if dropped:
            rec.tags = [t for t in rec.tags if t not in dropped]
            rec.row["dropped_tags"] = {t: {"reason": r, "sources": rec.sources.pop(t)} for t, r in dropped.items()}
    return counts


def clean(data: str | Path, model: str | Path, regions: str | Path, out: str | Path, *, labels: str | Path | None = None,
          options: CleanOptions | None = None, device: str | None = None, work_dir: str | Path | None = None, restart: bool = False,
          keep_work: bool = False, image_root: str | Path | None = None, overwrite: bool = False,
          progress: bool = True) -> dict[str, Any]:
    """Write OUT/annotations.jsonl: DATA without the tags its regions contradict (resumable through work_dir)."""
    from tqdm import tqdm

    from ram_edge.dir_lock import exclusive_directory
    from ram_edge.fileio import atomic_file, refuse_existing

    from .generate import load_label_system
    from .shards import ShardDir, fingerprint, shard_ranges

    options = options or CleanOptions()
    out = Path(out)
    refuse_existing(out, overwrite)
    records = read_records(data, image_root)
    embedder = RegionEmbedder(model, device)
    system = load_label_system(labels, embedder.tags)
    start_tags(records, options.tags_from, system)
    index = read_regions(regions, options.min_score)
    names = sorted(set(index.categories) | {t for r in records for t in r.tags})
    tag_ids = {t: i for i, t in enumerate(names)}
    inputs = [annotation_file(data), Path(regions) if Path(regions).is_file() else annotation_file(regions),
              embedder.info.weights_path]
    work = Path(work_dir) if work_dir else out.with_name(out.name + ".engine-work")
    with exclusive_directory(work, "pass another --work-dir"):  # one process per work folder
        shards = ShardDir(work, fingerprint(inputs, {**asdict(options), "labels": str(labels)}), restart=restart)
        ranges = shard_ranges(len(records), options.shard_size)
        bar = tqdm(total=len(records), desc="clean: embed regions", unit="img", file=sys.stderr, disable=None if progress else True)
        with bar:
            for number, (start, end) in enumerate(ranges):
                if shards.done(number, SHARD_SUFFIX):
                    bar.update(end - start)
                    continue
                shard_failed: list[dict[str, str]] = []
                part = embed_shard(records[start:end], index, embedder, options, tag_ids, shard_failed, bar)
                with atomic_file(shards.shard_path(number, SHARD_SUFFIX)) as fh:
                    np.savez(fh, **part, failed=np.asarray(json.dumps(shard_failed)))
    parts = [np.load(shards.shard_path(n, SHARD_SUFFIX)) for n in range(len(ranges))]
    merged = {k: np.concatenate([p[k] for p in parts]) if parts else np.zeros(0) for k in ("record", "tag", "embed", "prob")}
    failed = [f for p in parts for f in json.loads(str(p["failed"]))]
    outlier = find_outliers(merged["tag"], merged["embed"], options)
    thresholds = {t: float(th) for t, th in zip(embedder.tags, embedder.info.labels.thresholds)}
    before = sum(len(r.tags) for r in records)
    counts = decide(records, merged, outlier, names, index, thresholds, options)
    after = sum(len(r.tags) for r in records)
    n = len(records)
    summary = {"step": "clean", "model": str(model), "regions": str(regions), "options": asdict(options), "images": n,
               "regions_embedded": int(len(merged["record"])), "unreadable": len(failed), "failed": failed[:100],
               "tags_before": before, "tags_after": after, "tags_per_image_before": before / n,
               "tags_per_image_after": after / n, "dropped": {k: counts[k] for k in ("outlier", "contrary", "unlocated")},
               "judged": counts["judged"]}
    write_output(out, records, system, summary, overwrite=overwrite)
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return summary
