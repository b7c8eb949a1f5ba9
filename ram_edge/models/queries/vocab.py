"""Open-set vocabularies: read a tag list and turn it into RAM / RAM++ ``label_embed`` rows.

The recognition decoder of RAM and RAM++ forms its label queries from CLIP ViT-B/16 text
embeddings of the tags. To tag with a new vocabulary, new embeddings are computed here with a
Hugging Face CLIP text tower (``CLIPTextModelWithProjection``, whose ``text_embeds`` are what
OpenAI CLIP's ``encode_text`` returns: the final-LayerNorm state at the end-of-text token,
times ``text_projection``).

Facts from the official repository, xinyu1205/recognize-anything:

* ``ram/utils/openset_utils.py`` (commit 0523756b; ``models/openset_utils.py`` at 1a7a4128 holds
  the same templates and code), ``build_openset_label_embedding`` (RAM):

  - templates: ``multiple_templates``, the 63 strings of :data:`PROMPT_TEMPLATES`, each with a
    ``{}`` slot for the tag and some with an ``{article}`` slot. (``single_template = ["a photo of
    a {}."]`` is defined there but not used.)
  - the tag goes in as ``processed_name(tag, rm_dot=True)``: ``_`` -> space, ``/`` -> `` or ``,
    lower-cased, trailing dots stripped. ``{article}`` is ``"an"`` if the *unprocessed* tag's
    first character is one of ``aeiou`` (case-sensitive, so ``"Aerial photography"`` gets
    ``"a"``), else ``"a"``.
  - every formatted text starting with ``"a"`` or ``"the"`` is prefixed with ``"This is "``.
  - ``clip.tokenize(texts)`` (no truncation), ``encode_text``; each template's embedding is
    L2-normalised (``x / x.norm()``, no epsilon), the mean over templates is taken and
    L2-normalised again. One row per tag.

* same file, ``build_openset_llm_label_embedding`` (RAM++): input is the JSON of
  ``datasets/openimages_rare_200/openimages_rare_200_llm_tag_descriptions.json``, a *list* of
  one-key objects ``{tag: [descriptions]}``. The descriptions are used verbatim (no template,
  no name processing), tokenised with ``clip.tokenize(des, truncate=True)``, each embedding
  L2-normalised, **averaged over all of the tag's descriptions and renormalised: one row per
  tag**, whatever the number of descriptions. The official open-set path therefore sets
  ``label_embed`` to (num_tags, 512) and the model's ``des_per_class = rows // num_class`` becomes
  1, so the per-image softmax reweighting is a no-op. Here that is ``per_tag=1``.
  The released checkpoint instead stores 51 rows per tag, class-major
  (``ram/models/ram_plus.py``: ``torch.zeros(self.num_class * 51, 512)``; ``batch_inference.py``
  reshapes it to ``(num_class, 51, 512)``). ``generate_tag_des_llm.py`` shows where 51 comes from:
  ``"a photo of a {tag}."`` followed by 5 LLM prompts x 10 answers. How those 51 rows were
  embedded is not in the repository; ``per_tag > 1`` here gives one L2-normalised CLIP embedding
  per description, the same per-text normalisation as above.
  The official code never pads or truncates a description list. Here, for ``per_tag > 1``, a
  shorter list is repeated cyclically and a longer one truncated to its first ``per_tag``
  entries (repeats weigh more in the softmax mix; that is the price of a fixed row count).

* default threshold for new tags: ``inference_ram_openset.py`` (commit 256069e2) and
  ``inference_ram_plus_openset.py`` (commit f43e1327) set ``model.class_threshold =
  torch.ones(model.num_class) * 0.5`` ("the threshold for unseen categories is often lower");
  ``batch_inference.py`` (commit 0523756b, ``load_thresholds``) returns ``[0.5] * num_classes``
  for ``--open-set``. Hence :data:`DEFAULT_OPEN_SET_THRESHOLD` = 0.5 (the closed-set default is
  0.68).

Choices of ram-edge where the official code has nothing to say:

* tags without descriptions in a RAM++ vocabulary get the RAM prompt-ensemble embedding, repeated
  ``per_tag`` times (all rows equal, so the softmax mix returns exactly that embedding).
* prompts too long for the 77-token context are truncated like the descriptions (the official
  RAM path would raise instead).
* the official code runs CLIP on the GPU in fp16 (``clip.load`` on CUDA); this runs fp32 on the
  CPU, so expect differences of order 1e-3 against embeddings made there. The Hugging Face
  tokenizer (fast, or slow without ``ftfy``) matches OpenAI's for ordinary text.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ram_edge.errors import ExportError, LabelError
from ram_edge.labels import read_lines

# Official open-set threshold for tags the model was not trained on (see module docstring).
DEFAULT_OPEN_SET_THRESHOLD = 0.5

# The official `multiple_templates`, verbatim and in order.
PROMPT_TEMPLATES: tuple[str, ...] = (
    "There is {article} {} in the scene.",
    "There is the {} in the scene.",
    "a photo of {article} {} in the scene.",
    "a photo of the {} in the scene.",
    "a photo of one {} in the scene.",
    "itap of {article} {}.",
    "itap of my {}.",
    "itap of the {}.",
    "a photo of {article} {}.",
    "a photo of my {}.",
    "a photo of the {}.",
    "a photo of one {}.",
    "a photo of many {}.",
    "a good photo of {article} {}.",
    "a good photo of the {}.",
    "a bad photo of {article} {}.",
    "a bad photo of the {}.",
    "a photo of a nice {}.",
    "a photo of the nice {}.",
    "a photo of a cool {}.",
    "a photo of the cool {}.",
    "a photo of a weird {}.",
    "a photo of the weird {}.",
    "a photo of a small {}.",
    "a photo of the small {}.",
    "a photo of a large {}.",
    "a photo of the large {}.",
    "a photo of a clean {}.",
    "a photo of the clean {}.",
    "a photo of a dirty {}.",
    "a photo of the dirty {}.",
    "a bright photo of {article} {}.",
    "a bright photo of the {}.",
    "a dark photo of {article} {}.",
    "a dark photo of the {}.",
    "a photo of a hard to see {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of {article} {}.",
    "a low resolution photo of the {}.",
    "a cropped photo of {article} {}.",
    "a cropped photo of the {}.",
    "a close-up photo of {article} {}.",
    "a close-up photo of the {}.",
    "a jpeg corrupted photo of {article} {}.",
    "a jpeg corrupted photo of the {}.",
    "a blurry photo of {article} {}.",
    "a blurry photo of the {}.",
    "a pixelated photo of {article} {}.",
    "a pixelated photo of the {}.",
    "a black and white photo of the {}.",
    "a black and white photo of {article} {}.",
    "a plastic {}.",
    "the plastic {}.",
    "a toy {}.",
    "the toy {}.",
    "a plushie {}.",
    "the plushie {}.",
    "a cartoon {}.",
    "the cartoon {}.",
    "an embroidered {}.",
    "the embroidered {}.",
    "a painting of the {}.",
    "a painting of a {}.",
)

CLIP_MODEL_TYPES = ("clip", "clip_text_model")
_GET_CLIP = (
    "download the CLIP ViT-B/16 weights the released models were built with, e.g. "
    "`huggingface-cli download openai/clip-vit-base-patch16 --local-dir DIR`, and pass DIR"
)


# --------------------------------------------------------------------------- reading a vocabulary


def read_vocab(path: str | Path) -> tuple[list[str], dict[str, list[str]] | None]:
    """Read a tag list (text, or JSON list / tag->descriptions object) as (tags, descriptions or None)."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        tags, descriptions = _read_json_vocab(path)
    else:
        tags, descriptions = _read_text_vocab(path), None
    if not tags:
        raise LabelError(f"{path}: no tags found; put one tag per line (or a JSON list / object of tags)")
    return tags, descriptions


