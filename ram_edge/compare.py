"""How far two models agree on the same images: the figures behind `ram-edge compare`, `ram-edge eval --reference`
and the held-out check of `ram-edge quantize` (numpy only, no torch).

Every figure compares a model against a reference (the fp32 model, say) over the same images and the same tags:

* tag-set F1 per image (:func:`ram_edge.labels.tag_set_f1`: 1 where both sets are empty) and its mean;
* the share of images whose tag sets are identical;
* max and p99 of |Δp|, the absolute difference of the probabilities, over every image x tag (p99 by numpy's
  default linear interpolation, as `ram-edge bench` computes its latency percentiles);
* the tags that flip most often: gained (fired by the model, not by the reference) and lost, with counts;
* the images that changed most: lowest F1 first, then largest max |Δp|.

A tag fires by the model's own rule and thresholds (:meth:`ram_edge.labels.LabelSet.fired`), each model its own.
Models with different tag lists are compared on the tags they share, matched by exact name.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import RamEdgeError
from .labels import LabelSet, tag_set_f1

TOP_TAGS = 10
TOP_IMAGES = 5


class CompareError(RamEdgeError):
    """Two models, or a model and a reference file, cannot be compared: no tag or image in common, shapes that do not
    match, a reference file that is not `ram-edge tag --json` output."""


@dataclass
class ImageChange:
    """One image whose tags changed against the reference (or whose probabilities moved)."""

    image: str | None
    index: int  # row in the compared matrices
    tag_set_f1: float
    max_abs_diff: float | None  # None where the reference holds no probabilities
    gained: list[str]
    lost: list[str]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return {"image": self.image, "tag_set_f1": self.tag_set_f1, "max_abs_diff": self.max_abs_diff,
                "gained": list(self.gained), "lost": list(self.lost)}


@dataclass
class Agreement:
    """A model against a reference on the same images and tags (fractions in [0, 1], |Δp| in probability units)."""

    images: int
    tags: list[str]  # the tags compared, in the reference's order
    tag_set_f1: float  # mean over images
    identical_sets: float  # share of images with identical tag sets
    identical_images: int
    max_abs_diff: float | None  # None where the reference holds no probabilities (a `tag --json` file)
    p99_abs_diff: float | None
    gained: list[tuple[str, int]]  # most often gained tags, count descending
    lost: list[tuple[str, int]]
    changed_images: list[ImageChange]
    reference_only: list[str] = field(default_factory=list)  # tags of the reference not compared
    model_only: list[str] = field(default_factory=list)
    f1_per_image: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (no per-image arrays)."""
        return {
            "images": self.images,
            "tags_compared": len(self.tags),
            "tag_set_f1": self.tag_set_f1,
            "identical_sets": self.identical_sets,
            "identical_images": self.identical_images,
            "max_abs_diff": self.max_abs_diff,
            "p99_abs_diff": self.p99_abs_diff,
            "gained": [{"tag": t, "count": c} for t, c in self.gained],
            "lost": [{"tag": t, "count": c} for t, c in self.lost],
            "changed_images": [c.to_dict() for c in self.changed_images],
            "tags_only_in_reference": list(self.reference_only),
            "tags_only_in_model": list(self.model_only),
        }


def common_tags(tag_lists: Sequence[Sequence[str]], names: Sequence[str] | None = None) -> list[str]:
    """The tags present in every list, in the first list's order; CompareError naming the models when there is none."""
    if not tag_lists:
        raise CompareError("no tag lists to compare; give at least two models")
    others = [set(tags) for tags in tag_lists[1:]]
    common = [t for t in dict.fromkeys(tag_lists[0]) if all(t in s for s in others)]
    if not common:
        names = list(names) if names is not None else [f"model {i + 1}" for i in range(len(tag_lists))]
        described = "; ".join(f"{n}: {len(tags)} tags, e.g. {', '.join(repr(t) for t in list(tags)[:3])}"
                              for n, tags in zip(names, tag_lists))
        raise CompareError(f"{' and '.join(names)} have no tag in common ({described}); tags are matched by exact name, "
                           "so compare models of the same tag list (or a subset bundle with the model it was cut from)")
    return common


def _top_counts(counts: np.ndarray, tags: Sequence[str], top: int) -> list[tuple[str, int]]:
    """The `top` tags with the highest non-zero counts (ties in tag order)."""
    order = np.lexsort((np.arange(len(counts)), -counts))
    return [(tags[i], int(counts[i])) for i in order[:top] if counts[i] > 0]


