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
