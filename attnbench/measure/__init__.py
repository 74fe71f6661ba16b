"""Measurement primitives: timing, memory, FLOP counting, environment fingerprint, peaks, rank maths."""
