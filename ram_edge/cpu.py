"""What this CPU offers for INT8 and BF16 arithmetic, from the kernel's CPU flags (Linux /proc/cpuinfo): no heavy imports."""

from __future__ import annotations

import functools
import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
# x86 instructions that compute int8 dot products in one step; without them (AVX2 only) int8 kernels emulate them.
INT8_DOT_PRODUCT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
X86_MACHINES = ("x86_64", "amd64", "i386", "i686", "x86")


def read_cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The flags of the first processor listed in `cpuinfo` (empty when it cannot be read or lists none)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """This machine's CPU flags (read once)."""
    return read_cpu_flags()


def x86_int8_dot_product(flags: frozenset[str] | None = None, machine: str | None = None) -> bool | None:
    """True / False on an x86 CPU whose flags are known: does it have VNNI or AMX; None elsewhere (ARM, no flags)."""
    machine = (machine if machine is not None else platform.machine()).lower()
    flags = cpu_flags() if flags is None else flags
    if machine not in X86_MACHINES or not flags:
        return None
    return any(f in flags for f in INT8_DOT_PRODUCT_FLAGS)


def x86_avx2_only(flags: frozenset[str] | None = None, machine: str | None = None) -> bool:
    """True on an x86 CPU known to lack VNNI, AMX and AVX-512 (AMD Zen 3 and older, Intel client CPUs before Ice Lake):
    its int8 kernels have AVX2's 16-bit multiply-adds only. False where any of them is present or the flags are unknown."""
    flags = cpu_flags() if flags is None else flags
    return x86_int8_dot_product(flags, machine) is False and "avx512bw" not in flags
