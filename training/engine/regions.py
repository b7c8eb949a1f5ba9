"""Image regions per tag for cleaning: a detector's output as COCO-style JSON, or JSONL rows with "boxes" and
"box_tags" (what `ram-edge data scenes` writes)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ram_edge.errors import ConfigError


@dataclass(frozen=True)
class Region:
    """One box of one tag, in pixels (x0, y0, x1, y1), x1/y1 exclusive."""

    tag: str
    box: tuple[float, float, float, float]
    score: float = 1.0


class RegionIndex:
    """Regions by image, matched to the engine's records by resolved path, else by file name when it is unique."""

    def __init__(self, by_path: dict[str, list[Region]]) -> None:
        self.by_path = by_path
        names: dict[str, list[str]] = {}
        for key in by_path:
            names.setdefault(Path(key).name, []).append(key)
        self.by_name = {name: keys[0] for name, keys in names.items() if len(keys) == 1}
        self.categories = sorted({r.tag for regions in by_path.values() for r in regions})

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_path.values())

    def lookup(self, image: Path) -> list[Region]:
        """The regions of an image file (empty when the regions file does not mention it)."""
        key = str(Path(image).resolve())
        if key in self.by_path:
            return self.by_path[key]
        alias = self.by_name.get(Path(image).name)
        return self.by_path[alias] if alias is not None else []


def _box(values, where: str) -> tuple[float, float, float, float]:
    if not isinstance(values, (list, tuple)) or len(values) != 4 or not all(isinstance(v, (int, float)) for v in values):
        raise ConfigError(f"{where}: a box is four numbers, got {values!r}")
    return tuple(float(v) for v in values)  # type: ignore[return-value]


def _resolve(root: Path, name: str) -> str:
    path = Path(name)
    return str((path if path.is_absolute() else root / path).resolve())


def read_regions(path: str | Path, min_score: float = 0.0) -> RegionIndex:
    """Read a COCO-style JSON ({images, annotations, categories}; bbox is x, y, w, h) or JSONL boxes/box_tags rows."""
    from .records import annotation_file, iter_rows

    path = Path(path)
    if path.suffix.lower() == ".json" and path.is_file():
        return _read_coco(path, min_score)
    path = annotation_file(path)
    by_path: dict[str, list[Region]] = {}
    for number, row in enumerate(iter_rows(path), start=1):
        boxes, tags = row.get("boxes"), row.get("box_tags")
        if boxes is None and tags is None:
            continue
        where = f"{path}, record {number}"
        if not isinstance(boxes, list) or not isinstance(tags, list) or len(boxes) != len(tags):
            raise ConfigError(f"{where}: \"boxes\" and \"box_tags\" must be lists of the same length")
        key = _resolve(path.parent, row["image"])
        by_path.setdefault(key, []).extend(Region(str(t), _box(b, where)) for b, t in zip(boxes, tags))
    if not by_path:
        raise ConfigError(f"{path}: no regions (rows need \"boxes\" and \"box_tags\")")
    return RegionIndex(by_path)


def _read_coco(path: Path, min_score: float) -> RegionIndex:
    from ram_edge.fileio import read_text

    try:
        data = json.loads(read_text(path, what="regions file", error=ConfigError))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
        raise ConfigError(f"{path}: expected COCO-style JSON with \"images\", \"annotations\" and \"categories\" lists")
    try:
        images = {img["id"]: _resolve(path.parent, img["file_name"]) for img in data["images"]}
        names = {cat["id"]: str(cat["name"]) for cat in data["categories"]}
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: images need \"id\" and \"file_name\", categories \"id\" and \"name\" ({exc})") from None
    by_path: dict[str, list[Region]] = {}
    for number, ann in enumerate(data["annotations"]):
        where = f"{path}, annotation {number}"
        try:
            image, tag = images[ann["image_id"]], names[ann["category_id"]]
        except (KeyError, TypeError):
            raise ConfigError(f"{where}: image_id / category_id not among the images / categories") from None
        x, y, w, h = _box(ann.get("bbox"), where)
        score = float(ann.get("score", 1.0))
        if score >= min_score:
            by_path.setdefault(image, []).append(Region(tag, (x, y, x + w, y + h), score))
    return RegionIndex(by_path)


def write_coco(path: str | Path, images: list[tuple[str, list[Region]]]) -> None:
    """Write regions as COCO-style JSON (file names as given), atomically."""
    from ram_edge.fileio import atomic_file

    categories = sorted({r.tag for _, regions in images for r in regions})
    cat_id = {name: i + 1 for i, name in enumerate(categories)}
    data = {"images": [], "annotations": [], "categories": [{"id": cat_id[c], "name": c} for c in categories]}
    for image_id, (name, regions) in enumerate(images, start=1):
        data["images"].append({"id": image_id, "file_name": name})
        for r in regions:
            x0, y0, x1, y1 = r.box
            data["annotations"].append({"id": len(data["annotations"]) + 1, "image_id": image_id, "category_id": cat_id[r.tag],
                                        "bbox": [x0, y0, x1 - x0, y1 - y0], "score": r.score})
    with atomic_file(path, "w") as fh:
        json.dump(data, fh)
