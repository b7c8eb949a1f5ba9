"""File I/O shared by every module: atomic writes (nothing half-written is left on disk after a failure) and
the one UTF-8 text reader whose errors name the file, the line and the fix."""

from __future__ import annotations

import codecs
import contextlib
import errno
import hashlib
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import RamEdgeError


def _umask() -> int:
    # Reading /proc avoids os.umask's set-and-restore, which races with other threads.
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask



def _host() -> str:
    """This machine's short name as it appears in the names of temporary outputs."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname().split(".")[0]) or "host"


def _owner() -> str:
    """This process as it appears in the names of its temporary outputs: host and pid."""
    return f"{_host()}-{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # another user's process, or a platform that cannot tell: assume alive
    return True


def remove_stale_partials(path: str | Path) -> list[Path]:
    """Remove what killed runs (SIGKILL, the OOM killer, a power cut) left beside `path`: temporary outputs of processes
    on this host that no longer run. A replaced output parked in `.old` while its successor was moved in is put back
    when the successor never arrived. Returns what was removed or restored."""
    path = Path(path)
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.{re.escape(_host())}-(\d+)\.[^/]*\.(tmp|old)$")
    cleaned: list[Path] = []
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return cleaned
    for entry in entries:
        match = pattern.match(entry.name)
        if not match or _pid_alive(int(match.group(1))):
            continue
        with contextlib.suppress(OSError):
            if match.group(2) == "old" and (entry / "x").exists() and not os.path.lexists(path):
                os.replace(entry / "x", path)  # the previous output, never replaced: keep it
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            cleaned.append(entry)
    return cleaned


class OutputPathError(RamEdgeError):
    """An output cannot be created where the user asked for it."""


def unwritable(path: str | Path, exc: OSError) -> OutputPathError:
    """The one-line error for an output that cannot be created at `path` (named, not the temporary file beside it)."""
    fix = ("free space there or choose another location" if exc.errno in (errno.ENOSPC, errno.EDQUOT)
           else "choose a location in an existing, writable folder")
    return OutputPathError(f"cannot write {path}: {exc.strerror or exc}; {fix}")


def refuse_special_file(path: Path) -> None:
    """An output file must be a regular file: replacing /dev/null (as root) or reading /dev/zero would be a disaster."""
    if path.exists() and not path.is_file() and not path.is_dir():
        raise OutputPathError(f"{path} is a device, pipe or other special file; give the path of a regular file")


def prepare_output(path: Path) -> None:
    """Create the folder of the output `path` (a regular file or folder to be), or fail with an error naming `path`."""
    refuse_special_file(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise unwritable(path, exc) from None


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb") -> Iterator:
    """Open a temporary file beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    prepare_output(path)
    remove_stale_partials(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_owner()}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise unwritable(path, exc) from None
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp creates 0600; give the result the permissions a plain open() would.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def check_writable(path: str | Path) -> None:
    """Fail early, before long work, when an output cannot be created at `path`: its nearest existing folder must take a
    new file (tried with an empty temporary file, removed at once; nothing else is created)."""
    path = Path(path).absolute()
    refuse_special_file(path)
    existing = path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise unwritable(path, NotADirectoryError(errno.ENOTDIR, f"{existing} is not a folder"))
    try:
        fd, probe = tempfile.mkstemp(prefix=".ram-edge-write-check.", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise unwritable(path, exc) from None


def refuse_existing(path: str | Path, overwrite: bool = False) -> None:
    """Fail early, before long work, when an output exists and may not be replaced, or cannot be written there."""
    if Path(path).exists() and not overwrite:
        raise RamEdgeError(f"output {path} already exists; choose another path or pass --overwrite")
    check_writable(path)


@contextlib.contextmanager
def atomic_dir(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside `path`; move it onto `path` only if the block succeeds."""
    path = Path(path)
    refuse_existing(path, overwrite)
    prepare_output(path)
    remove_stale_partials(path)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{_owner()}.", suffix=".tmp", dir=path.parent))
    except OSError as exc:
        raise unwritable(path, exc) from None
    try:
        yield tmp
        # mkdtemp creates 0700; give the result the permissions a plain mkdir would.
        os.chmod(tmp, 0o777 & ~_umask())
        if path.exists():
            if not overwrite:  # checked at the start; since then another process wrote it
                raise RamEdgeError(f"output {path} was written by another process while this one ran; this run's result "
                                   "was not kept: choose another path, or pass --overwrite")
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.{_owner()}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "x")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_versioned_json(path: Path, *, fmt: str, version: int, error: type[Exception], what: str, create_hint: str, fix: str) -> dict:
    """Read a ram-edge JSON file (checkpoint config, bundle manifest), checking its format and version."""
    import json

    if not path.is_file():
        raise error(f"{path.parent}: not a {what} (no {path.name}); {create_hint}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{path}: unreadable ({exc}); {fix}") from None
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise error(f"{path}: not a {what} file (format is not {fmt!r})")
    found = data.get("format_version")
    if found != version:
        raise error(
            f"{path}: {what} format version {found!r} is not supported by this ram-edge "
            f"(supports {version}); upgrade ram-edge or {fix}"
        )
    return data


def _open_error(path: Path, what: str, exc: OSError, error: type[Exception]) -> Exception:
    if isinstance(exc, FileNotFoundError):
        return error(f"{path}: file not found; check the path of the {what}")
    if isinstance(exc, IsADirectoryError):
        return error(f"{path}: is a directory; pass the {what} file itself")
    return error(f"{path}: cannot read the {what} ({exc.strerror or exc})")


def read_text(path: str | Path, *, what: str = "file", error: type[Exception] = RamEdgeError) -> str:
    """A whole UTF-8 text file; unreadable or non-UTF-8 input raises `error` naming the path, the line and the fix."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _open_error(path, what, exc, error) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise error(f"{path}, line {line}: not valid UTF-8 ({exc.reason} at byte {exc.start}); save the {what} as UTF-8") from None


def iter_text_lines(path: str | Path, *, what: str = "file", error: type[Exception] = RamEdgeError) -> Iterator[tuple[int, str]]:
    """(line number, line without its end) of a UTF-8 text file, streamed (for files too large to read at once)."""
    path = Path(path)
    try:
        fh = open(path, encoding="utf-8", newline=None)
    except OSError as exc:
        raise _open_error(path, what, exc, error) from None
    with fh:
        number = 0
        try:
            for number, line in enumerate(fh, start=1):
                yield number, line.rstrip("\n")
        except UnicodeDecodeError as exc:
            # The decoder works on blocks ahead of the lines handed out: find the line in the bytes.
            line = _first_non_utf8_line(path) or number + 1
            raise error(f"{path}, line {line}: not valid UTF-8 ({exc.reason}); save the {what} as UTF-8") from None


def _first_non_utf8_line(path: Path) -> int | None:
    """Number of the first line of `path` that is not valid UTF-8 (None where the file reads whole)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                decoder.decode(raw)
            except UnicodeDecodeError:
                return number
    return None
