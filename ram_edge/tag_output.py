"""The outputs of tagging a library: a JSON-lines results file that grows as images are tagged and that a rerun
resumes (the images it holds are skipped; a line cut short by a kill is dropped), and the probability matrix written
row by row, so that memory stays flat however many images there are."""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import IO, Any

import numpy as np

from .dir_lock import try_lock, unlock
from .errors import InUseError, RamEdgeError
from .fileio import check_writable, prepare_output, unwritable

SYNC_EVERY_S = 10.0  # results reach the disk at least this often (every batch reaches the OS at once)


# How every record begins (TagResult.to_dict puts "image" first): a torn last line is recognised by it.
RECORD_START = b'{"image": '


class OutputFileError(RamEdgeError):
    """An output file exists but is not one this command writes."""


class ResultsFile:
    """`path` opened for appending results, with `recorded` (the images, as printed, whose lines an earlier run left).
    Held exclusively: a second process on the same file fails at once."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise OutputFileError(f"output {self.path} is a folder; give a file name, e.g. {self.path / 'tags.jsonl'}")
        check_writable(self.path)
        self._created = not self.path.exists()
        prepare_output(self.path)
        try:
            self._fh: IO[bytes] = open(self.path, "a+b")  # noqa: SIM115 - held until close()
        except OSError as exc:
            raise unwritable(self.path, exc) from None
        if not try_lock(self._fh):
            self._fh.close()
            raise InUseError(f"{self.path} is being written by another ram-edge process; wait for it to finish, or give "
                             "another --output file")
        try:
            self.recorded = self._read_recorded()
        except BaseException:
            self.close()
            raise
        self.written = self.flushed = 0  # records written, and how many of them reached the OS
        self._synced = time.monotonic()

    def _read_recorded(self) -> set[str]:
        self._fh.seek(0)
        data = self._fh.read()
        complete = data.rfind(b"\n") + 1
        lines = data[:complete].splitlines()
        recorded: set[str] = set()
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                recorded.add(str(obj["image"]))
            except (ValueError, KeyError, TypeError):
                raise self._not_ours(lineno) from None
        if complete < len(data):
            tail = data[complete:]
            if not (tail.startswith(RECORD_START) or RECORD_START.startswith(tail)):
                raise self._not_ours(len(lines) + 1)
            # The last line of a run killed while writing it: dropped, and that image is tagged again. Only after
            # every other line proved the file ours: nothing of a user's other file is ever cut.
            self._fh.truncate(complete)
        return recorded

    def _not_ours(self, lineno: int) -> OutputFileError:
        return OutputFileError(f"{self.path}:{lineno}: not a line of `ram-edge tag --output` (a JSON object with "
                               "\"image\"); give a new file, or the one an earlier run wrote")

    def write(self, record: dict[str, Any]) -> None:
        """Append one image's record (flushed by flush())."""
        try:
            self._fh.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
        except OSError as exc:  # a full disk: what reached the file stays, a torn last line is dropped on resume
            raise unwritable(self.path, exc) from None
        self.written += 1

    def flush(self) -> None:
        """Hand what was written to the OS (it survives a killed process); to the disk every SYNC_EVERY_S."""
        try:
            self._fh.flush()
            self.flushed = self.written
            if time.monotonic() - self._synced >= SYNC_EVERY_S:
                os.fsync(self._fh.fileno())
                self._synced = time.monotonic()
        except OSError as exc:
            raise unwritable(self.path, exc) from None

    def close(self) -> None:
        """Flush to the disk and release the file (closed even when the last flush fails, which is then raised)."""
        if self._fh.closed:
            return
        error: OSError | None = None
        try:
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError as exc:
            error = exc
        if self._created and error is None and self.path.stat().st_size == 0:
            # A run that failed before its first image (a bad --model) leaves no empty file behind.
            self.path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            unlock(self._fh)
        try:
            self._fh.close()  # closes the file even where its flush fails again
        except OSError as exc:
            error = error or exc
        if error is not None:
            raise unwritable(self.path, error)

    def __enter__(self) -> "ResultsFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class NpyRowWriter:
    """A float32 (rows, cols) .npy written row by row into an open binary file (NaN rows for failed images)."""

    def __init__(self, fh: IO[bytes], rows: int, cols: int) -> None:
        self._fh, self.cols, self.rows, self.done = fh, cols, rows, 0
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False, "shape": (rows, cols)}
        np.lib.format.write_array_header_1_0(fh, header)
        self._nan = np.full(cols, np.nan, dtype="<f4").tobytes()

    def write(self, row: np.ndarray | None) -> None:
        """The next row; None: a NaN row."""
        if self.done >= self.rows:
            raise ValueError(f"all {self.rows} rows are written")
        self._fh.write(self._nan if row is None else np.asarray(row, dtype="<f4").reshape(self.cols).tobytes())
        self.done += 1
