"""RALA: the eager reference and its fast forms (importing this registers them)."""

from mechanisms.rala import ablations, compiled, registrations, triton_op  # noqa: F401  (triton_op imports no triton)
