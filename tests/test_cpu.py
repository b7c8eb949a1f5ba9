"""The CPU's INT8 features read from /proc/cpuinfo (ram_edge/cpu.py)."""

from __future__ import annotations

from ram_edge.cpu import read_cpu_flags, x86_avx2_only, x86_int8_dot_product


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
