"""Fine-tuning the shipped default checkpoint with new tags: new label queries in the checkpoint's recorded
query space (MiniLM, scale, centre), contradictions refused, tuned thresholds of kept tags kept."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the train extra is needed: pip install 'ram-edge[train]'")
pytest.importorskip("yaml", reason="the train extra is needed: pip install 'ram-edge[train]'")

from ram_edge.checkpoint_dir import read_checkpoint_dir  # noqa: E402
from ram_edge.errors import ConfigError  # noqa: E402
from ram_edge.training.config import TrainConfig  # noqa: E402
from ram_edge.models.queries.space import center_embeddings
from ram_edge.training.setup_model import resolve_query_space  # noqa: E402

ASSETS = Path(__file__).resolve().parents[1] / "ram_edge" / "assets" / "default_model"
CHECKPOINT = ASSETS / "checkpoint"
KEPT = ["bell", "chicken", "guitar", "star"]
NEW = ["red square", "blue circle", "kettle"]


def _minilm():
    from ram_edge.models.queries import minilm as te

    if not te.minilm_available():
        pytest.skip(f"the MiniLM text encoder is not installed: {te.PIP_INSTALL}")
    return te


def _data(root: Path) -> Path:
    examples = json.loads((ASSETS / "examples" / "examples.json").read_text())
    lines = [{"image": str(ASSETS / "examples" / name), "tags": tags} for name, tags in examples.items()]
    root.mkdir(parents=True, exist_ok=True)
    (root / "annotations.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return root


def _config(tmp_path: Path, **overrides) -> TrainConfig:
    # guitar's threshold is set in the label file: that one wins over the checkpoint's.
    rows = [f"{t}\t\t\n" if t != "guitar" else "guitar\t\t0.3\n" for t in [*KEPT, *NEW]]
    (tmp_path / "labels.tsv").write_text("tag\tsynonyms\tthreshold\n" + "".join(rows))
    cfg = {
        "output_dir": str(tmp_path / "run"), "init_from": str(CHECKPOINT), "labels": str(tmp_path / "labels.tsv"),
        "text_encoder": "minilm",
        "data": {"kind": "jsonl", "path": str(_data(tmp_path / "data")), "tags_from": "given"},
        "optim": {"lr": 1e-4, "warmup_steps": 1}, "batch_size": 3, "total_steps": 1, "checkpoint_every": 1, "log_every": 1,
    }
    cfg.update(overrides)
    return TrainConfig.from_dict(cfg)


def test_new_tags_get_queries_in_the_checkpoints_query_space(tmp_path):
    te = _minilm()
    from ram_edge.training.loop import Trainer

    init = read_checkpoint_dir(CHECKPOINT)
    recorded = init.source["label_queries"]
    scale, center = recorded["scale"], np.asarray(recorded["center"], np.float32)
    assert recorded["text_encoder"] == "minilm" and scale > 10  # what this test is about: a scaled, centred space

    trainer = Trainer(_config(tmp_path), progress=False)
    queries = trainer.model.label_embed.detach().numpy()
    kept, new = queries[: len(KEPT)], queries[len(KEPT):]
    # Same norm as the kept queries (before the fix: 1.0 against 19.6).
    np.testing.assert_allclose(np.linalg.norm(new, axis=1), scale, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(kept, axis=1), scale, rtol=1e-5)
    encoder = te.MiniLMEncoder()
    expected_new, _ = center_embeddings(te.prompt_ensemble(encoder, NEW), center)
    np.testing.assert_allclose(new, expected_new * scale, atol=1e-4)
    # The kept queries, recomputed the same way from their names, are what the checkpoint holds: one space.
    recomputed_kept, _ = center_embeddings(te.prompt_ensemble(encoder, KEPT), center)
    np.testing.assert_allclose(kept, recomputed_kept * scale, atol=1e-3)

    trainer.train()
    tuned = read_checkpoint_dir(tmp_path / "run" / "model")
    space = tuned.source["label_queries"]
    assert space["text_encoder"] == "minilm" and space["scale"] == pytest.approx(scale)
    np.testing.assert_allclose(space["center"], center, rtol=0, atol=1e-7)
    # Thresholds: kept tags keep the checkpoint's tuned ones, the label file's value wins, new tags get the default.
    th = dict(zip(tuned.labels.tags, tuned.labels.thresholds.tolist()))
    for tag in ("bell", "chicken", "star"):
        assert th[tag] == pytest.approx(float(init.labels.thresholds[init.labels.index_of(tag)]))
    assert th["guitar"] == pytest.approx(0.3) and th["kettle"] == pytest.approx(0.68)


def test_checkpoint_text_encoder_means_the_recorded_one(tmp_path):
    space = resolve_query_space(_config(tmp_path, text_encoder="checkpoint"), read_checkpoint_dir(CHECKPOINT))
    assert space.text_encoder == "minilm" and space.centred and space.scale == pytest.approx(19.595918)


@pytest.mark.parametrize("override, names", [
    ({"label_embed_scale": 1.0}, ["label_embed_scale 1", "19.5959"]),
    ({"center_label_embed": False}, ["center_label_embed False", "centred"]),
    ({"text_encoder": "clip:/models/clip"}, ["'clip:/models/clip'", "'minilm'"]),
])
def test_a_config_that_contradicts_the_checkpoint_is_refused(tmp_path, override, names):
    with pytest.raises(ConfigError) as info:
        resolve_query_space(_config(tmp_path, **override), read_checkpoint_dir(CHECKPOINT))
    message = str(info.value)
    assert str(CHECKPOINT) in message and all(n in message for n in names), message


def test_agreeing_values_are_accepted(tmp_path):
    cfg = _config(tmp_path, label_embed_scale=19.595918, center_label_embed=True)
    space = resolve_query_space(cfg, read_checkpoint_dir(CHECKPOINT))
    assert space.center is not None and space.center.shape == (384,)
