"""NNCF's C++ kernels for fake-quantized forwards, loaded so that an interrupted load cannot block later runs.

torch builds and loads the kernels under a lock file in their build folder (`FileBaton`), which is removed only when
the load finishes: a process killed while loading (Ctrl-C or SIGTERM during NNCF's "Compiling and loading torch
extension", a cached load included) leaves it behind, and every later process then waits on it for NNCF's timeout
(60 s) and fails. ram-edge loads the kernels under its own OS lock, which the OS releases whatever happens to its
holder: a process that holds it knows that no other ram-edge process is loading, so a lock file found then was left
by one that died, and is removed.
"""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path

from ram_edge.dir_lock import try_lock, unlock
from ram_edge.errors import QuantizeError, debug_enabled

OWN_LOCK = ".ram-edge-kernels.lock"
TORCH_LOCK = "lock"  # torch.utils.file_baton.FileBaton's file in the build folder
WAIT_S = 1800.0  # a first build takes about a minute here; a slow board may take many


def quiet_nncf_logs() -> None:
    """NNCF's INFO lines ("Not adding activation input quantizer ...", "Compiling and loading torch extension") stay off
    the terminal; warnings still show. RAM_EDGE_DEBUG=1 keeps them all."""
    import logging

    from nncf.common.logging.logger import nncf_logger

    nncf_logger.setLevel(logging.INFO if debug_enabled() else logging.WARNING)  # DEBUG makes NNCF write nncf_debug/ here


@functools.lru_cache(maxsize=1)
def prepare_nncf_kernels() -> Path | None:
    """Load NNCF's CPU kernels now (once per process), first removing a lock file that a killed load left behind;
    returns that file's path when one was removed."""
    quiet_nncf_logs()
    from nncf.torch.quantization.extensions import QuantizedFunctionsCPU, QuantizedFunctionsCPULoader

    build_dir = Path(QuantizedFunctionsCPULoader.get_build_dir())
    with open(build_dir / OWN_LOCK, "a+") as fh:
        _wait_for(fh, build_dir)
        try:
            stale = build_dir / TORCH_LOCK
            removed = None
            if stale.exists():
                stale.unlink()
                removed = stale
                print(f"note: removed {stale}, left by an NNCF kernel load that was interrupted", file=sys.stderr)
            QuantizedFunctionsCPU.get("Quantize_forward")  # builds if needed, loads, and keeps it for this process
            return removed
        finally:
            unlock(fh)


def _wait_for(fh, build_dir: Path) -> None:
    """Take ram-edge's kernel lock, waiting while another ram-edge process builds or loads the kernels."""
    deadline = time.monotonic() + WAIT_S
    said = False
    while not try_lock(fh):
        if not said:
            print(f"waiting for another ram-edge process that is building or loading NNCF's kernels in {build_dir}",
                  file=sys.stderr)
            said = True
        if time.monotonic() > deadline:
            raise QuantizeError(f"another process has been building NNCF's kernels in {build_dir} for over {WAIT_S:.0f} s; "
                                "wait for it, or stop it and run again")
        time.sleep(0.5)
