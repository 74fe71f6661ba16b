"""RALA: the readable reference (naive.py) and its registered forms, each registered next to its code:
eager.py, compiled.py, triton_op.py (imports no triton), ablations.py. Importing this registers them."""

from mechanisms.rala import ablations, compiled, eager, triton_op  # noqa: F401
