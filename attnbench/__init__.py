"""attnbench: honest benchmarks of attention mechanisms for vision models."""

__version__ = "0.1.0"
