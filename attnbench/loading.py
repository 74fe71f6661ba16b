"""Where mechanisms come from, and the one call that loads them.

- Built-ins: `BUILTIN`, the modules of this project whose import registers its mechanisms (the
  `mechanisms` package). The list lives here, not in the registry: `attnbench.registry` imports no
  mechanism, so `mechanisms -> attnbench.registry` is the only direction between the two.
- Installed distributions: every entry point of the group `attnbench.mechanisms` (importlib.metadata),
  e.g. in a plugin's pyproject.toml::

      [project.entry-points."attnbench.mechanisms"]
      my_attention = "my_package.attention"   # a module whose import registers mechanisms

- A suite's `plugins:` (module names or .py files), loaded with the suite (`registry.load_plugins`).

`load_mechanisms()` (built-ins and entry points) is called by the program's entry points: the CLI (`main`,
for the commands that need mechanisms), `attnbench.run`, a worker process's set-up, `python -m
attnbench.models.imagenet`, and the test suite's conftest. Elsewhere the registry's first lookup loads the
built-ins alone (`load_mechanisms(entry_points=False)`), so `create_ravlt("ravlt_t")` works in a fresh
interpreter; installed entry points and a suite's plugins are loaded only where asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from importlib import metadata

from attnbench.errors import PluginError

BUILTIN = ("mechanisms",)
ENTRY_POINT_GROUP = "attnbench.mechanisms"

_LOADED_ENTRY_POINTS: set[str] = set()


def load_mechanisms(builtin: Sequence[str] = BUILTIN, *, entry_points: bool = True) -> list[str]:
    """Import the built-in mechanism modules `builtin`, then (unless `entry_points` is False) those named by
    installed distributions' `attnbench.mechanisms` entry points. Idempotent; returns what was loaded."""
    loaded = []
    for module in builtin:
        try:
            importlib.import_module(module)
        except Exception as exc:
            raise PluginError(f"built-in mechanisms {module!r} failed to import: {type(exc).__name__}: {exc}") from exc
        loaded.append(module)
    if entry_points:
        loaded += load_entry_points()
    return loaded


def load_entry_points(group: str = ENTRY_POINT_GROUP) -> list[str]:
    """Load every entry point of `group` once (its module's import registers mechanisms); their values."""
    loaded = []
    for ep in metadata.entry_points(group=group):
        if ep.value not in _LOADED_ENTRY_POINTS:
            try:
                ep.load()
            except Exception as exc:
                dist = getattr(getattr(ep, "dist", None), "name", None) or "an installed package"
                raise PluginError(
                    f"mechanisms entry point {ep.name!r} = {ep.value!r} of {dist} failed to load: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            _LOADED_ENTRY_POINTS.add(ep.value)
        loaded.append(ep.value)
    return loaded
