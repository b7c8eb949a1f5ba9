"""Fine-tune the shipped default model with new tags and measure them: what a user adding tags to a
ram-edge model gets.

The new tags are held-out emoji categories the default model never saw. The training scenes draw
from them and a fixed sample of seen categories (so that old tags are rehearsed); the test scenes
are new scenes of the same categories. Rows of the report:

- the default model before fine-tuning, with the new tags' queries from MiniLM in its recorded query
  space (what `ram-edge export --vocab FILE --text-encoder minilm` gives, no training);
- the fine-tuned model (`init_from` the default checkpoint, `text_encoder: minilm`, no
  `label_embed_scale` or `center_label_embed`: the checkpoint's recorded scale and centre are used).

    python benchmarks/experiments/fine_tune_new_tags.py --workdir /tmp/ram-ft --steps 200
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

REPORT = Path(__file__).resolve().parents[1] / "results" / "fine_tune_new_tags" / "fine_tune_new_tags.md"


def _render(stream, count: int, out: Path) -> Path:
    """count scenes of `stream` as images/ + annotations.jsonl (tags given)."""
    from ram_edge.fileio import atomic_file

    (out / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(count):
        scene = stream[i]
        name = f"images/{i:05d}.png"
        scene.image.save(out / name)
        lines.append(json.dumps({"image": name, "tags": list(scene.tags), "captions": list(scene.captions)}))
    with atomic_file(out / "annotations.jsonl", "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return out


def _map(tagger, data: Path, tags: list[str]) -> float:
    """mAP (percent) of `tagger` on the JSONL at `data`, over `tags`."""
    from ram_edge.training.metrics import mean_average_precision

    rows = [json.loads(line) for line in (data / "annotations.jsonl").read_text().splitlines()]
    probs = tagger.scores([str(data / r["image"]) for r in rows])
    cols = [tagger.labels.index_of(t) for t in tags]
    truth = np.array([[t in r["tags"] for t in tags] for r in rows])
    return 100 * float(mean_average_precision(probs[:, cols], truth))


def main(argv: list[str] | None = None) -> None:
    """Render data, measure the zero-shot queries, fine-tune, measure again, write the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--new", type=int, default=5, help="new tags (the first held-out categories)")
    parser.add_argument("--seen", type=int, default=45, help="seen categories rehearsed beside them")
    parser.add_argument("--test", type=int, default=500, help="test scenes")
    parser.add_argument("--report", type=Path, default=REPORT)
    parser.add_argument("--baseline", type=Path, default=None,
                        help="results.json of this script run with another ram-edge version (e.g. before a fix): one more row")
    parser.add_argument("--baseline-name", default="baseline", help="what the --baseline row is called")
    args = parser.parse_args(argv)

    from ram_edge import Tagger
    from ram_edge.checkpoint_dir import read_checkpoint_dir
    from ram_edge.default_model import default_model_path
    from ram_edge.models.queries.space import minilm_vocab_embeddings
    from ram_edge.export.writer import export_bundle
    from ram_edge.training.config import TrainConfig
    from ram_edge.training.loop import train
    from ram_edge.training.scenes import SceneStream, split_pool

    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = default_model_path("checkpoint")
    info = read_checkpoint_dir(checkpoint)
    new = [c.name for c in split_pool("heldout")[: args.new]]
    rng = np.random.default_rng(0)
    seen = sorted(rng.choice(info.labels.tags, size=args.seen, replace=False).tolist())
    categories = seen + new
    test = _render(SceneStream(seed=1, split="test", size=info.config.preprocess.image_size, categories=categories,
                               length=args.test), args.test, work / "test")

    # Before: the new tags' queries in the checkpoint's recorded space, no training.
    zero = work / "zero_shot"
    export_bundle(checkpoint, zero, vocab=(new, minilm_vocab_embeddings(info, new), 0.5), overwrite=True)
    before_new = _map(Tagger.load(zero, runtime="ort"), test, new)
    before_seen = _map(Tagger.load(checkpoint, runtime="torch"), test, seen)

    labels = work / "labels.tsv"
    labels.write_text("tag\n" + "".join(f"{t}\n" for t in [*info.labels.tags, *new]))
    cfg = TrainConfig.from_dict({
        # As a user writes it: the encoder named, scale and centre left to the checkpoint.
        "output_dir": str(work / "run"), "init_from": str(checkpoint), "labels": str(labels), "text_encoder": "minilm",
        "data": {"kind": "scenes", "tags_from": "given", "samples_per_epoch": 100000,
                 "scenes": {"seed": 2, "split": "train", "size": info.config.preprocess.image_size, "categories": categories},
                 "crop_scale": [0.7, 1.0]},
        "loss": {"tagging": True, "captioning": False},
        "optim": {"lr": args.lr, "warmup_steps": 20, "min_lr_ratio": 0.05},
        "batch_size": args.batch_size, "total_steps": args.steps, "checkpoint_every": max(1, args.steps // 2), "log_every": 25,
    })
    start = time.perf_counter()
    train(cfg)
    minutes = (time.perf_counter() - start) / 60
    tuned = Tagger.load(work / "run" / "model", runtime="torch")
    after_new, after_seen = _map(tuned, test, new), _map(tuned, test, seen)
    space = read_checkpoint_dir(work / "run" / "model").source["label_queries"]
    queries = tuned.runtime.model.label_embed.detach().numpy()
    norms = np.linalg.norm(queries, axis=1)
    new_norm = float(norms[-len(new):].mean())
    kept_norm = float(norms[: -len(new)].mean())

    results = {"new_tags": new, "seen_rehearsed": len(seen), "test_scenes": args.test, "steps": args.steps,
               "batch_size": args.batch_size, "lr": args.lr, "minutes": round(minutes, 1),
               "map_new_before": before_new, "map_new_after": after_new,
               "map_seen_before": before_seen, "map_seen_after": after_seen,
               "query_norm_new": new_norm, "query_norm_kept": kept_norm, "recorded_scale": space["scale"]}
    (work / "results.json").write_text(json.dumps(results, indent=1))
    baseline = json.loads(args.baseline.read_text()) if args.baseline else None
    _write_report(args.report, results, baseline, args.baseline_name)
    print(json.dumps(results))


def _write_report(path: Path, r: dict, baseline: dict | None = None, baseline_name: str = "baseline") -> None:
    from ram_edge.fileio import atomic_file

    extra, how = "", ""
    if baseline is not None:
        how = (f"\nThe \"{baseline_name}\" row is this script run under that ram-edge version (its `results.json` passed with "
               f"`--baseline`): same data, seeds and config, which at that version meant scale 1 and no centring for the new tags.\n")
        extra = (f"| fine-tuned, {baseline_name} (query norms: new {baseline['query_norm_new']:.3f}, "
                 f"kept {baseline['query_norm_kept']:.3f}) | {baseline['map_new_after']:.1f} | {baseline['map_seen_after']:.1f} |\n")

    text = f"""# Fine-tuning the default model with new tags

`python benchmarks/experiments/fine_tune_new_tags.py --workdir /tmp/ram-ft --steps {r['steps']}` on this project's
2-core CPU machine. New tags: {', '.join(r['new_tags'])} (held-out emoji categories the default model never saw);
training scenes draw from them and {r['seen_rehearsed']} seen categories; {r['test_scenes']} new test scenes of the same categories.
Fine-tuning: `init_from` the shipped checkpoint, tags given, tagging loss only, {r['steps']} steps of {r['batch_size']}
images, lr {r['lr']:g} ({r['minutes']} min). The config sets `text_encoder: minilm` and neither
`label_embed_scale` nor `center_label_embed`: the new queries are embedded in the checkpoint's recorded space.

| | mAP, the {len(r['new_tags'])} new tags | mAP, {r['seen_rehearsed']} seen tags |
|---|---:|---:|
| default model, new queries from MiniLM, no training (`export --vocab ... --text-encoder minilm`) | {r['map_new_before']:.1f} | {r['map_seen_before']:.1f} |
{extra}| fine-tuned | {r['map_new_after']:.1f} | {r['map_seen_after']:.1f} |

Query norms after fine-tuning: new tags {r['query_norm_new']:.3f}, kept tags {r['query_norm_kept']:.3f}
(the recorded scale is {r['recorded_scale']:g}).
{how}"""
    with atomic_file(path, "w") as fh:
        fh.write(text)


if __name__ == "__main__":
    main()
