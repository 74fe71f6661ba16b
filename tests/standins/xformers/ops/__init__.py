"""Stand-in for xformers.ops: re-exports memory_efficient_attention from .fmha like the real package."""

from xformers.ops.fmha import CALLS, memory_efficient_attention

__all__ = ["CALLS", "memory_efficient_attention"]
