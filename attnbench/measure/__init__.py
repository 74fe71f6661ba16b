"""Measurement: timing, memory, FLOPs, environment fingerprint, rank metrics."""
