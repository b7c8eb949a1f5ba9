"""What this CPU offers for INT8 and BF16 arithmetic: the kernel's CPU flags (Linux /proc/cpuinfo), elsewhere (Windows,
macOS) numpy's CPUID probe. No heavy imports."""

from __future__ import annotations

import functools
import platform
import re
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
# x86 instructions that compute int8 dot products in one step; without them (AVX2 only) int8 kernels emulate them.
INT8_DOT_PRODUCT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
X86_MACHINES = ("x86_64", "amd64", "i386", "i686", "x86")
# numpy's CPUID feature names -> the /proc/cpuinfo names used here (those that decide the INT8 / BF16 kernels).
NUMPY_FEATURES = {"SSE2": "sse2", "SSSE3": "ssse3", "AVX": "avx", "AVX2": "avx2", "FMA3": "fma", "AVX512F": "avx512f",
                  "AVX512BW": "avx512bw", "AVX512VNNI": "avx512_vnni", "AVX512BF16": "avx512_bf16"}
# Intel family-6 models with AVX2 but neither AVX-512 nor AVX-VNNI: Haswell to Comet Lake. A closed list: client CPUs
# from Alder Lake on add AVX-VNNI, which numpy does not report, so an unlisted AVX2-only Intel model stays unknown.
INTEL_AVX2_ONLY_MODELS = frozenset({60, 63, 69, 70,  # Haswell
                                    61, 71, 79, 86,  # Broadwell
                                    78, 94,  # Skylake client
                                    142, 158, 165, 166})  # Kaby, Coffee, Whiskey, Amber, Comet Lake


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


def _numpy_cpu_features() -> dict[str, bool]:
    try:  # numpy 2
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:
        try:  # numpy 1
            from numpy.core._multiarray_umath import __cpu_features__
        except ImportError:
            return {}
    return dict(__cpu_features__)


def cpuid_flags(features: dict[str, bool] | None = None, system: str | None = None,
                processor: str | None = None) -> frozenset[str]:
    """This CPU's INT8 / BF16 flags from numpy's CPUID probe, in /proc/cpuinfo's names; empty (unknown) where an AVX-VNNI
    unit, which numpy does not report, cannot be ruled out (Intel AVX2 CPUs it does not know to predate Alder Lake)."""
    features = _numpy_cpu_features() if features is None else features
    flags = frozenset(name for key, name in NUMPY_FEATURES.items() if features.get(key))
    if "avx2" not in flags or "avx512f" in flags:
        # Every CPU with AVX-VNNI has AVX2, and every one with AVX-512 as well has AVX512_VNNI, which numpy reports.
        return flags
    system = platform.system() if system is None else system
    processor = platform.processor() if processor is None else processor
    if system == "Darwin" or "AuthenticAMD" in processor:
        # No Intel Mac has AVX-VNNI; AMD adds it only beside AVX-512 (Zen 4 on).
        return flags
    model = re.search(r"Family 6 Model (\d+)", processor)
    if "GenuineIntel" in processor and model and int(model.group(1)) in INTEL_AVX2_ONLY_MODELS:
        return flags
    return frozenset()


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """This machine's CPU flags (read once): /proc/cpuinfo on Linux, numpy's CPUID probe elsewhere."""
    if platform.system() == "Linux":
        return read_cpu_flags()
    return cpuid_flags()


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
