"""One process at a time in a run directory (ram_edge/dir_lock.py): a second run fails at once and names the first;
a killed holder leaves no stale lock; a run that fails before writing leaves no directory."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from ram_edge.dir_lock import LOCK_NAME, exclusive_directory
from ram_edge.errors import InUseError

HOLD = ("import sys; from ram_edge.dir_lock import exclusive_directory\n"
        "with exclusive_directory(sys.argv[1], 'x'):\n"
        "    print('held', flush=True); sys.stdin.read()\n")


def _holder(path) -> subprocess.Popen:
    """Another process holding `path` until its stdin closes."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_process_is_refused_and_told_who_holds_the_directory(tmp_path):
    run = tmp_path / "run"
    holder = _holder(run)
    try:
        with pytest.raises(InUseError) as err:
            with exclusive_directory(run, "give this run another output_dir"):
                pass
        assert f"pid {holder.pid}" in str(err.value) and "another output_dir" in str(err.value)
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    with exclusive_directory(run, "x"):  # released when the holder finished
        (run / "checkpoint").write_text("mine")
    assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME, "checkpoint"]


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    holder = _holder(tmp_path)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=60)
    with exclusive_directory(tmp_path, "x") as path:
        assert f"pid {holder.pid}" not in (path / LOCK_NAME).read_text()


def test_a_run_that_fails_before_writing_leaves_no_directory(tmp_path):
    with pytest.raises(RuntimeError):
        with exclusive_directory(tmp_path / "new" / "run", "x"):
            raise RuntimeError("bad config")
    assert not (tmp_path / "new" / "run").exists()
    (tmp_path / "old").mkdir()
    with exclusive_directory(tmp_path / "old", "x"):
        pass
    assert (tmp_path / "old").is_dir()  # a directory that existed before stays
