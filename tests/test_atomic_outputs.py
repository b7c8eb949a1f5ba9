"""What killed runs (SIGKILL, the OOM killer) leave beside an output is cleaned by the next write of that output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ram_edge.fileio import _host, _owner, atomic_dir, atomic_file, remove_stale_partials

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

# Starts writing `out` (a directory, or a file with "file"), then waits to be killed.
KILLED_WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from ram_edge.fileio import atomic_dir, atomic_file
    out = Path(sys.argv[1])
    if sys.argv[2] == "file":
        with atomic_file(out) as fh:
            fh.write(b"partial")
            fh.flush()
            print("ready", flush=True)
            time.sleep(60)
    else:
        with atomic_dir(out, overwrite=True) as tmp:
            (tmp / "model.onnx").write_bytes(b"partial" * 1000)
            print("ready", flush=True)
            time.sleep(60)
""")


def _kill_mid_write(out: Path, kind: str) -> None:
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(out), kind], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGKILL)  # nothing in the process runs: no cleanup of its own
        proc.wait(timeout=30)
    finally:
        proc.kill()


def _hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_a_killed_directory_write_is_removed_by_the_next_one(tmp_path):
    out = tmp_path / "bundle"
    _kill_mid_write(out, "dir")
    assert not out.exists() and len(_hidden(tmp_path)) == 1  # the killed run's temporary directory
    with atomic_dir(out) as tmp:
        (tmp / "model.onnx").write_bytes(b"whole")
    assert (out / "model.onnx").read_bytes() == b"whole" and _hidden(tmp_path) == []


def test_a_killed_file_write_is_removed_by_the_next_one(tmp_path):
    out = tmp_path / "scores.npy"
    _kill_mid_write(out, "file")
    assert len(_hidden(tmp_path)) == 1
    with atomic_file(out) as fh:
        fh.write(b"whole")
    assert out.read_bytes() == b"whole" and _hidden(tmp_path) == []


def test_live_writers_and_unknown_files_are_left_alone(tmp_path):
    out = tmp_path / "bundle"
    mine = tmp_path / f".bundle.{_owner()}.abc123.tmp"  # this process: alive
    mine.mkdir()
    other_host = tmp_path / ".bundle.otherhost-1.abc123.tmp"  # maybe alive on a machine sharing the folder
    other_host.mkdir()
    unowned = tmp_path / ".bundle.k2j3h4.tmp"  # written before owners were named
    unowned.mkdir()
    assert remove_stale_partials(out) == []
    assert mine.exists() and other_host.exists() and unowned.exists()


def test_a_previous_output_parked_by_a_killed_replace_is_restored(tmp_path):
    out = tmp_path / "bundle"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    parked = tmp_path / f".bundle.{_host()}-{pid}.q1w2e3.old"
    (parked / "x").mkdir(parents=True)
    (parked / "x" / "model.onnx").write_bytes(b"previous")
    assert remove_stale_partials(out) == [parked]
    assert (out / "model.onnx").read_bytes() == b"previous" and _hidden(tmp_path) == []
    assert os.path.isdir(out)


def test_an_output_written_meanwhile_by_another_process_is_not_replaced(tmp_path):
    """Two `export -o SAME` at once: the later one used to replace the first's finished output in silence."""
    from ram_edge.errors import RamEdgeError

    out = tmp_path / "bundle"
    with pytest.raises(RamEdgeError, match="written by another process while this one ran"):
        with atomic_dir(out) as tmp:
            (tmp / "mine.txt").write_text("mine")
            out.mkdir()
            (out / "theirs.txt").write_text("theirs")
    assert [p.name for p in out.iterdir()] == ["theirs.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no temporary leftovers
    with atomic_dir(out, overwrite=True) as tmp:  # --overwrite still replaces it
        (tmp / "mine.txt").write_text("mine")
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