def compare_fired(
    reference_fired: np.ndarray,
    fired: np.ndarray,
    tags: Sequence[str],
    *,
    abs_diff: np.ndarray | None = None,
    images: Sequence[str | Path | None] | None = None,
    top_tags: int = TOP_TAGS,
    top_images: int = TOP_IMAGES,
) -> Agreement:
    """Agreement of two boolean (N images, T tags) tag sets over the same `tags`, with |Δp| where `abs_diff` is given."""
    ref = np.asarray(reference_fired, dtype=bool)
    got = np.asarray(fired, dtype=bool)
    tags = list(tags)
    if ref.ndim != 2 or ref.shape != got.shape or ref.shape[1] != len(tags):
        raise CompareError(f"tag sets of shape {ref.shape} (reference) and {got.shape} (model) over {len(tags)} tags "
                           "cannot be compared; give both as (images, tags) matrices over the same tags")
    n = ref.shape[0]
    if n == 0:
        raise CompareError("no image to compare; give at least one image that both models tagged")
    names = [None] * n if images is None else [None if i is None else str(i) for i in images]
    if len(names) != n:
        raise CompareError(f"{len(names)} image names for {n} rows; give one name per row")
    diff = None
    if abs_diff is not None:
        diff = np.asarray(abs_diff)
        if diff.shape != ref.shape:
            raise CompareError(f"|Δp| has shape {diff.shape} but the tag sets {ref.shape}; give one value per image and tag")
    f1 = tag_set_f1(ref, got)
    same = np.all(ref == got, axis=1)
    gained_mask, lost_mask = got & ~ref, ref & ~got
    row_max = diff.max(axis=1) if diff is not None and diff.size else np.zeros(n)
    top_diff = p99_diff = None
    if diff is not None:
        top_diff = float(diff.max()) if diff.size else 0.0
        p99_diff = float(np.percentile(diff, 99)) if diff.size else 0.0
    # An image whose tag set held but whose probabilities moved still ranks, below every image whose set changed.
    moved = np.flatnonzero(~same | (row_max > 0))
    order = moved[np.lexsort((moved, -row_max[moved], f1[moved]))][:top_images]
    changed = [
        ImageChange(names[i], int(i), float(f1[i]), float(row_max[i]) if diff is not None else None,
                    [tags[j] for j in np.flatnonzero(gained_mask[i])], [tags[j] for j in np.flatnonzero(lost_mask[i])])
        for i in order
    ]
    return Agreement(
        images=n,
        tags=tags,
        tag_set_f1=float(f1.mean()),
        identical_sets=float(same.mean()),
        identical_images=int(same.sum()),
        max_abs_diff=top_diff,
        p99_abs_diff=p99_diff,
        gained=_top_counts(gained_mask.sum(axis=0), tags, top_tags),
        lost=_top_counts(lost_mask.sum(axis=0), tags, top_tags),
        changed_images=changed,
        f1_per_image=f1,
    )


