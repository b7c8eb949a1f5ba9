"""Quantization of ram-edge checkpoints with NNCF: calibration data, post-training quantization and
8-bit weight compression, written as quantized checkpoint directories (torch and nncf needed)."""
