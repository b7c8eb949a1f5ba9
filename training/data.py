"""Training data: three on-disk formats plus rendered scenes, augmentation, multi-hot targets,
and deterministic, resumable ordering across processes and workers.

Every random choice (order, augmentation) derives from (seed, epoch, index), so a resumed run
sees exactly the samples and augmentations an uninterrupted one would. Unreadable images are
skipped and counted, never crash an epoch.
"""

from __future__ import annotations

import bisect
import io
import json
import math
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from PIL import Image, ImageEnhance

from ram_edge.config import PreprocessConfig
from ram_edge.errors import ConfigError, RamEdgeError
from ram_edge.fileio import iter_text_lines, read_text
from ram_edge.preprocess import load_image, preprocess

from .config import DataConfig


@dataclass
class Example:
    """One image with its captions and (optionally) its tags."""

    key: str
    load: Callable[[], Image.Image]
    captions: list[str] = field(default_factory=list)
    tags: list[str] | None = None  # tag names
    tag_ids: list[int] | None = None  # ids in the label system
    teacher: np.ndarray | None = None  # precomputed teacher image embedding


# ---------------------------------------------------------------- sources (map-style)


class JsonlSource:
    """Folder + JSONL: {"image": rel/path, "captions"|"caption": [...], "tags": [...], "teacher": [...]}."""

    def __init__(self, path: str | Path, image_root: str | Path | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            path = path / "annotations.jsonl"
        if not path.is_file():
            raise ConfigError(f"{path}: JSONL annotation file not found")
        self.root = Path(image_root) if image_root else path.parent
        self.rows = list(iter_jsonl_rows(path))

    def __len__(self) -> int:
        return len(self.rows)

    def example(self, index: int) -> Example:
        """The example at `index`."""
        row = self.rows[index]
        image_path = self.root / row["image"]
        captions = row.get("captions", row.get("caption", []))
        captions = [captions] if isinstance(captions, str) else list(captions)
        teacher = np.asarray(row["teacher"], np.float32) if row.get("teacher") is not None else None
        return Example(str(row["image"]), lambda: load_image(image_path), captions, row.get("tags"), row.get("tag_ids"), teacher)


def _is_list_of(value: Any, kind: type | tuple[type, ...]) -> bool:
    return isinstance(value, list) and all(isinstance(v, kind) and not isinstance(v, bool) for v in value)


# field -> (accepted types, what to write), checked when a dataset is opened so a bad row fails before training starts
_ROW_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "captions": (lambda v: isinstance(v, str) or _is_list_of(v, str), "a string or a list of strings"),
    "caption": (lambda v: isinstance(v, str) or _is_list_of(v, str), "a string or a list of strings"),
    "tags": (lambda v: _is_list_of(v, str), "a list of tag names"),
    "tag_ids": (lambda v: _is_list_of(v, int), "a list of label ids"),
    "union_label_id": (lambda v: _is_list_of(v, int), "a list of label ids"),
    "parse_label_id": (lambda v: isinstance(v, list) and all(_is_list_of(ids, int) for ids in v),
                       "a list of label-id lists, one per caption"),
    "teacher": (lambda v: _is_list_of(v, (int, float)), "a list of numbers (the teacher's image embedding)"),
}


def check_row(row: Any, where: str, image_key: str) -> None:
    """Refuse an annotation that is not an object with a path under `image_key` and well-typed optional fields."""
    if not isinstance(row, dict):
        raise ConfigError(f"{where}: expected a JSON object with an {image_key!r} field, got {type(row).__name__}")
    image = row.get(image_key)
    if not isinstance(image, str) or not image:
        raise ConfigError(f"{where}: {image_key!r} must be an image path (a non-empty string), got {image!r}")
    problem = field_problem(row)
    if problem:
        raise ConfigError(f"{where}: {problem}")


def iter_jsonl_rows(path: Path, what: str = "JSONL annotation file") -> Iterator[dict[str, Any]]:
    """The annotations of a JSONL file, each checked: an object with an "image" path and well-typed fields."""
    for number, line in iter_text_lines(path, what=what, error=ConfigError):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}, line {number}: not valid JSON ({exc.msg}); each line must be one JSON object "
                              "with an \"image\" path") from None
        check_row(row, f"{path}, line {number}", "image")
        yield row


