"""`ram-edge train CONFIG.yaml`: train or fine-tune RAM (one process, or every rank under torchrun)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import click


def _interrupted(cfg, config: str, output_dir: str | None, steps: int | None) -> str:
    """Where an interrupted run can be resumed from, and the command that does it."""
    from ..training.loop import checkpoint_step, latest_checkpoint

    ckpt = latest_checkpoint(Path(cfg.output_dir))
    if ckpt is None:
        return f"interrupted before the first checkpoint; nothing to resume in {cfg.output_dir} (the run starts over)"
    step = checkpoint_step(ckpt)
    command = ["ram-edge", "train", config]
    if output_dir:
        command += ["--output-dir", output_dir]
    if steps:
        command += ["--steps", str(steps)]
    return (f"interrupted; the last checkpoint is {ckpt} (step {step} of {cfg.total_steps}), later steps are lost; "
            f"resume with: {shlex.join(command)}")


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
    try:
        record = run(cfg, resume=not no_resume, stop_at=stop_at)
    except KeyboardInterrupt as exc:
        click.echo(_interrupted(cfg, config, output_dir, steps), err=True)
        sys.exit(getattr(exc, "exit_code", 130))
    if as_json:
        click.echo(json.dumps(record))
    elif record:
        click.echo(f"step {record.get('step')}: loss {record.get('loss', float('nan')):.4g}; model written to {cfg.output_dir}/model")
