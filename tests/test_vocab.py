"""Open-set vocabularies: reading tag lists and computing RAM / RAM++ label embeddings.

The encoder tests build a tiny random CLIP text tower and a byte-level tokenizer in a temp
folder: no download, no network.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from ram_edge.errors import ExportError, LabelError
from ram_edge.models.queries.vocab import (
    DEFAULT_OPEN_SET_THRESHOLD,
    PROMPT_TEMPLATES,
    description_embeddings,
    format_prompts,
    read_vocab,
    tag_embeddings,
)
from conftest import REPO, require_shared
from tiny_clip import need_transformers as _need_transformers, tiny_text_config as _tiny_text_config

DIM = 16


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory):
    """A saved tiny random CLIPTextModelWithProjection with its tokenizer."""
    transformers = _need_transformers()
    import torch

    path = tmp_path_factory.mktemp("tiny_clip")
    config = transformers.CLIPTextConfig(projection_dim=DIM, **_tiny_text_config(path))
    torch.manual_seed(0)
    transformers.CLIPTextModelWithProjection(config).eval().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def encoder(clip_dir):
    from ram_edge.models.queries.vocab import ClipTextEncoder

    return ClipTextEncoder(clip_dir)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# --------------------------------------------------------------------------- constants and prompts


def test_constants_match_official():
    assert len(PROMPT_TEMPLATES) == 63
    assert PROMPT_TEMPLATES[0] == "There is {article} {} in the scene."
    assert PROMPT_TEMPLATES[-1] == "a painting of a {}."
    assert DEFAULT_OPEN_SET_THRESHOLD == 0.5


def test_format_prompts_follows_official_rules():
    prompts = format_prompts("apple")
    assert len(prompts) == len(PROMPT_TEMPLATES)
    assert prompts[0] == "There is an apple in the scene."  # "There" is not prefixed
    assert "This is a photo of an apple." in prompts
    assert "itap of my apple." in prompts
    assert "This is the toy apple." in prompts
    assert "This is an embroidered apple." in prompts
    # article looks at the unprocessed, case-sensitive name; the name itself is lower-cased
    assert format_prompts("Aerial photography")[0] == "There is a aerial photography in the scene."
    assert format_prompts("hot_dog/sausage.", ["a {}."]) == ["This is a hot dog or sausage."]


# --------------------------------------------------------------------------- read_vocab


def test_read_text_vocab(tmp_path):
    path = tmp_path / "tags.txt"
    path.write_text("  cat \n\n dog\r\n\t\nhot dog\n", encoding="utf-8")
    assert read_vocab(path) == (["cat", "dog", "hot dog"], None)


def test_read_text_vocab_duplicate_names_line(tmp_path):
    path = tmp_path / "tags.txt"
    path.write_text("cat\ndog\n\n cat\n", encoding="utf-8")
    with pytest.raises(LabelError, match=r"tags\.txt, line 4: duplicate tag 'cat' \(first on line 1\)"):
        read_vocab(path)


@pytest.mark.parametrize("name,text", [("empty.txt", ""), ("blank.txt", "\n  \n"), ("empty.json", "[]"), ("empty_obj.json", "{}")])
def test_read_vocab_empty(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(LabelError, match=rf"{name}: no tags found"):
        read_vocab(path)


def test_read_vocab_missing_file(tmp_path):
    with pytest.raises(LabelError, match="file not found"):
        read_vocab(tmp_path / "nope.txt")
    with pytest.raises(LabelError, match="file not found"):
        read_vocab(tmp_path / "nope.json")


def test_read_json_vocab_shapes(tmp_path):
    obj = tmp_path / "obj.json"
    obj.write_text(json.dumps({"cat": ["a small pet.", "it purrs."], " dog ": [], "fish": ["it swims."]}), encoding="utf-8")
    assert read_vocab(obj) == (["cat", "dog", "fish"], {"cat": ["a small pet.", "it purrs."], "fish": ["it swims."]})

    plain = tmp_path / "list.json"
    plain.write_text(json.dumps(["cat", "dog"]), encoding="utf-8")
    assert read_vocab(plain) == (["cat", "dog"], None)

    official = tmp_path / "official.json"  # the layout of the official LLM description files
    official.write_text(json.dumps([{"cat": ["x", "y"]}, {"dog": ["z"]}, "fish"]), encoding="utf-8")
    assert read_vocab(official) == (["cat", "dog", "fish"], {"cat": ["x", "y"], "dog": ["z"]})


@pytest.mark.parametrize(
    "text,message",
    [
        ('{"cat": ["x"],\n "dog": ', r"line 2 column \d+: invalid JSON"),
        ('{"cat": ["x"], "cat": ["y"]}', "duplicate tag 'cat' in a JSON object"),
        ('[{"cat": ["x"]}, "cat"]', r"entry 1: duplicate tag 'cat'"),
        ('{"cat": "a small pet"}', "descriptions must be a list of strings"),
        ('{"cat": ["ok", 3]}', "description 1: must be a non-empty string"),
        ('{"cat": ["  "]}', "description 0: must be a non-empty string"),
        ('[" "]', "empty tag name"),
        ('[1, 2]', "entry 0: expected a tag string"),
        ('"cat"', "top level is a JSON str"),
    ],
)
def test_read_json_vocab_errors(tmp_path, text, message):
    path = tmp_path / "vocab.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(LabelError, match=message) as info:
        read_vocab(path)
    assert "vocab.json" in str(info.value)


def test_read_official_description_file():
    path = require_shared(
        "official-data", "datasets", "openimages_rare_200", "openimages_rare_200_llm_tag_descriptions.json"
    )
    tags, descriptions = read_vocab(path)
    assert len(tags) == 200 and tags[0] == "Aerial photography"
    assert set(descriptions) == set(tags)
    assert {len(d) for d in descriptions.values()} == {51}
    assert descriptions["Aerial photography"][0] == "a photo of a aerial photography."


def test_module_import_is_light():
    code = "import sys, ram_edge.models.queries.vocab; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# --------------------------------------------------------------------------- encoder


def test_missing_or_wrong_model_dir(tmp_path):
    from ram_edge.models.queries.vocab import ClipTextEncoder

    with pytest.raises(ExportError, match=r"not found; download .*clip-vit-base-patch16"):
        ClipTextEncoder(tmp_path / "absent")
    with pytest.raises(ExportError, match="no config.json"):
        ClipTextEncoder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}), encoding="utf-8")
    with pytest.raises(ExportError, match="holds a 'bert' model, not a CLIP text model"):
        ClipTextEncoder(tmp_path)


def test_config_without_weights(tmp_path, clip_dir):
    from ram_edge.models.queries.vocab import ClipTextEncoder

    for name in ("config.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        if (clip_dir / name).exists():
            (tmp_path / name).write_bytes((clip_dir / name).read_bytes())
    with pytest.raises(ExportError, match="cannot load CLIPTextModelWithProjection"):
        ClipTextEncoder(tmp_path)


def test_encode_shape_norm_determinism(clip_dir, encoder):
    from ram_edge.models.queries.vocab import ClipTextEncoder

    texts = ["a cat.", "This is a photo of a very long dog " * 20, "x"]
    emb = encoder.encode(texts)
    assert emb.shape == (3, DIM) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)
    assert not np.allclose(emb[0], emb[2])
    np.testing.assert_array_equal(ClipTextEncoder(clip_dir).encode(texts), emb)  # fresh load, same result
    # padding within a batch must not change an embedding
    np.testing.assert_allclose(encoder.encode(texts, batch_size=1), emb, atol=1e-5)
    assert encoder.encode([]).shape == (0, DIM)


def test_tag_embeddings(encoder):
    tags = ["cat", "Aerial photography"]
    emb = tag_embeddings(encoder, tags)
    assert emb.shape == (2, DIM) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)
    # normalise each prompt, average, renormalise
    expected = _unit(encoder.encode(format_prompts("cat")).mean(axis=0))
    np.testing.assert_allclose(emb[0], expected, atol=1e-6)
    one = tag_embeddings(encoder, ["cat"], templates=["a photo of a {}."])
    np.testing.assert_allclose(one[0], encoder.encode(["This is a photo of a cat."])[0], atol=1e-6)


def test_description_embeddings_class_major(encoder):
    tags = ["cat", "dog", "fish"]
    descriptions = {
        "cat": ["a small pet.", "it purrs."],  # fewer than per_tag: repeated cyclically
        "dog": [f"dog description {i}." for i in range(55)],  # more: truncated
    }  # fish has none: prompt-ensemble fallback
    emb = description_embeddings(encoder, tags, descriptions)
    assert emb.shape == (3 * 51, DIM) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)

    cat = encoder.encode(descriptions["cat"])
    np.testing.assert_allclose(emb[0:51], cat[np.arange(51) % 2], atol=1e-5)
    np.testing.assert_allclose(emb[51:102], encoder.encode(descriptions["dog"][:51]), atol=1e-5)
    np.testing.assert_allclose(emb[102:153], np.repeat(tag_embeddings(encoder, ["fish"]), 51, axis=0), atol=1e-6)

    # per_tag=1 is the official open-set RAM++ embedding: mean of all descriptions, renormalised
    official = description_embeddings(encoder, tags, descriptions, per_tag=1)
    assert official.shape == (3, DIM)
    np.testing.assert_allclose(official[0], _unit(cat.mean(axis=0)), atol=1e-6)
    np.testing.assert_allclose(official[1], _unit(encoder.encode(descriptions["dog"]).mean(axis=0)), atol=1e-5)
    np.testing.assert_allclose(official[2], tag_embeddings(encoder, ["fish"])[0], atol=1e-6)

    with pytest.raises(ValueError, match="per_tag"):
        description_embeddings(encoder, tags, descriptions, per_tag=0)


def test_full_clip_checkpoint(tmp_path):
    """A whole CLIPModel folder (as openai/clip-vit-base-patch16 ships) gives get_text_features."""
    transformers = _need_transformers()
    import torch

    from ram_edge.models.queries.vocab import ClipTextEncoder

    text = _tiny_text_config(tmp_path)
    vision = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37, image_size=32, patch_size=16)
    config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)
    torch.manual_seed(1)
    model = transformers.CLIPModel(config).eval()
    model.save_pretrained(tmp_path)

    texts = ["a cat.", "This is a photo of a dog in the scene."]
    emb = ClipTextEncoder(tmp_path).encode(texts)
    tokenizer = transformers.CLIPTokenizer.from_pretrained(tmp_path)
    with torch.no_grad():
        ref = model.get_text_features(**tokenizer(texts, padding=True, return_tensors="pt"))
    np.testing.assert_allclose(emb, _unit(ref.numpy()), atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["ram", "ram_plus"])
def test_export_open_set_vocabulary_end_to_end(clip_dir, tmp_path, family):
    """`ram-edge export --vocab --text-encoder` on a tiny model whose label space is the CLIP's."""
    import torch
    from click.testing import CliRunner

    from ram_edge import Tagger
    from ram_edge.cli.main import cli
    from ram_edge.config import HeadConfig, ModelConfig, PreprocessConfig, SwinConfig
    from ram_edge.models.queries.vocab import ClipTextEncoder, description_embeddings, tag_embeddings
    from ram_edge.labels import LabelSet
    from ram_edge.models import build_model
    from ram_edge.models.checkpoint import save_checkpoint

    des = 51 if family == "ram_plus" else 1
    config = ModelConfig(
        family=family, swin=SwinConfig(image_size=32, embed_dim=8, depths=(1, 1), num_heads=(1, 2), window_size=4),
        head=HeadConfig(hidden_size=16, num_attention_heads=2, intermediate_size=32), num_classes=3,
        embed_dim=16, label_embed_dim=DIM, des_per_class=des, preprocess=PreprocessConfig(image_size=32),
    )
    torch.manual_seed(0)
    model = build_model(config)
    with torch.no_grad():
        model.label_embed.normal_()
    save_checkpoint(model, LabelSet(["a", "b", "c"], None, np.full(3, 0.6, np.float32)), tmp_path / "ckpt")
    (tmp_path / "vocab.txt").write_text("zebra\nhot air balloon\n")
    result = CliRunner().invoke(cli, ["export", str(tmp_path / "ckpt"), "-o", str(tmp_path / "bundle"),
                                      "--vocab", str(tmp_path / "vocab.txt"), "--text-encoder", str(clip_dir), "--json"])
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)
    assert manifest["labels"]["tags"] == ["zebra", "hot air balloon"] and manifest["open_set_vocabulary"] is True
    assert manifest["labels"]["thresholds"] == [0.5, 0.5]
    # The bundle scores the new tags exactly as the torch model with those embeddings would.
    encoder = ClipTextEncoder(clip_dir)
    names = ["zebra", "hot air balloon"]
    embed = description_embeddings(encoder, names, {}, per_tag=des) if family == "ram_plus" else tag_embeddings(encoder, names)
    x = np.random.default_rng(0).uniform(-2, 2, (2, 3, 32, 32)).astype(np.float32)
    from ram_edge.models.tagging_graph import TaggingGraph

    with torch.no_grad():
        expected = TaggingGraph(model, torch.from_numpy(np.asarray(embed, np.float32)))(torch.from_numpy(x)).numpy()
    got = Tagger.load(tmp_path / "bundle", runtime="ort").predict(x)
    assert np.abs(got - expected).max() <= 1e-5
