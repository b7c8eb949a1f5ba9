"""Quantization of ram-edge checkpoints with NNCF: calibration data, post-training quantization and
8-bit weight compression, written as quantized checkpoint directories (torch and nncf needed)."""

import os

# NNCF compiles its C++ kernels on first use and gives up after 60 s by default: a 2-core CI runner
# or a Jetson under load needs longer (seen: the 60 s limit hit on this project's 2-core machine).
os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "300")
