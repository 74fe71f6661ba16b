"""RALA: the eager reference and its fast forms (importing this registers them)."""

from mechanisms.rala import compiled, registrations  # noqa: F401
