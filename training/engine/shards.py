"""Resumable work in shards: each shard's result is written atomically under a work folder, so an interrupted
run continues where it stopped and gives the same output as an uninterrupted one."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ram_edge.errors import ConfigError
from ram_edge.fileio import atomic_file, sha256_file

STATE_FILE = "state.json"


def fingerprint(files: list[Path], options: dict[str, Any]) -> str:
    """A hash of the inputs (file contents) and the options that decide a run's output."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.name).encode())
        digest.update(sha256_file(path).encode())
    digest.update(json.dumps(options, sort_keys=True, default=str).encode())
    return digest.hexdigest()


class ShardDir:
    """A work folder of numbered shard files that belongs to one fingerprint."""

    def __init__(self, path: str | Path, print_: str, *, restart: bool = False) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        state_path = self.path / STATE_FILE
        if state_path.exists() and not restart:
            try:
                state = json.loads(state_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                state = {}
            if state.get("fingerprint") != print_:
                raise ConfigError(
                    f"{self.path}: this work folder holds another run's shards (other inputs, model or options); "
                    "pass another --work-dir, or --restart to discard them"
                )
        if restart:
            for old in self.path.glob("shard-*"):
                old.unlink()
        with atomic_file(state_path, "w") as fh:
            json.dump({"fingerprint": print_}, fh)

    def shard_path(self, number: int, suffix: str) -> Path:
        """The file of shard `number`."""
        return self.path / f"shard-{number:06d}{suffix}"

    def done(self, number: int, suffix: str) -> bool:
        """Whether shard `number` was finished by this or an earlier run."""
        return self.shard_path(number, suffix).exists()


def shard_ranges(total: int, shard_size: int) -> list[tuple[int, int]]:
    """[start, end) index ranges of `shard_size` items."""
    if shard_size < 1:
        raise ConfigError(f"shard size {shard_size} must be at least 1")
    return [(start, min(start + shard_size, total)) for start in range(0, total, shard_size)]
