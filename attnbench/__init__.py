"""attnbench: honest benchmarks of attention mechanisms for vision models.

The Python API (`attnbench.api`): `run(suite, *, out=None, rounds=None, overrides=None, progress=False)`,
`load(path)` and `load_samples(path)`, each returning a pandas DataFrame. They are imported on first use,
so `import attnbench` stays light (no torch, pandas or mechanisms).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["__version__", "load", "load_samples", "run"]

if TYPE_CHECKING:
    from attnbench.api import load, load_samples, run

_API = ("load", "load_samples", "run")


def __getattr__(name: str) -> Any:
    if name in _API:
        from attnbench import api

        return getattr(api, name)
    raise AttributeError(f"module 'attnbench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
