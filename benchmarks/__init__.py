"""Benchmarks: the harness behind `ram-edge bench` (latency, throughput, memory, load time) and reports.

Importing this package imports no runtime; the runtime under test loads when a benchmark runs.
"""

from .harness import BenchResult, matmul_roofline, run_benchmark, write_markdown_report

__all__ = ["BenchResult", "matmul_roofline", "run_benchmark", "write_markdown_report"]
