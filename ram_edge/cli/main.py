"""`ram-edge` command line: a thin group that wires one module per command.

User errors (`RamEdgeError`) become one line on stderr and exit code 2, errors of the machine (`OSError`: a full
disk, a permission) one line and exit code 1; set RAM_EDGE_DEBUG=1 to see the traceback.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import signal
import sys
import threading
import warnings

import click

from .. import __version__
from ..errors import MissingDependencyError, RamEdgeError, RamEdgeWarning, Terminated, debug_enabled
from ..extras import missing_package_message

# command name -> "module:function"; modules import their heavy dependencies lazily.
COMMANDS = {
    "tag": "ram_edge.cli.tag:tag",
    "convert": "ram_edge.cli.convert:convert",
    "pull": "ram_edge.cli.pull:pull",
    "export": "ram_edge.cli.export:export",
    "bench": "ram_edge.cli.bench:bench",
    "data": "ram_edge.cli.data:data",
    "parse": "ram_edge.cli.parse:parse",
    "labels": "ram_edge.cli.labels:labels",
    "train": "ram_edge.cli.train:train",
    "eval": "ram_edge.cli.eval:eval_command",
    "quantize": "ram_edge.cli.quantize:quantize",
    "watch": "ram_edge.cli.watch:watch",
    "engine": "ram_edge.cli.engine:engine",
    "compare": "ram_edge.cli.compare:compare",
}


@contextlib.contextmanager
def _optional_packages(command):
    """Turn an ImportError of an optional package into the one-line error naming its extra (others pass through)."""
    try:
        yield
    except ImportError as exc:
        message = missing_package_message(exc, command() if callable(command) else command)
        if message is None:
            raise
        raise MissingDependencyError(message) from exc


class LazyGroup(click.Group):
    """Imports a command's module only when that command runs (or help lists it)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name].split(":")
        with _optional_packages(name):
            return getattr(importlib.import_module(module), attr)

    def invoke(self, ctx: click.Context):
        try:
            # Commands import their heavy packages lazily: a missing one surfaces here, mid-command.
            with _optional_packages(lambda: ctx.invoked_subcommand):
                return super().invoke(ctx)
        except RamEdgeError as exc:
            if debug_enabled():
                raise
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt as exc:
            click.echo("terminated" if isinstance(exc, Terminated) else "interrupted", err=True)
            ctx.exit(getattr(exc, "exit_code", 130))
        except OSError as exc:
            # The machine, not ram-edge: a full disk, a vanished network mount, a permission. One line, as for user
            # errors; a closed stdout (`| head`) is left to Python's quiet handling.
            if debug_enabled() or isinstance(exc, BrokenPipeError):
                raise
            where = f" ({exc.filename})" if exc.filename else ""
            click.echo(f"error: {exc.strerror or exc}{where}; RAM_EDGE_DEBUG=1 shows where it happened", err=True)
            ctx.exit(1)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ram-edge")
def cli() -> None:
    """Recognize Anything (RAM, RAM++) image tagging on edge devices."""


_handler_pid: int | None = None  # the process that installed the handler


def _raise_terminated(signum, _frame) -> None:
    if os.getpid() != _handler_pid:
        # A forked worker (a multiprocessing pool's, a DataLoader's) inherits the handler; pools stop their workers
        # with SIGTERM, and those should die quietly as they did before.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    raise Terminated()


def terminate_gracefully() -> None:
    """Make SIGTERM (a service manager, a job scheduler, `kill`) unwind like Ctrl-C: temporary outputs are removed
    and training says where to resume. Left alone where the host program already handles SIGTERM."""
    global _handler_pid
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        _handler_pid = os.getpid()
        signal.signal(signal.SIGTERM, _raise_terminated)


def _one_line_warnings() -> None:
    """Print ram-edge's own warnings as one `warning: ...` line on stderr (others as Python prints them)."""
    shown = warnings.showwarning
    if getattr(shown, "ram_edge", False):
        return

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, RamEdgeWarning):
            click.echo(f"warning: {message}", err=True)
        else:
            shown(message, category, filename, lineno, file, line)

    show.ram_edge = True
    warnings.showwarning = show


# Loggers of dependencies whose warnings concern their own developers, not a ram-edge user: torchao reports each CUDA
# kernel library it cannot load on a CPU machine; torch's pytree warns torchao of a deprecation.
QUIET_LOGGERS = ("torchao", "torch.utils._pytree")


def _quiet_dependency_logs() -> None:
    """Silence the dependency warnings above below ERROR (all of them with RAM_EDGE_DEBUG=1)."""
    if not debug_enabled():
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    terminate_gracefully()
    _one_line_warnings()
    _quiet_dependency_logs()
    cli.main(args=argv, prog_name="ram-edge")


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
