"""The data engine: generation adds what the model predicts (and its parsed captions), cleaning removes planted
outliers and contradicted tags, outputs load in training, a resumed cleaning run equals an uninterrupted one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the train extra is needed: pip install 'ram-edge[train]'")
pytest.importorskip("safetensors", reason="the train extra is needed: pip install 'ram-edge[train]'")

from PIL import Image, ImageDraw  # noqa: E402

from ram_edge.config import ModelConfig  # noqa: E402
from ram_edge.errors import ConfigError  # noqa: E402
from ram_edge.labels import LabelSet  # noqa: E402
from ram_edge.models.checkpoint import save_checkpoint  # noqa: E402
from ram_edge.models.ram import RAM  # noqa: E402
from ram_edge.training.engine.clean import CleanOptions, clean  # noqa: E402
from ram_edge.training.engine.generate import GenerateOptions, generate  # noqa: E402
from ram_edge.training.engine.kmeans import kmeans_pp, outliers  # noqa: E402
from ram_edge.training.engine.regions import Region, read_regions, write_coco  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = REPO / "ram_edge" / "assets" / "default_model" / "checkpoint"
WORDS = ["square", "circle", "triangle", "red", "blue", "green"]
COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 170, 60)}


def _shapes_dataset(root: Path, count: int = 12) -> Path:
    """Coloured shapes with captions that name some of what is drawn."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(count):
        img = Image.new("RGB", (32, 32), (240, 240, 240))
        colour = list(COLOURS)[i % 3]
        ImageDraw.Draw(img).rectangle((4, 4, 20, 20), fill=COLOURS[colour])
        img.save(root / f"images/{i:03d}.png")
        rows.append({"image": f"images/{i:03d}.png", "captions": [f"a {colour} square" if rng.random() < 0.5 else "a shape"],
                     "id": i})
    (root / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _tiny_config(num_classes: int) -> ModelConfig:
    return ModelConfig.from_dict({
        "family": "ram",
        "swin": {"image_size": 32, "patch_size": 4, "embed_dim": 16, "depths": [1, 1], "num_heads": [1, 2], "window_size": 4},
        "head": {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64, "num_hidden_layers": 2},
        "num_classes": num_classes, "embed_dim": 32, "label_embed_dim": 16, "preprocess": {"image_size": 32},
    })


def _tiny_checkpoint(path: Path, thresholds: np.ndarray | None = None, captioning: bool = False) -> Path:
    """A random tiny RAM over WORDS (distinct label queries), optionally with caption weights as training saves them."""
    from ram_edge.training.config import LossConfig
    from ram_edge.training.model import RAMForTraining

    torch.manual_seed(0)
    config = _tiny_config(len(WORDS))
    caption = None
    if captioning:
        vocab = path.parent / f"{path.name}-vocab.txt"
        vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, "a", "of", "and"]) + "\n")
        caption = {"vocab": str(vocab), "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64,
                   "num_hidden_layers": 2, "decoder_layers": 1, "decoder_cross_width": 32, "max_caption_tokens": 16,
                   "max_tag_tokens": 12}
    model = RAMForTraining(config, LossConfig(captioning=captioning), caption)
    with torch.no_grad():
        model.label_embed.normal_()
    inference = RAM(config)
    inference.load_state_dict(model.inference_state_dict(), strict=True)
    labels = LabelSet(WORDS, None, np.full(len(WORDS), 0.5, np.float32) if thresholds is None else thresholds)
    source = {"kind": "trained", "config": {"caption": caption or {}}}
    return save_checkpoint(inference.eval(), labels, path, source=source,
                           extra_tensors=model.captioning_state_dict() if captioning else None)


def _rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "annotations.jsonl").read_text().splitlines() if line.strip()]