def _finite_probs(probs: Any, labels: LabelSet, what: str) -> np.ndarray:
    """A float32 (N, C) matrix for `labels`, without NaN rows (those of failed images must be dropped first)."""
    arr = np.asarray(probs, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[1] != len(labels):
        raise CompareError(f"{what} has shape {arr.shape}; expected (images, {len(labels)}) for its tag list of "
                           f"{len(labels)} tags")
    if arr.size and not np.isfinite(arr).all():
        raise CompareError(f"{what} holds NaN or infinite values; drop the rows of images that failed first")
    return arr


def compare_scores(
    reference_probs: np.ndarray,
    probs: np.ndarray,
    labels: LabelSet,
    reference_labels: LabelSet | None = None,
    *,
    tags: Sequence[str] | None = None,
    images: Sequence[str | Path | None] | None = None,
    top_tags: int = TOP_TAGS,
    top_images: int = TOP_IMAGES,
) -> Agreement:
    """Agreement of a model's (N, C) probabilities with a reference's on the same N images.

    `labels` is the model's label set, `reference_labels` the reference's (default: the same); each fires by its own
    thresholds. `tags` (default: those the two share) chooses the tags compared.
    """
    reference_labels = labels if reference_labels is None else reference_labels
    ref = _finite_probs(reference_probs, reference_labels, "reference probabilities")
    got = _finite_probs(probs, labels, "probabilities")
    if ref.shape[0] != got.shape[0]:
        raise CompareError(f"the reference has {ref.shape[0]} image rows and the model {got.shape[0]}; give the "
                           "probabilities of the same images, in the same order")
    if tags is None:
        tags = common_tags([reference_labels.tags, labels.tags], ["the reference", "the model"])
    tags = list(tags)
    ref_cols = np.array([reference_labels.index_of(t) for t in tags], dtype=np.int64)
    cols = np.array([labels.index_of(t) for t in tags], dtype=np.int64)
    agreement = compare_fired(reference_labels.fired(ref)[:, ref_cols], labels.fired(got)[:, cols], tags,
                              abs_diff=np.abs(got[:, cols] - ref[:, ref_cols]), images=images, top_tags=top_tags,
                              top_images=top_images)
    compared = set(tags)
    agreement.reference_only = [t for t in dict.fromkeys(reference_labels.tags) if t not in compared]
    agreement.model_only = [t for t in dict.fromkeys(labels.tags) if t not in compared]
    return agreement


# --- reference answers: the JSON lines `ram-edge tag --json` prints (and `tag --output` writes) ---------------------

@dataclass
class TagAnswer:
    """One image's answer in a reference file: its tag names, or the error the reference met on it."""

    image: str
    tags: list[str] | None
    error: str | None = None
    line: int = 0


def _record_kind(record: Any) -> str | None:
    """'tag-json' for a `tag --json` record (tag objects or an error), 'names' for eval data, None when undecided."""
    if not isinstance(record, dict) or "image" not in record:
        return None
    if "error" in record and "tags" not in record:
        return "tag-json"
    tags = record.get("tags")
    if isinstance(tags, list) and tags:
        if all(isinstance(t, dict) for t in tags):
            return "tag-json"
        if all(isinstance(t, str) for t in tags):
            return "names"
    return None


def is_tag_json(path: str | Path) -> bool:
    """True when `path` is a JSONL file of `ram-edge tag --json` records (tag objects or errors), not eval data."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    continue
                try:
                    kind = _record_kind(json.loads(line))
                except ValueError:
                    return False
                if kind is not None:
                    return kind == "tag-json"
                if not line.lstrip().startswith("{"):
                    return False
    except (OSError, UnicodeDecodeError):
        return False
    return False


def read_tag_answers(path: str | Path) -> list[TagAnswer]:
    """Read a reference file of `ram-edge tag --json` records ({"image", "tags": [{"tag", "score"}]} or
    {"image", "error"}); {"image", "tags": [names]} lines (eval data) are read too."""
    from .fileio import iter_text_lines

    path = Path(path)
    fix = "pass the JSONL that `ram-edge tag --json` prints (or `tag --output` writes), or a model"
    answers = []
    for lineno, line in iter_text_lines(path, what="reference tags file", error=CompareError):
        if not line.strip():
            continue
        where = f"{path}, line {lineno}"
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise CompareError(f"{where}: not valid JSON ({exc}); {fix}") from None
        if not isinstance(record, dict) or not isinstance(record.get("image"), str) or not record["image"]:
            raise CompareError(f"{where}: expected an object with an \"image\" path; {fix}")
        if "tags" not in record and isinstance(record.get("error"), str):
            answers.append(TagAnswer(record["image"], None, record["error"], lineno))
            continue
        tags = record.get("tags")
        names: list[Any] | None = None
        if isinstance(tags, list):
            names = [t.get("tag") if isinstance(t, dict) else t for t in tags]
        if names is None or not all(isinstance(t, str) and t for t in names):
            raise CompareError(f"{where}: \"tags\" must be a list of {{\"tag\": name, \"score\": p}} objects (or of tag "
                               f"names); {fix}")
        answers.append(TagAnswer(record["image"], names, None, lineno))
    if not answers:
        raise CompareError(f"{path}: holds no image; {fix}")
    return answers


def path_key(path: str | Path) -> str:
    """One spelling per file (absolute, symbolic links resolved), to match images named differently."""
    return os.path.normcase(os.path.realpath(path))


def answer_image(image: str, base: str | Path | None = None) -> str:
    """The file an answer's image names: as `ram-edge tag` printed it (relative to the folder it ran in, taken to be
    the current one), else relative to `base` (the answers file's folder) where only that exists."""
    path = Path(image)
    if path.is_absolute() or path.exists() or base is None or not (Path(base) / path).exists():
        return image
    return str(Path(base) / path)


def match_answers(images: Sequence[str | Path], answers: Sequence[TagAnswer], base: str | Path | None = None) -> list[int | None]:
    """For each image, the index of its answer (None: no answer), matched by path.

    A relative path in the reference is read as `ram-edge tag` printed it, relative to the folder it ran in: the
    current folder, else `base` (the reference file's folder). A later answer for the same image replaces an earlier.
    """
    keys: dict[str, int] = {}
    for i, answer in enumerate(answers):
        p = Path(answer.image)
        spellings = [p] if p.is_absolute() else [Path.cwd() / p] + ([Path(base) / p] if base is not None else [])
        for spelling in spellings:
            keys[path_key(spelling)] = i
    return [keys.get(path_key(image)) for image in images]


def answers_fired(answers: Sequence[TagAnswer], tags: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Boolean (N answers, T tags) tag sets of answers that hold tags, over `tags`; and the answers' tags not in `tags`
    (first seen order), which cannot be compared."""
    col = {t: j for j, t in enumerate(tags)}
    fired = np.zeros((len(answers), len(tags)), dtype=bool)
    unknown: dict[str, None] = {}
    for i, answer in enumerate(answers):
        for name in answer.tags or ():
            j = col.get(name)
            if j is None:
                unknown[name] = None
            else:
                fired[i, j] = True
    return fired, list(unknown)


def json_safe(value: Any) -> Any:
    """Replace NaN/inf by None and numpy scalars by Python numbers, recursively (for json.dumps)."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
