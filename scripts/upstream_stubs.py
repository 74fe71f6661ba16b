"""Stand-ins for the modules an authors' file imports but the fixture scripts never run (timm helpers,
fvcore, optional packages), and the loader of an authors' file: shared by scripts/make_linear_fixtures.py,
scripts/make_local_fixtures.py and scripts/make_rala_fixtures.py."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import sys
import types

from torch import nn


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


class Unused(nn.Module):
    """A stand-in for a layer class an authors' file imports but the fixture never runs (DropPath and the like)."""

    def __init__(self, *args, **kwargs):
        super().__init__()


def stub_timm_layers() -> None:
    """timm.models.layers with the helpers the authors' files use: DropPath (unused), to_2tuple, trunc_normal_."""

    def trunc_normal_(tensor, std=1.0, **kwargs):
        return nn.init.trunc_normal_(tensor, std=std)

    def to_2tuple(x):
        return tuple(x) if isinstance(x, (tuple, list)) else (x, x)

    stub_module("timm.models.layers", DropPath=Unused, to_2tuple=to_2tuple, trunc_normal_=trunc_normal_)


def load_file(path: str, module_name: str, package: str | None = None) -> types.ModuleType:
    """Execute an authors' file as module `module_name` (in `package`, for its relative imports), its prints
    swallowed (warnings about optional kernels)."""
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    if package:
        module.__package__ = package
    sys.modules[module_name] = module
    with contextlib.redirect_stdout(io.StringIO()):
        spec.loader.exec_module(module)
    return module
