"""`ram-edge train CONFIG.yaml`: train or fine-tune RAM (one process, or every rank under torchrun)."""

from __future__ import annotations

import json

import click


@click.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--output-dir", default=None, help="Override output_dir of the config.")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Override total_steps.")
@click.option("--stop-at", type=click.IntRange(min=1), default=None,
              help="Stop (with a checkpoint) at this step, keeping the lr schedule of total_steps; resume later to go on.")
@click.option("--no-resume", is_flag=True, help="Start from scratch even if OUTPUT_DIR has checkpoints.")
@click.option("--json", "as_json", is_flag=True, help="Print the last log record as JSON.")
def train(config, output_dir, steps, stop_at, no_resume, as_json) -> None:
    """Train with CONFIG (YAML). Multi-GPU / multi-node: `torchrun --nproc_per_node N --no-python ram-edge train CONFIG`."""
    from ..training.config import TrainConfig
    from ..training.loop import train as run

    cfg = TrainConfig.from_file(config)
    if output_dir:
        cfg.output_dir = output_dir
    if steps:
        cfg.total_steps = steps
    record = run(cfg, resume=not no_resume, stop_at=stop_at)
    if as_json:
        click.echo(json.dumps(record))
    elif record:
        click.echo(f"step {record.get('step')}: loss {record.get('loss', float('nan')):.4f}; model written to {cfg.output_dir}/model")