def field_problem(row: dict) -> str | None:
    """What is wrong with the optional fields of an annotation (captions, tags, ids, teacher), or None."""
    for key, (ok, what) in _ROW_FIELDS.items():
        if row.get(key) is not None and not ok(row[key]):
            return f"{key!r} must be {what}"
    return None


class OfficialJsonSource:
    """The official RAM annotation JSON: a list of {"image_path", "caption": [...],
    "union_label_id": [...] (optional), "parse_label_id": [[...] per caption]}."""

    def __init__(self, path: str | Path, image_root: str | Path | None = None) -> None:
        path = Path(path)
        text = read_text(path, what="official annotation JSON", error=ConfigError)
        try:
            self.rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: cannot read the official annotation JSON ({exc})") from None
        if not isinstance(self.rows, list):
            raise ConfigError(f"{path}: expected a JSON list of annotations")
        for index, row in enumerate(self.rows):
            check_row(row, f"{path}: annotation {index}", "image_path")
        self.root = Path(image_root) if image_root else path.parent

    def __len__(self) -> int:
        return len(self.rows)

    def example(self, index: int) -> Example:
        """The example at `index`; tag ids are the union label ids, else the union of the parsed ones."""
        row = self.rows[index]
        image_path = self.root / row["image_path"]
        captions = row.get("caption", [])
        captions = [captions] if isinstance(captions, str) else list(captions)
        ids = row.get("union_label_id")
        if ids is None and row.get("parse_label_id") is not None:
            ids = sorted({int(i) for per_caption in row["parse_label_id"] for i in per_caption})
        return Example(str(row["image_path"]), lambda: load_image(image_path), captions, None, ids)


class SceneSource:
    """Emoji scenes rendered on the fly (fresh data is nearly free compared with a training step)."""

    def __init__(self, options: dict[str, Any], length: int) -> None:
        from .scenes import SceneStream

        self.stream = SceneStream(**options)
        self.length = length

    def __len__(self) -> int:
        return self.length

    def example(self, index: int) -> Example:
        """Render scene `index`."""
        scene = self.stream[index]
        return Example(f"scene-{index}", lambda: scene.image, list(scene.captions), list(scene.tags))


class ConcatSource:
    """Several sources read as one, in the order given (data.path as a list)."""

    def __init__(self, sources: Sequence[Any]) -> None:
        self.sources = list(sources)
        self.starts = np.cumsum([0] + [len(src) for src in self.sources]).tolist()

    def __len__(self) -> int:
        return self.starts[-1]

    def example(self, index: int) -> Example:
        """The example at `index` of the concatenation."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} examples")
        which = bisect.bisect_right(self.starts, index) - 1
        return self.sources[which].example(index - self.starts[which])


class FolderSource:
    """A folder of images (searched recursively, as `ram-edge tag` does) without captions or tags: enough for
    distillation from a teacher, e.g. quantization-aware fine-tuning on one's own photos."""

    def __init__(self, path: str | Path, image_root: str | Path | None = None) -> None:
        from ram_edge.preprocess import iter_image_files

        root = Path(path)
        if not root.is_dir():
            raise ConfigError(f"{root}: not a folder of images")
        self.files = sorted(iter_image_files([root]))
        if not self.files:
            raise ConfigError(f"{root}: no images (.jpg, .png, ...) in this folder or below")
        self.root = root

    def __len__(self) -> int:
        return len(self.files)

    def example(self, index: int) -> Example:
        """The image at `index` (sorted path order)."""
        path = self.files[index]
        return Example(str(path.relative_to(self.root)), lambda: load_image(path))


def _paths(cfg: DataConfig) -> list[str]:
    paths = [cfg.path] if isinstance(cfg.path, str) else list(cfg.path or [])
    if not paths or not all(isinstance(p, str) and p for p in paths):
        raise ConfigError(f"data.path {cfg.path!r} must be a path or a list of paths (data kind {cfg.kind!r})")
    return paths


