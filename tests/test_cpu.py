"""The CPU's INT8 features read from /proc/cpuinfo or, off Linux, numpy's CPUID probe (ram_edge/cpu.py)."""

from __future__ import annotations

import platform

import pytest

from ram_edge.cpu import NUMPY_FEATURES, cpuid_flags, read_cpu_flags, x86_avx2_only, x86_int8_dot_product


def test_flags_of_the_first_processor_are_read(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx2 fma\n\n"
                       "processor\t: 1\nflags\t\t: fpu sse2 avx2 fma avx512_vnni\n")
    assert read_cpu_flags(cpuinfo) == {"fpu", "sse2", "avx2", "fma"}
    assert read_cpu_flags(tmp_path / "missing") == frozenset()
    (tmp_path / "arm").write_text("processor\t: 0\nFeatures\t: fp asimd asimddp\n")
    assert read_cpu_flags(tmp_path / "arm") == frozenset()


def test_int8_dot_product_is_known_on_x86_only():
    assert x86_int8_dot_product(frozenset({"avx2", "avx512_vnni"}), "x86_64") is True
    assert x86_int8_dot_product(frozenset({"avx2", "avx_vnni"}), "AMD64") is True
    assert x86_int8_dot_product(frozenset({"avx2", "amx_int8"}), "x86_64") is True
    assert x86_int8_dot_product(frozenset({"avx2", "fma"}), "x86_64") is False  # AMD Zen 3, Intel before Cascade Lake
    assert x86_int8_dot_product(frozenset({"asimddp"}), "aarch64") is None  # Jetson: not this question
    assert x86_int8_dot_product(frozenset(), "x86_64") is None  # flags unreadable: unknown, not "no"


def test_avx2_only_means_no_vnni_amx_or_avx512():
    assert x86_avx2_only(frozenset({"avx2", "fma"}), "x86_64") is True  # AMD Zen 3
    assert x86_avx2_only(frozenset({"avx2", "avx512f", "avx512bw"}), "x86_64") is False  # Skylake-SP: avx512_core int8
    assert x86_avx2_only(frozenset({"avx2", "avx_vnni"}), "x86_64") is False  # Alder Lake
    assert x86_avx2_only(frozenset(), "x86_64") is False  # unknown: OpenVINO keeps its own choice
    assert x86_avx2_only(frozenset({"asimd"}), "aarch64") is False


BASE = {"SSE2": True, "SSSE3": True, "AVX": True}
AVX2 = {**BASE, "AVX2": True, "FMA3": True}
COMET_LAKE = "Intel64 Family 6 Model 165 Stepping 2, GenuineIntel"
ALDER_LAKE = "Intel64 Family 6 Model 154 Stepping 3, GenuineIntel"
ZEN3 = "AMD64 Family 25 Model 33 Stepping 0, AuthenticAMD"


def test_cpuid_answers_where_numpy_tells_enough():
    """Off Linux: numpy's CPUID features decide, except an AVX-VNNI unit, which numpy does not report."""
    vnni = cpuid_flags({**AVX2, "AVX512F": True, "AVX512BW": True, "AVX512VNNI": True}, "Windows", ALDER_LAKE)
    assert x86_int8_dot_product(vnni, "AMD64") is True  # Ice Lake, Zen 4: numpy reports AVX512_VNNI
    skylake_sp = cpuid_flags({**AVX2, "AVX512F": True, "AVX512BW": True}, "Windows", "Intel64 Family 6 Model 85")
    assert x86_int8_dot_product(skylake_sp, "AMD64") is False and not x86_avx2_only(skylake_sp, "AMD64")
    for system, processor in (("Windows", ZEN3), ("Windows", COMET_LAKE), ("Darwin", "i386")):
        flags = cpuid_flags(AVX2, system, processor)
        assert flags == {"sse2", "ssse3", "avx", "avx2", "fma"}, (system, processor)
        assert x86_avx2_only(flags, "x86_64") is True
    sandy_bridge = cpuid_flags(BASE, "Windows", "Intel64 Family 6 Model 42 Stepping 7, GenuineIntel")
    assert x86_int8_dot_product(sandy_bridge, "AMD64") is False  # no AVX2: no AVX-VNNI either


def test_cpuid_leaves_avx_vnni_unknown_on_newer_intel_clients():
    """An AVX2-only reading on an Intel model after Comet Lake (Alder Lake on: AVX-VNNI) is 'unknown', not 'no VNNI':
    each runtime then keeps its own choice."""
    for processor in (ALDER_LAKE, "Intel64 Family 6 Model 204 Stepping 0, GenuineIntel", ""):
        flags = cpuid_flags(AVX2, "Windows", processor)
        assert flags == frozenset()
        assert x86_int8_dot_product(flags, "AMD64") is None and x86_avx2_only(flags, "AMD64") is False


@pytest.mark.skipif(platform.system() != "Linux" or platform.machine() != "x86_64" or not read_cpu_flags(),
                    reason="needs x86_64 Linux with a readable /proc/cpuinfo to compare against")
def test_numpy_cpuid_agrees_with_the_kernel_on_this_machine():
    """The off-Linux path read here: numpy's CPUID probe finds the same INT8 / BF16 features as /proc/cpuinfo."""
    kernel = read_cpu_flags() & set(NUMPY_FEATURES.values())
    numpy_view = cpuid_flags(system="Darwin")  # the Mac path returns numpy's reading whole
    assert numpy_view == kernel
