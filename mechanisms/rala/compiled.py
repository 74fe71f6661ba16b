"""`rala_compiled`: the eager RALA operator (`rala_op`) under `torch.compile(dynamic=True)`.

Compiled lazily on first use and cached for the process; `dynamic=True` makes the shapes symbolic
from the first compile, so a sweep over batch / tokens / grids reuses one graph per dtype, device
and head dim instead of recompiling per shape (RECOMPILE_LIMIT lists the exceptions). The mixer is
the eager TokenMixer shell (convs run eagerly) around the compiled operator, so op- and mixer-level
numbers isolate what compilation does to the operator. Costs are those of the eager reference
(the same math).

`check(device)` says why torch.compile cannot run here: dynamo unsupported on this Python, the
inductor backend failing to import, no working C++ compiler for CPU code generation (found and
tried once on a file including Python.h, ~0.3 s, cached), or no Triton for CUDA.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sysconfig
from typing import Callable

import torch

from attnbench.registry import register_mechanism
from mechanisms.rala.base import RalaBase
from mechanisms.rala.naive import CITE_RALA, rala_op

# fullgraph: a graph break or a hit recompile limit raises instead of silently running eager code
COMPILE_OPTIONS = {"dynamic": True, "fullgraph": True}
# Dynamo still specialises some sizes: batch or heads of 1 (0/1 specialisation), the head dim, and
# equal sizes that "duck sizing" ties together (batch == heads) until a case breaks the tie; plus
# one graph per dtype and device. A sweep can exceed dynamo's default limit of 8 graphs per
# function, so it is raised (never lowered) to this when the operator is first compiled.
RECOMPILE_LIMIT = 64


def _raise_recompile_limit(limit: int = RECOMPILE_LIMIT) -> None:
    import torch._dynamo.config as dynamo_config

    for name in ("recompile_limit", "cache_size_limit"):  # the name before torch 2.6 was cache_size_limit
        if isinstance(getattr(dynamo_config, name, None), int):
            setattr(dynamo_config, name, max(getattr(dynamo_config, name), limit))
            return


@functools.lru_cache(maxsize=1)
def compiled_rala_op() -> Callable[..., torch.Tensor]:
    """torch.compile(rala_op, dynamic=True, fullgraph=True), built once per process; compiles on first call."""
    _raise_recompile_limit()
    return torch.compile(rala_op, **COMPILE_OPTIONS)


def rala_op_compiled(q, k, v, *, grid, rope=None):
    """Same signature and result as `rala_op`, through the cached compiled function."""
    return compiled_rala_op()(q, k, v, grid=grid, rope=rope)


def _cpp_compiler() -> str | None:
    """The C++ compiler inductor's CPU backend would call (its configured one, $CXX, or a usual name)."""
    candidates = []
    try:
        from torch._inductor import config as inductor_config

        cxx = inductor_config.cpp.cxx
        candidates.extend(c for c in (cxx if isinstance(cxx, (tuple, list)) else (cxx,)) if c)
    except Exception:
        pass
    candidates.extend(c for c in (os.environ.get("CXX"), "g++", "c++", "clang++") if c)
    for name in candidates:
        path = shutil.which(name)
        if path:
            return path
    return None


@functools.lru_cache(maxsize=4)
def _cpp_smoke_test(compiler: str) -> str | None:
    """None if `compiler` can compile a C++ file that includes Python.h (what inductor's CPU code needs)."""
    include = sysconfig.get_paths().get("include", "")
    source = "#include <Python.h>\nint main() { return 0; }\n"
    try:
        done = subprocess.run(
            [compiler, "-fsyntax-only", f"-I{include}", "-x", "c++", "-"],
            input=source, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"the C++ compiler {compiler} cannot be run: {exc}"
    if done.returncode != 0:
        first = (done.stderr.strip().splitlines() or ["no output"])[0]
        return f"the C++ compiler {compiler} cannot build inductor's CPU code (Python headers missing?): {first}"
    return None


def compile_unavailable_reason(device: str | None) -> str | None:
    """None when torch.compile (inductor) can run on `device` ("cpu" | "cuda" | None), else the reason."""
    try:
        import torch._dynamo as dynamo

        if not dynamo.is_dynamo_supported():
            return "torch.compile (dynamo) is not supported on this Python/platform"
    except Exception as exc:
        return f"torch._dynamo cannot be imported: {type(exc).__name__}: {exc}"
    try:
        import torch._inductor  # noqa: F401
    except Exception as exc:
        return f"the inductor backend cannot be imported: {type(exc).__name__}: {exc}"
    dev = None if device is None else str(device).split(":")[0]
    if dev in (None, "cpu"):
        compiler = _cpp_compiler()
        if compiler is None:
            return "no C++ compiler found for inductor's CPU code (install g++ or set CXX)"
        return _cpp_smoke_test(compiler)
    if dev == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            return "inductor's CUDA code generation needs triton, which is not importable"
    return None


@register_mechanism("rala_compiled", family="rala", backend="torch-compile", reference="rala_eager", cite=CITE_RALA)
class RalaCompiled(RalaBase):
    """rala_op under torch.compile(dynamic=True); compiled on first use, cached."""

    operator = staticmethod(rala_op_compiled)
    flop_counter_safe = False  # FlopCounterMode around compiled code makes dynamo skip the frame for good

    def check(self, device: str | None) -> str | None:
        return compile_unavailable_reason(device)