def _read_text_vocab(path: Path) -> list[str]:
    tags: list[str] = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(read_lines(path), start=1):
        tag = line.strip()
        if not tag:
            continue
        if tag in first_line:
            raise LabelError(
                f"{path}, line {number}: duplicate tag {tag!r} (first on line {first_line[tag]}); "
                "each tag may appear once"
            )
        first_line[tag] = number
        tags.append(tag)
    return tags


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.load would silently keep the last of two equal keys, dropping a tag's descriptions.
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


class _DuplicateKey(Exception):
    pass


def _read_json_vocab(path: Path) -> tuple[list[str], dict[str, list[str]] | None]:
    from ram_edge.fileio import read_text

    text = read_text(path, what="vocabulary", error=LabelError)
    try:
        data = json.loads(text, object_pairs_hook=_reject_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise LabelError(f"{path}, line {exc.lineno} column {exc.colno}: invalid JSON ({exc.msg})") from None
    except _DuplicateKey as exc:
        raise LabelError(f"{path}: duplicate tag {exc.args[0]!r} in a JSON object; each tag may appear once") from None

    # Three accepted shapes: {tag: [desc, ...]}, [tag, ...] and the official [{tag: [desc, ...]}, ...].
    entries: list[tuple[str, Any, str]] = []
    has_descriptions = isinstance(data, dict)
    if isinstance(data, dict):
        entries = [(key, value, f"key {key!r}") for key, value in data.items()]
    elif isinstance(data, list):
        for i, item in enumerate(data):
            if isinstance(item, str):
                entries.append((item, None, f"entry {i}"))
            elif isinstance(item, dict):
                has_descriptions = True
                entries.extend((key, value, f"entry {i}, key {key!r}") for key, value in item.items())
            else:
                raise LabelError(
                    f"{path}, entry {i}: expected a tag string or an object {{tag: [descriptions]}}, "
                    f"got {type(item).__name__}"
                )
    else:
        raise LabelError(
            f"{path}: top level is a JSON {type(data).__name__}; expected a list of tags or an object "
            "mapping each tag to a list of description strings"
        )

    tags: list[str] = []
    descriptions: dict[str, list[str]] = {}
    seen: dict[str, str] = {}
    for raw, value, where in entries:
        tag = raw.strip()
        if not tag:
            raise LabelError(f"{path}, {where}: empty tag name")
        if tag.splitlines() != [tag]:
            raise LabelError(f"{path}, {where}: tag {tag!r} contains a line break; tag names are one line")
        if tag in seen:
            raise LabelError(f"{path}, {where}: duplicate tag {tag!r} (first at {seen[tag]}); each tag may appear once")
        seen[tag] = where
        tags.append(tag)
        if value is None:
            continue
        if not isinstance(value, list):
            raise LabelError(
                f"{path}, {where}: descriptions must be a list of strings, got {type(value).__name__}"
            )
        for j, desc in enumerate(value):
            if not isinstance(desc, str) or not desc.strip():
                raise LabelError(f"{path}, {where}, description {j}: must be a non-empty string, got {desc!r}")
        if value:
            descriptions[tag] = list(value)
    return tags, (descriptions if has_descriptions else None)


# --------------------------------------------------------------------------- prompts


def _processed_name(tag: str) -> str:
    return tag.replace("_", " ").replace("/", " or ").lower().rstrip(".")


def _article(tag: str) -> str:
    # Case-sensitive on the unprocessed name, as upstream: "Apple" gets "a".
    return "an" if tag[0] in "aeiou" else "a"


def format_prompts(tag: str, templates: Sequence[str] = PROMPT_TEMPLATES) -> list[str]:
    """The texts the official RAM open-set code embeds for `tag`, one per template."""
    if not tag:
        raise LabelError("empty tag name; every tag needs at least one character")
    name, article = _processed_name(tag), _article(tag)
    texts = [template.format(name, article=article) for template in templates]
    return ["This is " + t if t.startswith("a") or t.startswith("the") else t for t in texts]


# --------------------------------------------------------------------------- text encoder


def clip_tower_config(model_dir: str | Path, tower: str):
    """The text or vision sub-config of a full CLIP checkpoint, carrying the top-level projection_dim."""
    from transformers import CLIPConfig

    full = CLIPConfig.from_pretrained(model_dir, local_files_only=True)
    # The sub-config alone would fall back to projection_dim 512 and mis-size the projection.
    sub = full.text_config if tower == "text" else full.vision_config
    sub.projection_dim = full.projection_dim
    return sub


class ClipTextEncoder:
    """A local Hugging Face CLIP text tower (with projection) on the CPU, fp32, eval mode."""

    def __init__(self, model_dir: str | Path) -> None:
        """Load model and tokenizer from `model_dir` without touching the network."""
        model_dir = Path(model_dir)
        self.model_dir = model_dir
        if not model_dir.is_dir():
            raise ExportError(f"CLIP text model directory {model_dir} not found; {_GET_CLIP}")
        config_path = model_dir / "config.json"
        if not config_path.is_file():
            raise ExportError(
                f"{model_dir} has no config.json, so it is not a Hugging Face model directory; {_GET_CLIP}"
            )
        try:
            model_type = json.loads(config_path.read_text(encoding="utf-8")).get("model_type")
        except (OSError, ValueError, AttributeError) as exc:
            raise ExportError(f"{config_path}: unreadable ({exc}); {_GET_CLIP}") from None
        if model_type not in CLIP_MODEL_TYPES:
            raise ExportError(
                f"{model_dir} holds a {model_type!r} model, not a CLIP text model "
                f"(model_type one of {', '.join(CLIP_MODEL_TYPES)}); {_GET_CLIP}"
            )
        try:
            import torch
            from transformers import AutoTokenizer, CLIPTextModelWithProjection
        except ImportError as exc:
            raise ExportError(
                f"computing tag embeddings needs torch and transformers ({exc}); "
                "install them with: pip install 'ram-edge[export]'"
            ) from None
        self._torch = torch
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        except Exception as exc:  # transformers raises OSError, ValueError or others by file
            raise ExportError(
                f"{model_dir}: cannot load the CLIP tokenizer ({type(exc).__name__}: {exc}); the directory needs "
                f"vocab.json + merges.txt or tokenizer.json; {_GET_CLIP}"
            ) from None
        try:
            text_config = clip_tower_config(model_dir, "text") if model_type == "clip" else None
            model = CLIPTextModelWithProjection.from_pretrained(
                model_dir, config=text_config, local_files_only=True
            )
        except Exception as exc:
            raise ExportError(
                f"{model_dir}: cannot load CLIPTextModelWithProjection ({type(exc).__name__}: {exc}); {_GET_CLIP}"
            ) from None
        self.model = model.to(device="cpu", dtype=torch.float32).eval()
        self.max_length = int(
            min(self.model.config.max_position_embeddings, getattr(self.tokenizer, "model_max_length", 10**9))
        )

    @property
    def dim(self) -> int:
        """Width of the projected embeddings (512 for CLIP ViT-B/16)."""
        return int(self.model.config.projection_dim)

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Projected text embeddings, each L2-normalised: (len(texts), dim) float32."""
        if isinstance(texts, str):
            raise TypeError("encode() takes a list of strings, not one string")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        torch = self._torch
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                chunk = list(texts[start:start + batch_size])
                # Truncation keeps [BOS, first 75 tokens, EOS], as clip.tokenize(truncate=True) does.
                batch = self.tokenizer(
                    chunk, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
                )
                emb = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).text_embeds
                emb = emb / emb.norm(dim=-1, keepdim=True)
                out[start:start + len(chunk)] = emb.float().numpy()
        return out


# --------------------------------------------------------------------------- label embeddings


def _unit_mean(rows: np.ndarray) -> np.ndarray:
    mean = rows.mean(axis=-2)
    return (mean / np.linalg.norm(mean, axis=-1, keepdims=True)).astype(np.float32)


def tag_embeddings(
    encoder: ClipTextEncoder, tags: Sequence[str], templates: Sequence[str] = PROMPT_TEMPLATES
) -> np.ndarray:
    """RAM label_embed for `tags`: prompt-ensembled, unit-norm rows, (len(tags), dim) float32."""
    if not templates:
        raise ValueError("templates is empty; pass at least one prompt template")
    texts = [text for tag in tags for text in format_prompts(tag, templates)]
    if not texts:
        return np.zeros((0, encoder.dim), dtype=np.float32)
    emb = encoder.encode(texts).reshape(len(tags), len(templates), -1)
    return _unit_mean(emb)


def description_embeddings(
    encoder: ClipTextEncoder,
    tags: Sequence[str],
    descriptions: dict[str, list[str]],
    per_tag: int = 51,
) -> np.ndarray:
    """RAM++ label_embed, class-major: rows per_tag*c ... per_tag*c+per_tag-1 belong to tags[c]."""
    if per_tag < 1:
        raise ValueError(f"per_tag must be >= 1, got {per_tag}")
    # One encode call for all descriptions keeps batches full.
    described = [tag for tag in tags if descriptions.get(tag)]
    texts = [desc for tag in described for desc in descriptions[tag]]
    encoded = encoder.encode(texts) if texts else np.zeros((0, encoder.dim), dtype=np.float32)
    undescribed = [tag for tag in tags if not descriptions.get(tag)]
    fallback = dict(zip(undescribed, tag_embeddings(encoder, undescribed))) if undescribed else {}

    out = np.empty((len(tags) * per_tag, encoder.dim), dtype=np.float32)
    offsets: dict[str, tuple[int, int]] = {}
    pos = 0
    for tag in described:
        offsets[tag] = (pos, len(descriptions[tag]))
        pos += len(descriptions[tag])
    for c, tag in enumerate(tags):
        rows = out[c * per_tag:(c + 1) * per_tag]
        if tag in fallback:
            rows[:] = fallback[tag]
            continue
        start, count = offsets[tag]
        own = encoded[start:start + count]
        if per_tag == 1:
            rows[:] = _unit_mean(own)  # the official open-set RAM++ embedding
        else:
            rows[:] = own[np.arange(per_tag) % count]
    return out