def test_generation_adds_exactly_the_confident_predictions(tmp_path):
    from ram_edge.tagger import Tagger

    data = _shapes_dataset(tmp_path / "data")
    images = [data / r["image"] for r in _rows(data)]
    probe = _tiny_checkpoint(tmp_path / "probe")
    with Tagger.load(probe, runtime="torch") as tagger:
        probs = tagger.scores(images)
    # Thresholds at each tag's median probability: about half the images get each tag, so the test has both sides.
    thresholds = np.median(probs, axis=0).astype(np.float32)
    model = _tiny_checkpoint(tmp_path / "model", thresholds)
    margin = 0.0
    summary = generate(data, model, tmp_path / "out", options=GenerateOptions(margin=margin, captions="off"), runtime="torch",
                       progress=False)
    rows = _rows(tmp_path / "out")
    assert summary["images"] == len(rows) == len(images)
    for row, p, source_row in zip(rows, probs, _rows(data)):
        predicted = {WORDS[i] for i in np.flatnonzero(p >= thresholds + margin)}
        parsed = {w for w in WORDS if w in source_row["captions"][0].split()}
        assert {t for t, s in row["tag_sources"].items() if "generated_tag" in s} == predicted
        assert {t for t, s in row["tag_sources"].items() if "parsed" in s} == parsed
        assert set(row["tags"]) == predicted | parsed
        assert row["id"] == source_row["id"]  # the input's own fields are kept
        assert (tmp_path / "out" / row["image"]).resolve() == (data / source_row["image"]).resolve()
    # A stricter margin adds fewer tags, never more.
    strict = generate(data, model, tmp_path / "strict", options=GenerateOptions(margin=0.2, captions="off"), runtime="torch",
                      progress=False)
    assert strict["tags_added"] < summary["tags_added"]


def test_generation_parses_the_checkpoints_own_captions(tmp_path):
    from ram_edge.training.parse import TagParser

    data = _shapes_dataset(tmp_path / "data", count=6)
    model = _tiny_checkpoint(tmp_path / "model", captioning=True)
    summary = generate(data, model, tmp_path / "out", options=GenerateOptions(captions="on", threshold=0.999),
                       runtime="torch", progress=False)
    assert summary["captions_note"] is None
    parser = TagParser(WORDS)
    from_captions = 0
    for row, source_row in zip(_rows(tmp_path / "out"), _rows(data)):
        (generated,) = row["generated_captions"]
        assert row["captions"] == source_row["captions"] + [generated]
        expected = {WORDS[i] for i in parser.parse(generated)}
        assert {t for t, s in row["tag_sources"].items() if "generated_caption" in s} == expected
        from_captions += len(expected)
    assert from_captions > 0  # the random decoder's captions do name some of the six words
    # A checkpoint without captioning weights: "on" is an error naming the fix, "auto" generates tags only.
    plain = _tiny_checkpoint(tmp_path / "plain")
    with pytest.raises(ConfigError, match="no captioning weights"):
        generate(data, plain, tmp_path / "x", options=GenerateOptions(captions="on"), runtime="torch", progress=False)
    assert generate(data, plain, tmp_path / "y", runtime="torch", progress=False)["captions_note"]


def test_generated_annotations_load_in_training(tmp_path):
    from ram_edge.training.config import DataConfig
    from ram_edge.training.data import EvalTransform, MapDataset, TargetBuilder, open_source
    from ram_edge.training.label_system import LabelSystem

    data = _shapes_dataset(tmp_path / "data", count=4)
    model = _tiny_checkpoint(tmp_path / "model", np.full(len(WORDS), 0.3, np.float32))
    generate(data, model, tmp_path / "out", runtime="torch", progress=False)
    system = LabelSystem.load(tmp_path / "out" / "labels.tsv")
    source = open_source(DataConfig(kind="jsonl", path=str(tmp_path / "out")))
    dataset = MapDataset(source, EvalTransform(_tiny_config(len(WORDS)).preprocess), TargetBuilder(system, "given"), seed=0)
    for i, row in enumerate(_rows(tmp_path / "out")):
        item = dataset[(0, i)]
        assert item["image"].shape == (3, 32, 32)
        assert {WORDS[j] for j in np.flatnonzero(item["target"])} == set(row["tags"])