def open_source(cfg: DataConfig):
    """The map-style source for a data config (WebDataset shards are streamed separately)."""
    readers = {"jsonl": JsonlSource, "official": OfficialJsonSource, "folder": FolderSource}
    if cfg.kind in readers:
        sources = [readers[cfg.kind](path, cfg.image_root) for path in _paths(cfg)]
        return sources[0] if len(sources) == 1 else ConcatSource(sources)
    if cfg.kind == "scenes":
        return SceneSource(cfg.scenes, cfg.samples_per_epoch or 10000)
    raise ConfigError(f"data kind {cfg.kind!r} has no map-style source; valid: jsonl, official, folder, scenes, wds")


# ---------------------------------------------------------------- WebDataset shards (streamed)


def expand_shards(paths: str | Sequence[str]) -> list[Path]:
    """Shard paths from files, directories (all *.tar) and glob patterns, sorted."""
    import glob

    paths = [paths] if isinstance(paths, str) else list(paths)
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            out.extend(sorted(p.glob("*.tar")))
        elif any(c in raw for c in "*?["):
            out.extend(Path(x) for x in sorted(glob.glob(raw)))
        elif p.is_file():
            out.append(p)
        else:
            raise ConfigError(f"{raw}: no WebDataset shard found")
    if not out:
        raise ConfigError(f"no .tar shards in {paths}")
    return out


