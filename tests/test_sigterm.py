"""SIGTERM (a service manager, a scheduler, `kill`) unwinds `ram-edge` like Ctrl-C: nothing half-written is left."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ram_edge.cli.main import terminate_gracefully

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

# A command that holds a half-written output directory open until it is killed, run through the real entry point.
SLOW_COMMAND = textwrap.dedent("""
    import sys, time, types
    import click
    from ram_edge.cli import main as entry
    from ram_edge.fileio import atomic_dir

    @click.command()
    @click.argument("out")
    def slow(out):
        with atomic_dir(out) as tmp:
            (tmp / "part.bin").write_bytes(b"x" * 1024)
            print(tmp, flush=True)
            time.sleep(60)

    module = types.ModuleType("slow_command")
    module.slow = slow
    sys.modules["slow_command"] = module
    entry.COMMANDS["slow"] = "slow_command:slow"
    entry.main(["slow", sys.argv[1]])
""")


def test_sigterm_removes_the_half_written_output_and_exits_143(tmp_path):
    out = tmp_path / "bundle"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_COMMAND, str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        tmp = Path(proc.stdout.readline().strip())
        assert tmp.is_dir() and (tmp / "part.bin").exists()
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 143, stderr
    assert stderr.strip().splitlines()[-1] == "terminated"  # one line, no traceback
    assert not tmp.exists() and not out.exists() and list(tmp_path.iterdir()) == []


def test_forked_pool_workers_still_die_quietly_when_their_pool_stops_them():
    """multiprocessing pools stop their workers with SIGTERM; the workers inherit the handler but must not raise."""
    code = textwrap.dedent("""
        import multiprocessing
        from ram_edge.cli.main import terminate_gracefully
        terminate_gracefully()
        with multiprocessing.get_context("fork").Pool(2) as pool:
            print(sum(pool.imap(abs, range(-50, 50))))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "2500", proc.stderr
    assert "Traceback" not in proc.stderr and "Terminated" not in proc.stderr, proc.stderr


def test_a_host_programs_own_sigterm_handler_is_kept():
    def host_handler(signum, frame):  # pragma: no cover - never called
        pass

    previous = signal.signal(signal.SIGTERM, host_handler)
    try:
        terminate_gracefully()
        assert signal.getsignal(signal.SIGTERM) is host_handler
    finally:
        signal.signal(signal.SIGTERM, previous)