def test_kmeans_pp_and_outliers():
    rng = np.random.default_rng(0)
    blobs = np.concatenate([rng.normal(0, 0.1, (40, 4)), rng.normal(5, 0.1, (40, 4))])
    planted = np.array([[2.5, 2.5, 2.5, 2.5], [-3, 0, 0, 0]])
    points = np.concatenate([blobs, planted])
    centres, assign = kmeans_pp(points, 2, seed=1)
    assert len(set(assign[:40].tolist())) == 1 and len(set(assign[40:80].tolist())) == 1 and assign[0] != assign[40]
    mask = outliers(points, 2, 2 / len(points), seed=1)
    assert mask[-2:].all() and mask.sum() == 2
    assert np.array_equal(mask, outliers(points, 2, 2 / len(points), seed=1))


def test_regions_read_coco_and_jsonl(tmp_path):
    (tmp_path / "imgs").mkdir()
    write_coco(tmp_path / "regions.json", [("imgs/a.png", [Region("cat", (1, 2, 11, 22), 0.9)]),
                                           ("imgs/b.png", [Region("dog", (0, 0, 5, 5), 0.2)])])
    index = read_regions(tmp_path / "regions.json", min_score=0.5)
    assert index.lookup(tmp_path / "imgs" / "a.png") == [Region("cat", (1.0, 2.0, 11.0, 22.0), 0.9)]
    assert index.lookup(tmp_path / "imgs" / "b.png") == []  # below min_score
    assert index.lookup(Path("/elsewhere/a.png"))[0].tag == "cat"  # a unique file name matches
    (tmp_path / "rows.jsonl").write_text(json.dumps({"image": "imgs/a.png", "boxes": [[1, 2, 3, 4]], "box_tags": ["cat"]}) + "\n")
    assert read_regions(tmp_path / "rows.jsonl").lookup(tmp_path / "imgs" / "a.png")[0].box == (1.0, 2.0, 3.0, 4.0)
    (tmp_path / "bad.jsonl").write_text(json.dumps({"image": "a.png", "boxes": [[1, 2, 3]], "box_tags": ["cat"]}) + "\n")
    with pytest.raises(ConfigError, match="four numbers"):
        read_regions(tmp_path / "bad.jsonl")


# ------------------------------------------------------------------ cleaning with the shipped default model on scenes