def iter_tar_samples(path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Stream (key, {extension: bytes}) groups from a tar shard without extracting it."""
    current: str | None = None
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(path, mode="r|*") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                name = info.name.rsplit("/", 1)[-1]
                key, _, ext = name.partition(".")
                if current is not None and key != current:
                    yield current, members
                    members = {}
                current = key
                fh = tar.extractfile(info)
                members[ext.lower()] = fh.read() if fh else b""
    except (tarfile.TarError, OSError, EOFError):
        pass  # a damaged shard ends early; what was read stays usable
    if current is not None and members:
        yield current, members


IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp")


def wds_example(key: str, members: dict[str, bytes]) -> Example:
    """An Example from a WebDataset group (image + .json and/or .txt)."""
    meta: dict[str, Any] = {}
    problem = None
    if "json" in members:
        # A damaged record is not read as "no tags": the sample is skipped and listed with the reason, like a bad image.
        try:
            meta = json.loads(members["json"].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            problem = f"not valid UTF-8 JSON ({exc})"
        else:
            problem = field_problem(meta) if isinstance(meta, dict) else "not a JSON object"
        if problem:
            problem, meta = f"{key}.json: {problem}", {}
    captions = meta.get("captions", meta.get("caption", []))
    captions = [captions] if isinstance(captions, str) else list(captions)
    if not captions and "txt" in members:
        captions = [members["txt"].decode("utf-8", "replace").strip()]
    data = next((members[e] for e in IMAGE_EXTS if e in members), None)

    def load() -> Image.Image:
        if problem:
            raise RamEdgeError(problem)
        if data is None:
            raise RamEdgeError(f"{key}: no image member in the shard")
        return load_image_bytes(data, key)

    teacher = np.asarray(meta["teacher"], np.float32) if meta.get("teacher") is not None else None
    return Example(key, load, captions, meta.get("tags"), meta.get("tag_ids"), teacher)


def load_image_bytes(data: bytes, name: str) -> Image.Image:
    """Decode image bytes with the same safety and conversion rules as files."""
    from ram_edge.errors import ImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return load_image(img)
    except ImageError:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types on corrupt data
        raise ImageError(f"{name}: unreadable image data ({type(exc).__name__}: {exc})") from None


# ---------------------------------------------------------------- augmentation and targets


class TrainTransform:
    """Random resized crop + flip + colour jitter, then the model's exact normalisation."""

    def __init__(self, preprocess_cfg: PreprocessConfig, crop_scale=(0.5, 1.0), hflip: bool = True, color_jitter: float = 0.2) -> None:
        self.cfg = preprocess_cfg
        self.crop_scale, self.hflip, self.jitter = crop_scale, hflip, color_jitter

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> np.ndarray:
        """(3, S, S) float32 for one image."""
        w, h = image.size
        area = w * h * rng.uniform(*self.crop_scale)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw = int(round(min(w, math.sqrt(area * ratio))))
        ch = int(round(min(h, math.sqrt(area / ratio))))
        x0 = int(rng.integers(0, w - cw + 1))
        y0 = int(rng.integers(0, h - ch + 1))
        image = image.crop((x0, y0, x0 + cw, y0 + ch))
        if self.hflip and rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if self.jitter:
            for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
                image = enhancer(image).enhance(float(rng.uniform(1 - self.jitter, 1 + self.jitter)))
        return preprocess(image, self.cfg)


class EvalTransform:
    """Exactly the inference preprocessing."""

    def __init__(self, preprocess_cfg: PreprocessConfig) -> None:
        self.cfg = preprocess_cfg

    def __call__(self, image: Image.Image, rng: np.random.Generator | None = None) -> np.ndarray:
        """(3, S, S) float32 for one image."""
        return preprocess(image, self.cfg)


class TargetBuilder:
    """Multi-hot targets from given tag names / ids, or by parsing the captions."""

    def __init__(self, label_system, tags_from: str = "parse") -> None:
        if tags_from not in ("parse", "given"):
            raise ConfigError(f"data.tags_from {tags_from!r} is unknown; valid: parse, given")
        self.num_classes = len(label_system.tags)
        self.tags_from = tags_from
        self.index = {}
        for i, (tag, syns) in enumerate(zip(label_system.tags, label_system.synonyms)):
            for name in (tag, *syns):
                self.index.setdefault(name.strip().lower(), i)
        self.parser = None
        if tags_from == "parse":
            from .parse import TagParser

            self.parser = TagParser(label_system)

    def ids(self, example: Example) -> list[int]:
        """Tag ids of an example."""
        if self.tags_from == "given":
            if example.tag_ids is not None:
                return [int(i) for i in example.tag_ids if 0 <= int(i) < self.num_classes]
            if example.tags is not None:
                return sorted({self.index[t.strip().lower()] for t in example.tags if t.strip().lower() in self.index})
        if self.parser is None:  # tags_from "given" and this example gives none
            return []
        ids: set[int] = set()
        for caption in example.captions:
            ids.update(self.parser.parse(caption))
        return sorted(ids)

    def __call__(self, example: Example) -> np.ndarray:
        """(C,) float32 multi-hot vector."""
        target = np.zeros(self.num_classes, np.float32)
        target[self.ids(example)] = 1.0
        return target


# ---------------------------------------------------------------- torch datasets, ordering, collate


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The RNG of one sample: independent of worker count, order and resumption."""
    return np.random.default_rng([seed, epoch, index])


class MapDataset:
    """Torch map-style dataset over a source; items are (epoch, index) pairs from `ResumableSampler`."""

    def __init__(self, source, transform, targets: TargetBuilder, seed: int) -> None:
        self.source, self.transform, self.targets, self.seed = source, transform, targets, seed

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, item: tuple[int, int]):
        epoch, index = item
        return make_item(self.source.example(index), self.transform, self.targets, sample_rng(self.seed, epoch, index))


def make_item(example: Example, transform, targets: TargetBuilder, rng: np.random.Generator):
    """A training item dict, or {"skipped": (key, reason)} when the image cannot be read (the collate counts it)."""
    try:
        image = example.load()
        pixels = transform(image, rng)
    except (RamEdgeError, OSError, ValueError) as exc:
        return {"skipped": (example.key, str(exc) or type(exc).__name__)}
    caption = example.captions[int(rng.integers(len(example.captions)))] if example.captions else ""
    return {"image": pixels, "target": targets(example), "caption": caption, "teacher": example.teacher, "key": example.key}


class ResumableSampler:
    """Per-epoch permutation of (seed, epoch), split across ranks, that can start mid-epoch."""

    def __init__(self, length: int, rank: int = 0, world: int = 1, seed: int = 0, shuffle: bool = True) -> None:
        self.length, self.rank, self.world, self.seed, self.shuffle = length, rank, world, seed, shuffle
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Next iteration covers `epoch`, skipping its first `start` samples of this rank."""
        self.epoch, self.start = epoch, start

    def per_rank(self) -> int:
        """Samples each rank sees per epoch (the tail is dropped so that ranks stay in step)."""
        return self.length // self.world

    def __len__(self) -> int:
        return self.per_rank() - self.start

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch, 7]).permutation(self.length) if self.shuffle else np.arange(self.length)
        mine = order[self.rank :: self.world][: self.per_rank()]
        for index in mine[self.start :]:
            yield (self.epoch, int(index))


