"""One process at a time in a run directory or on an output file: two training or QAT runs resuming from the same
checkpoints would overwrite each other's checkpoints and logs; two taggers appending to one file would mix their lines."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from pathlib import Path
from typing import IO, Iterator

from .errors import InUseError
from .fileio import unwritable

LOCK_NAME = ".ram-edge.lock"


# Windows locks are mandatory: the lock sits on a byte far past the end, so that others can still read the file.
_WINDOWS_LOCK_BYTE = 0x7FFFFFF0


def try_lock(fh: IO) -> bool:
    """Take the OS lock on `fh` without waiting; False when another process holds it. The OS drops the lock when its
    holder exits, however it exits, so a killed run never leaves a stale lock behind."""
    try:
        if sys.platform == "win32":
            import msvcrt

            fh.seek(_WINDOWS_LOCK_BYTE)
            msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def unlock(fh: IO) -> None:
    """Release try_lock's lock (closing the file releases it too)."""
    if sys.platform == "win32":
        import msvcrt

        fh.seek(_WINDOWS_LOCK_BYTE)
        with contextlib.suppress(OSError):
            msvcrt.locking(fh.fileno(), msvcrt.LK_UNLCK, 1)
    else:
        import fcntl

        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _holder(fh: IO[str]) -> str:
    """What the lock's holder wrote about itself ('pid 123 on host since ...'), or 'unknown' where it cannot be read."""
    try:
        fh.seek(0)
        return fh.read(200).strip() or "unknown"
    except OSError:
        return "unknown"


@contextlib.contextmanager
def exclusive_directory(path: str | Path, hint: str) -> Iterator[Path]:
    """Hold `path` (created if needed) for the block; a second process fails at once with InUseError, whose
    message names the holder and ends with `hint` (what the user can do instead)."""
    path = Path(path)
    created = not path.exists()
    lock = path / LOCK_NAME
    try:
        path.mkdir(parents=True, exist_ok=True)
        fh = open(lock, "a+", encoding="utf-8")  # noqa: SIM115 - held open for the whole block
    except OSError as exc:
        raise unwritable(path, exc) from None
    try:
        if not try_lock(fh):
            raise InUseError(f"{path} is in use by another ram-edge process ({_holder(fh)}); wait for it to finish, "
                             f"or {hint}")
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            fh.flush()
            yield path
        finally:
            if created and [p.name for p in path.iterdir()] == [LOCK_NAME]:
                # A run that failed before writing anything leaves no directory behind it.
                fh.close()
                lock.unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    path.rmdir()
            else:
                unlock(fh)
    finally:
        fh.close()