def _scene_dataset(root: Path, cats: int = 27, planted: int = 3) -> Path:
    """`cats` scenes of one cat and `planted` scenes of one car whose box and tag say "cat" (a wrong annotation);
    every scene also carries the tag "sun" without any region (cleaning cannot judge it and keeps it)."""
    from ram_edge.training.scenes import SceneStream, font_available

    if not font_available():
        pytest.skip("the emoji font for rendering scenes is missing (apt install fonts-noto-color-emoji)")
    (root / "images").mkdir(parents=True)
    rows = []
    for name, count in (("cat", cats), ("car", planted)):
        stream = SceneStream(seed=3, split="test", categories=[name], max_objects=1)
        for i in range(count):
            scene = stream[i]
            path = f"images/{name}{i:02d}.png"
            scene.image.save(root / path)
            rows.append({"image": path, "captions": ["a cat and the sun"], "tags": ["cat", "sun"],
                         "boxes": [list(scene.boxes[0])], "box_tags": ["cat"], "truly": name})
    (root / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _dropped(folder: Path) -> dict[str, str]:
    out = {}
    for row in _rows(folder):
        for tag, info in row.get("dropped_tags", {}).items():
            assert tag == "cat"
            out[row["image"]] = info["reason"]
    return out


def test_cleaning_removes_planted_outliers_and_keeps_the_rest(tmp_path):
    data = _scene_dataset(tmp_path / "data")
    options = CleanOptions(outlier_fraction=0.1, clusters=1, region_check=False, shard_size=8)
    summary = clean(data, DEFAULT_CHECKPOINT, data, tmp_path / "out", options=options, progress=False)
    assert summary["regions_embedded"] == 30 and summary["dropped"]["outlier"] == 3
    dropped = _dropped(tmp_path / "out")
    assert sorted(Path(k).name for k in dropped) == [f"car{i:02d}.png" for i in range(3)]
    assert set(dropped.values()) == {"outlier"}
    for row in _rows(tmp_path / "out"):
        assert "sun" in row["tags"]  # no region: kept
        assert ("cat" in row["tags"]) == (row["truly"] == "cat")


def test_cleaning_drops_tags_the_model_contradicts_on_their_regions(tmp_path):
    data = _scene_dataset(tmp_path / "data", cats=10, planted=3)
    options = CleanOptions(outlier_fraction=0.0, region_check=True)
    summary = clean(data, DEFAULT_CHECKPOINT, data, tmp_path / "out", options=options, progress=False)
    dropped = _dropped(tmp_path / "out")
    cars = {k for k in dropped if "car" in Path(k).name}
    assert len(cars) == 3 and set(dropped.values()) == {"contrary"}
    assert len(dropped) - len(cars) <= 2  # true cats the model misses on their crop: few
    assert summary["dropped"]["contrary"] == len(dropped)
    # unlocated="drop": a tag with no region, of a category the regions know, goes too ("sun" is unknown: kept).
    (data / "regions.json").unlink(missing_ok=True)
    write_coco(data / "regions.json", [(r["image"], [Region("sun", (0, 0, 8, 8))] if i == 0 else [])
                                       for i, r in enumerate(_rows(data))])
    summary = clean(data, DEFAULT_CHECKPOINT, data / "regions.json", tmp_path / "out2",
                    options=CleanOptions(outlier_fraction=0.0, region_check=False, unlocated="drop"), progress=False)
    assert summary["dropped"]["unlocated"] == len(_rows(data)) - 1


def test_resumed_cleaning_equals_an_uninterrupted_run(tmp_path):
    data = _scene_dataset(tmp_path / "data", cats=17, planted=3)
    options = CleanOptions(outlier_fraction=0.1, clusters=1, shard_size=6)
    work = tmp_path / "work"
    clean(data, DEFAULT_CHECKPOINT, data, tmp_path / "full", options=options, work_dir=work, keep_work=True, progress=False)
    shards = sorted(work.glob("shard-*.npz"))
    assert len(shards) == 4
    first = shards[0].stat().st_mtime_ns
    for later in shards[1:]:
        later.unlink()  # as if the run had been stopped after its first shard
    clean(data, DEFAULT_CHECKPOINT, data, tmp_path / "resumed", options=options, work_dir=work, keep_work=True, progress=False)
    assert shards[0].stat().st_mtime_ns == first  # reused, not recomputed
    assert (tmp_path / "full" / "annotations.jsonl").read_text() == (tmp_path / "resumed" / "annotations.jsonl").read_text()
    # Other options with the same work folder: refused with the fix, not mixed.
    with pytest.raises(ConfigError, match="another run's shards"):
        clean(data, DEFAULT_CHECKPOINT, data, tmp_path / "other", options=CleanOptions(outlier_fraction=0.2, shard_size=6),
              work_dir=work, progress=False)
    # Without --keep-work the work folder goes once the output is written.
    clean(data, DEFAULT_CHECKPOINT, data, tmp_path / "again", options=options, work_dir=work, progress=False)
    assert not work.exists()


def test_resumed_generation_equals_an_uninterrupted_run(tmp_path):
    """Generated tags and captions are kept per shard of images: a run stopped after its first shard resumes from it
    and writes what an uninterrupted run writes."""
    data = _shapes_dataset(tmp_path / "data", count=10)
    model = _tiny_checkpoint(tmp_path / "model", np.full(len(WORDS), 0.45, np.float32), captioning=True)
    options = GenerateOptions(captions="on", shard_size=4, batch_size=3)
    work = tmp_path / "work"
    full = generate(data, model, tmp_path / "full", options=options, runtime="torch", work_dir=work, keep_work=True,
                    progress=False)
    assert full["tags_added"] > 0
    shards = sorted(work.glob("shard-*.json"))
    assert len(shards) == 3
    first = shards[0].stat().st_mtime_ns
    for later in shards[1:]:
        later.unlink()  # as if the run had been stopped after its first shard
    generate(data, model, tmp_path / "resumed", options=options, runtime="torch", work_dir=work, keep_work=True,
             progress=False)
    assert shards[0].stat().st_mtime_ns == first  # reused, not recomputed
    for name in ("annotations.jsonl", "labels.tsv"):
        assert (tmp_path / "full" / name).read_text() == (tmp_path / "resumed" / name).read_text()
    assert all(row["generated_captions"] for row in _rows(tmp_path / "full"))
    with pytest.raises(ConfigError, match="another run's shards"):  # other options with the same work folder
        generate(data, model, tmp_path / "other", options=GenerateOptions(captions="on", shard_size=4, margin=0.1),
                 runtime="torch", work_dir=work, progress=False)
    generate(data, model, tmp_path / "again", options=options, runtime="torch", work_dir=work, progress=False)
    assert not work.exists()  # without keep_work the shards go once the output is written


@pytest.mark.slow
def test_engine_cli_end_to_end_and_errors(tmp_path):
    data = _shapes_dataset(tmp_path / "data", count=5)
    model = _tiny_checkpoint(tmp_path / "model")

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "ram_edge.cli.main", "engine", *args], capture_output=True, text=True)

    done = cli("generate", str(data), "--model", str(model), "-o", str(tmp_path / "gen"), "--runtime", "torch", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["images"] == 5
    again = cli("generate", str(data), "--model", str(model), "-o", str(tmp_path / "gen"))
    assert again.returncode != 0 and "already exists" in again.stderr and "Traceback" not in again.stderr
    (tmp_path / "empty").mkdir()
    missing = cli("generate", str(tmp_path / "empty"), "--model", str(model), "-o", str(tmp_path / "g2"))
    assert missing.returncode != 0 and "annotations.jsonl" in missing.stderr and "Traceback" not in missing.stderr
    bundle_like = cli("clean", str(tmp_path / "gen"), "--model", str(tmp_path / "data"), "--regions", str(data), "-o", str(tmp_path / "c"))
    assert bundle_like.returncode != 0 and "checkpoint directory" in bundle_like.stderr
    assert not (tmp_path / "g2").exists() and not (tmp_path / "c").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where CUDA is absent")
def test_clean_on_a_missing_cuda_device_is_a_clear_error(tmp_path):
    data = _shapes_dataset(tmp_path / "data", count=2)
    with pytest.raises(ConfigError, match="CUDA is not available"):
        clean(data, DEFAULT_CHECKPOINT, data, tmp_path / "out", device="cuda", progress=False)
    assert not (tmp_path / "out").exists()


def test_a_work_folder_another_process_holds_is_refused(tmp_path):
    from ram_edge.dir_lock import exclusive_directory
    from ram_edge.errors import InUseError

    data = _shapes_dataset(tmp_path / "data", count=2)
    with exclusive_directory(tmp_path / "work", "x"):
        with pytest.raises(InUseError, match="pass another --work-dir"):
            generate(data, DEFAULT_CHECKPOINT, tmp_path / "out", work_dir=tmp_path / "work", runtime="torch",
                     options=GenerateOptions(captions="off"), progress=False)
    assert not (tmp_path / "out").exists()
