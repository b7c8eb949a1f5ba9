"""The shipped INT8 bundle on an emulated AVX2-only CPU (QEMU user mode, AMD Zen 3's model): the kernels each runtime
picks there and the answers it computes. No machine of this project's CI lacks VNNI for sure; QEMU runs the same
Python as that CPU would (CPUID and instructions are the model's). Skips where qemu-x86_64 is absent (.ci/run
installs it)."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest

from experiment_scripts import load
from ram_edge.default_model import default_model_path

emu = load("emulated_cpus")

ZEN3 = "EPYC-Milan"


@pytest.fixture(scope="module")
def zen3() -> str:
    problem = emu.emulator_problem(ZEN3)
    if problem:
        pytest.skip(problem)
    return ZEN3


def test_a_crash_under_emulation_is_named_by_its_signal():
    stderr = ("qemu-x86_64: warning: TCG doesn't support requested feature: CPUID.01H:ECX.vmx [bit 5]\n"
              "qemu: uncaught target signal 4 (Illegal instruction) - core dumped\n")
    assert emu._last_error(stderr, -4) == "crashed: signal 4 (Illegal instruction)"
    assert emu._last_error("", -11) == "crashed: signal 11"
    assert emu._last_error("Traceback ...\nerror: no model here\n", 2) == "no model here"


def test_without_qemu_the_reason_names_the_package(monkeypatch):
    monkeypatch.setattr(emu.shutil, "which", lambda name: None)
    monkeypatch.setattr(emu.platform, "system", lambda: "Linux")
    monkeypatch.setattr(emu.platform, "machine", lambda: "x86_64")
    assert "apt-get install qemu-user" in emu.emulator_problem()
    monkeypatch.setattr(emu.platform, "machine", lambda: "aarch64")
    assert "x86_64 Linux" in emu.emulator_problem()


def _tag(cpu: str, env: dict[str, str]) -> list[dict]:
    """`ram-edge tag` of the shipped examples with the shipped (INT8) default model, as `cpu`, one dict per image."""
    from ram_edge.default_model import PACKAGE_DIR

    proc = subprocess.run(emu.emulated(cpu, ["-m", "ram_edge.cli.main", "tag", str(PACKAGE_DIR / "examples"), "--json"]),
                          capture_output=True, text=True, env={**os.environ, **env}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [json.loads(line) for line in proc.stdout.splitlines()]


@pytest.mark.slow
def test_quickstart_on_an_avx2_cpu_gives_the_vnni_answers_with_u8u8(zen3):
    """The Quickstart's job on a Zen 3: with onnxruntime's U8U8 kernels (ram-edge's choice on CPUs without VNNI) the
    same tags and scores as the exact int32 products of the host; /proc/cpuinfo shows the host under QEMU, so the
    setting is explicit."""
    from ram_edge.runtimes.ort_runtime import INT8_U8U8_ENV

    native = _tag(emu.HOST, {INT8_U8U8_ENV: "on"})
    emulated = _tag(zen3, {INT8_U8U8_ENV: "on"})
    assert [[t["tag"] for t in r["tags"]] for r in emulated] == [[t["tag"] for t in r["tags"]] for r in native]
    scores = [(a["score"], b["score"]) for r, s in zip(emulated, native) for a, b in zip(r["tags"], s["tags"])]
    assert scores and max(abs(a - b) for a, b in scores) <= 1e-3


@pytest.mark.slow
def test_int8_bundle_kernels_and_answers_on_an_avx2_cpu(zen3, tmp_path, capsys):
    """OpenVINO on AVX2: int8 kernels are oneDNN's gemm-based ones, and off (ram-edge's choice there) the 8-bit weights
    go to float kernels; onnxruntime's U8U8 kernels compute what the host computes. The report says so."""
    bundle = default_model_path("bundle")
    report = tmp_path / "emulated.md"
    emu.main(["--bundle", str(bundle), "--cpu", zen3, "--report", str(report)])
    result = json.loads(capsys.readouterr().out)
    cells = {(c["cpu"], c["runtime"], c["int8_setting"]): c for c in result["cells"]}
    assert len(cells) == 8 and all(c["status"] == "ok" for c in cells.values()), [c["status"] for c in cells.values()]

    def int8_primitives(cell: dict) -> list[str]:
        return [k for k in cell["kernels"] if k.split()[1].lower().endswith("_i8")]

    host_on = cells[(emu.HOST, "openvino", "int8 kernels on")]
    assert int8_primitives(host_on)
    on = cells[(zen3, "openvino", "int8 kernels on")]
    assert int8_primitives(on) and not [k for k in on["kernels"] if "avx512" in k]
    off = cells[(zen3, "openvino", "int8 kernels off")]
    assert not int8_primitives(off)
    assert [k for k in off["kernels"] if k.startswith("FullyConnected") and "avx2" in k and k.endswith(" i8")]
    assert off["agreement_vs_host"] >= 0.9 and off["max_dp_vs_host"] <= 0.05
    u8u8 = cells[(zen3, "ort", "U8U8 on")]
    assert u8u8["max_dp_vs_host"] <= 1e-3 and u8u8["agreement_vs_host"] == 1.0
    text = report.read_text()
    assert f"| {zen3} | " in text and "U8U8 on" in text and "int8 kernels off" in text
    assert json.loads(report.with_suffix(".json").read_text())["cells"] == result["cells"]
    assert np.isfinite([c["max_dp_vs_host"] for c in result["cells"] if c["cpu"] == zen3]).all()