class ShardStream:
    """Torch IterableDataset over WebDataset shards: split by rank and worker, shuffle buffer,
    exactly `per_rank` samples per epoch (cycling shards) so that DDP ranks stay in step."""

    def __init__(self, shards: list[Path], transform, targets: TargetBuilder, seed: int, per_rank: int,
                 rank: int = 0, world: int = 1, batch_size: int = 1, shuffle_buffer: int = 256) -> None:
        self.shards, self.transform, self.targets, self.seed = shards, transform, targets, seed
        self.per_rank, self.rank, self.world, self.batch_size, self.buffer = per_rank, rank, world, batch_size, shuffle_buffer
        self.epoch, self.start_batches = 0, 0

    def set_epoch(self, epoch: int, start_batches: int = 0) -> None:
        """Next iteration covers `epoch`, skipping this rank's first `start_batches` batches."""
        self.epoch, self.start_batches = epoch, start_batches

    def _raw(self, worker: int, workers: int) -> Iterator[tuple[str, dict[str, bytes]]]:
        order = np.random.default_rng([self.seed, self.epoch, 11]).permutation(len(self.shards))
        slot, slots = self.rank * workers + worker, self.world * workers
        mine = [self.shards[i] for i in order[slot::slots]] or [self.shards[i] for i in order[slot % len(order) :: len(order)]]
        while True:  # cycle: the rank's quota, not the shard sizes, ends the epoch
            yielded = False
            for shard in mine:
                for group in iter_tar_samples(shard):
                    yielded = True
                    yield group
            if not yielded:
                return

    def __iter__(self):
        import torch.utils.data as tud

        info = tud.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        # DataLoader takes whole batches from workers in turn: this worker made every workers-th batch.
        my_batches = math.ceil(self.per_rank / self.batch_size)
        my_batches = len(range(worker, my_batches, workers))
        skip_batches = len(range(worker, self.start_batches, workers))
        quota = my_batches * self.batch_size
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker])
        buffer: list[tuple[str, dict[str, bytes]]] = []
        produced = 0
        for group in self._raw(worker, workers):
            buffer.append(group)
            if len(buffer) < self.buffer:
                continue
            produced = yield from self._emit(buffer, rng, produced, skip_batches, quota)
            if produced >= quota:
                return
        while buffer and produced < quota:
            produced = yield from self._emit(buffer, rng, produced, skip_batches, quota)

    def _emit(self, buffer, rng, produced, skip_batches, quota):
        key, members = buffer.pop(int(rng.integers(len(buffer))))
        if produced >= skip_batches * self.batch_size:  # skipped samples are never decoded
            example = wds_example(key, members)
            yield make_item(example, self.transform, self.targets, sample_rng(self.seed, self.epoch, hash_key(key)))
        return produced + 1


def hash_key(key: str) -> int:
    """A stable non-negative integer for a sample key (Python's hash() is salted per process)."""
    import zlib

    return zlib.crc32(key.encode("utf-8"))


def collate(items: list[dict | None]) -> dict[str, Any]:
    """Stack the readable items; count and name the unreadable ones."""
    import torch

    good = [it for it in items if it is not None and "skipped" not in it]
    skipped = [it["skipped"] for it in items if it is not None and "skipped" in it]
    batch: dict[str, Any] = {"skipped": len(items) - len(good), "skipped_keys": skipped, "size": len(good)}
    if not good:
        return batch
    batch["image"] = torch.from_numpy(np.stack([it["image"] for it in good]))
    batch["target"] = torch.from_numpy(np.stack([it["target"] for it in good]))
    batch["caption"] = [it["caption"] for it in good]
    batch["key"] = [it["key"] for it in good]
    teachers = [it["teacher"] for it in good]
    if all(t is not None for t in teachers):
        batch["teacher"] = torch.from_numpy(np.stack(teachers))
    return batch
