"""Shared fixtures: the ../shared folder (golden fixtures, official data) and converted models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """The shared data folder: $RAM_EDGE_SHARED, else ../shared beside the repository."""
    return Path(os.environ.get("RAM_EDGE_SHARED", REPO.parent / "shared"))


def require_shared(*parts: str) -> Path:
    """Path under the shared folder, or skip the test with the reason and the fix."""
    path = shared_dir().joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not found: the golden fixtures live in ../shared; set RAM_EDGE_SHARED to the folder holding golden/ and official-data/")
    return path


GOLDEN = ("ram_tiny", "ram_plus_tiny")


@pytest.fixture(scope="session")
def converted_golden(tmp_path_factory):
    """Both golden models converted once per session: name -> checkpoint directory."""
    pytest.importorskip("torch", reason="the torch extra is needed: pip install 'ram-edge[torch]'")
    from ram_edge.models.convert import convert_official

    out = {}
    for name in GOLDEN:
        src = require_shared("golden", name)
        dest = tmp_path_factory.mktemp("converted") / name
        convert_official(
            src / "model.pth", dest, tags=src / "ram_tag_list.txt", tags_zh=src / "ram_tag_list_chinese.txt",
            thresholds=src / "ram_tag_list_threshold.txt",
        )
        out[name] = dest
    return out


# --- Shared micro models and the CLI runner --------------------------------------------------------------------------

def run_cli(*args):
    """`ram-edge ARGS...` in-process: click's Result, each argument passed through str()."""
    from click.testing import CliRunner

    from ram_edge.cli.main import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(name="run_cli")
def run_cli_fixture():
    """The `run_cli(*args)` helper as a fixture, for tests that prefer not to import conftest."""
    return run_cli


def micro_model(family: str = "ram", image_size: int = 32, tags=12, *, depths=(1, 1), decoder_layers: int = 2,
                label_embed_dim: int = 32, des_per_class: int = 1, unit_queries: bool = False):
    """A random-weight micro RAM (patch 4, window 4, embed 16, a 32-wide decoder) and its label set (thresholds 0.5).

    `tags` is a count (names tag0, tag1, ...) or the tag names. Seeded (torch.manual_seed(0)) before it is built, so the
    same arguments give the same weights. `unit_queries` draws unit-norm label queries, as the text encoder writes them
    (a fresh model holds zeros).
    """
    import numpy as np
    import torch

    from ram_edge.config import ModelConfig
    from ram_edge.labels import LabelSet
    from ram_edge.models.ram import build_model

    names = [f"tag{i}" for i in range(tags)] if isinstance(tags, int) else list(tags)
    torch.manual_seed(0)
    config = ModelConfig.from_dict({
        "family": family, **({"des_per_class": des_per_class} if family == "ram_plus" else {}),
        "swin": {"image_size": image_size, "patch_size": 4, "embed_dim": 16, "depths": list(depths), "num_heads": [1, 2],
                 "window_size": 4},
        "head": {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64, "num_hidden_layers": decoder_layers},
        "num_classes": len(names), "embed_dim": 32, "label_embed_dim": label_embed_dim, "preprocess": {"image_size": image_size},
    })
    model = build_model(config).eval()
    if unit_queries:
        with torch.no_grad():
            model.label_embed.copy_(torch.nn.functional.normalize(torch.randn_like(model.label_embed), dim=-1))
    return model, LabelSet(names, None, np.full(len(names), 0.5, np.float32))


@pytest.fixture(scope="session")
def micro_checkpoint_factory(tmp_path_factory):
    """`make(family="ram", image_size=32, tags=12, **micro_model options, source=None) -> checkpoint directory`.

    Built once per session per arguments (see `micro_model`); treat the directory as read-only.
    """
    pytest.importorskip("torch", reason="the torch extra is needed: pip install 'ram-edge[torch]'")
    cache: dict = {}

    def make(family: str = "ram", image_size: int = 32, tags=12, *, source: dict | None = None, **options) -> Path:
        import json

        from ram_edge.models.checkpoint import save_checkpoint

        key = json.dumps([family, image_size, tags if isinstance(tags, int) else list(tags), source,
                          sorted((k, list(v) if isinstance(v, tuple) else v) for k, v in options.items())])
        if key not in cache:
            model, labels = micro_model(family, image_size, tags, **options)
            cache[key] = save_checkpoint(model, labels, tmp_path_factory.mktemp("micro") / family, source=source)
        return cache[key]

    return make
