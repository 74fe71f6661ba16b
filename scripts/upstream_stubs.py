"""Stand-ins for the modules an authors' file imports but the fixture scripts never run (timm helpers,
fvcore, optional packages): shared by scripts/make_linear_fixtures.py and scripts/make_rala_fixtures.py."""

from __future__ import annotations

import importlib
import sys
import types


def stub_module(name: str, **attrs) -> types.ModuleType:
    """Register an empty module (and its parents) unless the real one imports."""
    try:
        return importlib.import_module(name)
    except ImportError:
        pass
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        sub = ".".join(parts[:i])
        if sub not in sys.modules:
            module = types.ModuleType(sub)
            module.__path__ = []  # a package, so children can be registered
            sys.modules[sub] = module
            if i > 1:
                setattr(sys.modules[".".join(parts[: i - 1])], parts[i - 1], module)
            print(f"  stub module {sub}")
    module = sys.modules[name]
    for key, value in attrs.items():
        setattr(module, key, value)
    return module
