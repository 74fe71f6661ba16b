"""RALA: the eager reference and its fast forms (importing this registers them)."""

from mechanisms.rala import ablations, compiled, registrations  # noqa: F401
