"""Calibration images for quantization: a folder of photos or any dataset format training reads.

Never random noise: activation ranges measured on noise do not describe photos. Images are taken
in a seeded random order over the whole source (so a sorted folder does not give one album),
preprocessed exactly as at inference; unreadable ones are skipped and counted.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ram_edge.config import PreprocessConfig
from ram_edge.errors import QuantizeError, RamEdgeError
from ram_edge.preprocess import iter_image_files, load_image, preprocess


@dataclass
class CalibrationData:
    """Preprocessed calibration images and where they came from."""

    images: np.ndarray  # (N, 3, S, S) float32
    source: str
    kind: str  # "folder", "jsonl", "official" or "wds"
    unreadable: int = 0
    examples_unreadable: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)  # per image: its file path (absolute) or dataset key

    def summary(self) -> dict:
        """What the quantized checkpoint (and later the bundle manifest) records."""
        return {"source": self.source, "kind": self.kind, "images": int(len(self.images)), "unreadable": self.unreadable}


def detect_kind(data: Path) -> str:
    """Which dataset format `data` is: "folder" (images), "jsonl", "official" (annotation JSON) or "wds" (tar shards)."""
    if data.is_dir():
        if (data / "annotations.jsonl").is_file():
            return "jsonl"
        if any(data.glob("*.tar")) and not iter_image_files([data]):
            return "wds"
        return "folder"
    if data.is_file():
        kinds = {".jsonl": "jsonl", ".json": "official", ".tar": "wds"}
        if data.suffix.lower() in kinds:
            return kinds[data.suffix.lower()]
        raise QuantizeError(
            f"calibration data {data} is a {data.suffix or 'extension-less'} file; give a folder of images, a JSONL "
            f"(annotations.jsonl), an official annotation .json or WebDataset .tar shards"
        )
    raise QuantizeError(f"calibration data {data} does not exist; give a folder of images or a dataset")


def _loaders(data: Path) -> tuple[str, list[tuple[str, Callable]] | Iterator[tuple[str, Callable]]]:
    """(kind, (name, load) pairs) for a folder of images, a JSONL / official JSON file or WebDataset shards."""
    from ram_edge.training.data import JsonlSource, OfficialJsonSource, expand_shards, iter_tar_samples, wds_example

    def from_source(source) -> list[tuple[str, Callable]]:
        return [(ex.key, ex.load) for ex in (source.example(i) for i in range(len(source)))]

    def from_shards(paths) -> Iterator[tuple[str, Callable]]:
        for shard in expand_shards([str(p) for p in paths]):
            for key, members in iter_tar_samples(shard):
                example = wds_example(key, members)
                yield example.key, example.load

    kind = detect_kind(data)
    if kind == "jsonl":
        return kind, from_source(JsonlSource(data))
    if kind == "official":
        return kind, from_source(OfficialJsonSource(data))
    if kind == "wds":
        return kind, from_shards([data])
    return kind, [(str(p), (lambda p=p: load_image(p))) for p in iter_image_files([data])]


def load_calibration(data: str | Path, preprocess_cfg: PreprocessConfig, count: int, *, seed: int = 0,
                     progress: bool = True) -> CalibrationData:
    """Up to `count` readable, preprocessed images from `data`, in a seeded random order over the source."""
    from tqdm import tqdm

    data = Path(data)
    kind, loaders = _loaders(data)
    if isinstance(loaders, list):
        order = np.random.default_rng(seed).permutation(len(loaders))
        items: Iterator = (loaders[i] for i in order)
        total = len(loaders)
    else:  # streamed shards: the first readable samples, in shard order
        items, total = loaders, None
    images: list[np.ndarray] = []
    names: list[str] = []
    bad: list[str] = []
    with tqdm(total=min(count, total) if total is not None else count, desc="calibration images", unit="img",
              file=sys.stderr, disable=None if progress else True, leave=False) as bar:
        for name, load in items:
            if len(images) >= count:
                break
            try:
                images.append(preprocess(load(), preprocess_cfg))
                names.append(str(Path(name).resolve()) if Path(name).is_file() else name)
                bar.update(1)
            except (RamEdgeError, OSError, ValueError) as exc:
                bad.append(f"{name}: {exc}")
    if not images:
        if bad:
            raise QuantizeError(f"none of the {len(bad)} calibration image(s) in {data} could be read (first: {bad[0]}); "
                                f"give readable images")
        raise QuantizeError(f"no calibration images in {data}; give a folder with .jpg/.png/... files or a dataset that lists some")
    return CalibrationData(np.stack(images).astype(np.float32), str(data), kind, len(bad), bad[:5], names)
