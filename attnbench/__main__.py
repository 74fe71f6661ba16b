"""`python -m attnbench`: the command line (attnbench.cli).

`python -m` puts the working directory first on sys.path. When that directory holds a folder named
`attnbench` without an `__init__.py` (the folder that holds a clone named attnbench, for one), Python's
path finder makes that folder a namespace package `attnbench` before an import hook that comes after it
is asked: an editable install's finder (setuptools) is such a hook. The submodules then resolve against
the clone's root, so `attnbench.results` would be the clone's `results/` folder. `_unshadow` undoes this
before anything else is imported: it appends the folder that holds this package to sys.path (a regular
package anywhere on sys.path wins over namespace folders, and spawned workers inherit sys.path) and
imports the package again.
"""

from __future__ import annotations

import importlib
import os
import sys


def _unshadow() -> None:
    package = sys.modules.get("attnbench")
    if package is None or getattr(package, "__file__", None) is not None:
        return  # a regular package: this one, or one found first on sys.path (Python's normal rule)
    home = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if home not in sys.path:
        sys.path.append(home)
    for name in [m for m in sys.modules if m == "attnbench" or m.startswith("attnbench.")]:
        del sys.modules[name]
    importlib.invalidate_caches()
    importlib.import_module("attnbench")


_unshadow()

from attnbench.cli import main  # noqa: E402  (after _unshadow: it imports the package's modules)

if __name__ == "__main__":
    raise SystemExit(main())
