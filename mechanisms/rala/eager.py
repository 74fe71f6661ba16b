"""`rala_eager`: RALA's readable reference (naive.py) registered as it is, the family's reference."""

from __future__ import annotations

from attnbench.registry import register_mechanism
from mechanisms.rala.base import RalaBase
from mechanisms.rala.naive import CITE_RALA


@register_mechanism("rala_eager", family="rala", backend="torch", reference=None, cite=CITE_RALA)
class RalaEager(RalaBase):
    """Rank-Augmented Linear Attention, readable eager PyTorch (the family's reference)."""
