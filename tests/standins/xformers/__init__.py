"""Stand-in for the xformers package (only `xformers.ops.memory_efficient_attention`); tests only."""

__version__ = "0.0.0+standin"
