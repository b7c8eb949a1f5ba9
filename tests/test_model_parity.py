"""Parity with the official implementation on the golden tiny RAM / RAM++ fixtures."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import GOLDEN, require_shared

torch = pytest.importorskip("torch", reason="the torch extra is needed: pip install 'ram-edge[torch]'")

from ram_edge.config import ModelConfig  # noqa: E402
from ram_edge.models import build_model  # noqa: E402
from ram_edge.models.checkpoint import load_checkpoint  # noqa: E402


@pytest.mark.parametrize("name", GOLDEN)
def test_converted_checkpoint_reproduces_official_outputs(converted_golden, name):
    golden = require_shared("golden", name)
    model, info = load_checkpoint(converted_golden[name])
    official = json.loads((golden / "config.json").read_text())
    assert info.config.swin.image_size == official["image_size"]
    assert info.config.family == official["model"]
    inputs = torch.from_numpy(np.load(golden / "inputs.npy"))
    ref = np.load(golden / "outputs.npz")
    with torch.inference_mode():
        visual = model.visual_encoder(inputs)
        embeds = model.image_proj(visual)
        logits = model.forward_head(embeds)
    assert np.abs(visual.numpy() - ref["visual_features"]).max() <= 1e-5
    assert np.abs(embeds.numpy() - ref["image_embeds"]).max() <= 1e-5
    assert np.abs(logits.numpy() - ref["logits"]).max() <= 1e-4
    probs = torch.sigmoid(logits).numpy()
    np.testing.assert_array_equal(info.labels.thresholds, ref["class_threshold"])
    fired = (probs > info.labels.thresholds).astype(np.uint8)
    np.testing.assert_array_equal(fired, ref["tag_mask"])
    if "label_queries" in ref.files:
        with torch.inference_mode():
            queries = model.label_queries(embeds)
        assert np.abs(queries.numpy() - ref["label_queries"]).max() <= 1e-4


@pytest.mark.parametrize("manifest,family", [
    ("manifest_ram_swin_large_384.json", "ram_swin_large_384"),
    ("manifest_ram_swin_base_384.json", "ram_swin_base_384"),
    ("manifest_ram_plus_swin_large_384.json", "ram_plus_swin_large_384"),
])
def test_full_size_model_has_official_tagging_keys_and_shapes(manifest, family):
    from ram_edge.models.presets import load_preset

    data = json.loads(require_shared("golden", manifest).read_text())
    official = {k: tuple(v["shape"]) for k, v in data["keys"].items() if v["path"] == "tagging"}
    config = load_preset(family)
    with torch.device("meta"):  # shapes only: no 1.3 GB of random weights
        model = build_model(config)
    ours = {k: tuple(v.shape) for k, v in model.named_parameters()}
    # The Swin buffers are derived (rebuilt from the config, not saved) but must match in name and shape.
    ours.update({k: tuple(v.shape) for k, v in model.named_buffers()})
    assert ours == official
    assert set(model.state_dict()) == {k for k, v in data["keys"].items() if v["path"] == "tagging" and v["kind"] == "parameter"}


def test_config_json_round_trip():
    from ram_edge.models.presets import load_preset

    config = load_preset("ram_plus_swin_large_384")
    assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert config.des_per_class == 51 and config.swin.num_features == 1536 and config.swin.num_tokens == 144


STEM_LAYERS = {
    "conv": ["Conv2d", "GELU", "Conv2d", "GELU", "Conv2d"],
    "conv_bn": ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d", "ReLU", "Conv2d"],
}


@pytest.mark.parametrize("stem", sorted(STEM_LAYERS))
def test_conv_stem_variant_builds_and_keeps_token_grid(stem):
    from ram_edge.config import HeadConfig, PreprocessConfig, SwinConfig

    swin = SwinConfig(image_size=64, patch_size=8, embed_dim=16, depths=(1, 1), num_heads=(1, 2), window_size=4, stem=stem)
    config = ModelConfig(family="ram", swin=swin, head=HeadConfig(hidden_size=16, num_attention_heads=2, intermediate_size=32),
                         num_classes=5, embed_dim=16, label_embed_dim=8, preprocess=PreprocessConfig(image_size=64))
    model = build_model(config)
    with torch.no_grad():
        tokens = model.forward_features(torch.zeros(2, 3, 64, 64))
    assert tokens.shape == (2, 1 + 4 * 4, 16)  # 64 / 8 = 8x8 patches, merged once to 4x4
    assert [type(m).__name__ for m in model.visual_encoder.patch_embed.proj] == STEM_LAYERS[stem]
    with pytest.raises(Exception, match="power-of-two"):
        SwinConfig(image_size=60, patch_size=6, embed_dim=16, depths=(1,), num_heads=(1,), window_size=10, stem=stem)
    with pytest.raises(Exception, match="unknown stem"):
        SwinConfig(image_size=64, patch_size=8, embed_dim=16, depths=(1,), num_heads=(1,), window_size=8, stem="resnet")