@pytest.mark.slow
def test_bf16_on_a_cpu_without_it_is_a_one_line_refusal(zen3):
    """OpenVINO's bf16 compute where the CPU has no AVX512_BF16 / AMX: a clear error, never a silent fp32 fallback."""
    proc = subprocess.run(emu.emulated(zen3, ["-m", "ram_edge.cli.main", "tag", str(sorted(emu._images(None, 1))[0]),
                                              "--runtime", "openvino", "--model", str(default_model_path("bundle_fp32")),
                                              "--compute-precision", "bf16"]),
                          capture_output=True, text=True, timeout=600)
    errors = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith(f"{emu.QEMU}: warning")]
    assert proc.returncode != 0 and proc.stdout == ""
    assert len(errors) == 1 and errors[0].startswith("error: this CPU cannot compute in bf16 (OpenVINO reports: FP32"), errors
    assert "BF16" not in errors[0] and errors[0].endswith("leave the compute precision at fp32")


def test_a_onednn_cap_runs_natively_and_only_openvino():
    """`onednn:ISA` is this machine with OpenVINO's kernels capped (QEMU has no AVX-512): no QEMU, no onnxruntime cells."""
    import sys

    cpu = f"{emu.ONEDNN}AVX512_CORE"
    assert emu.emulator_problem(cpu) is None and emu.emulated(cpu, ["-c", "pass"]) == [sys.executable, "-c", "pass"]
    cells = emu.plan([default_model_path("bundle")], [cpu])
    assert {(c.cpu, c.runtime) for c in cells if c.cpu == cpu} == {(cpu, "openvino")}
    assert sorted(c.int8_setting for c in cells if c.cpu == cpu) == ["int8 kernels off", "int8 kernels on"]


def test_off_linux_the_cpuid_probe_sees_an_avx2_cpu(zen3):
    """The path Windows and macOS take (numpy's CPUID probe, not /proc/cpuinfo), run as a Zen 3: AVX2 without VNNI,
    so ram-edge's automatic choices there are onnxruntime's exact U8U8 kernels and OpenVINO's int8 kernels off."""
    code = ("from ram_edge.cpu import cpuid_flags, x86_avx2_only, x86_int8_dot_product;"
            "f = cpuid_flags(system='Windows', processor='AMD64 Family 25 Model 33 Stepping 0, AuthenticAMD');"
            "print(sorted(f), x86_int8_dot_product(f, 'AMD64'), x86_avx2_only(f, 'AMD64'))")
    proc = subprocess.run(emu.emulated(zen3, ["-c", code]), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["['avx',", "'avx2',", "'fma',", "'sse2',", "'ssse3']", "False", "True"]
