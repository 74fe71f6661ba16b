"""The mechanism registry: one decorated class per mechanism, a plain dict, small query functions.

A mechanism module does::

    @register_mechanism("rala_eager", family="rala", backend="torch", ...)
    class RalaEager(Mechanism):
        def op(self, q, k, v, *, grid): ...
        def mixer(self, dim, num_heads, **options): ...
        def flops(self, s, *, level, pass_): ...
        def bytes(self, s, *, level, dtype): ...

`get(name)` returns the (single) instance; its decorator fields are attributes. Calling `op` or
`mixer` of a mechanism that is unavailable raises `MechanismUnavailable(reason)`.

The lookups (`get`, `names`, `families`) load the built-in mechanisms on first use
(`attnbench.loading.load_mechanisms(entry_points=False)`), so a fresh interpreter can build a model or
list the mechanisms without a set-up call; plugins (a suite's `plugins:`, `load_plugins`) and installed
entry points stay explicit. The module imports no mechanism itself: the load goes through
`attnbench.loading`, which imports the `mechanisms` package by name at call time.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from attnbench.dtypes import DTYPES
from attnbench.errors import MechanismUnavailable, PluginError, UnknownMechanism

__all__ = [
    "Mechanism",
    "MechanismUnavailable",
    "Shape",
    "families",
    "get",
    "load_plugins",
    "names",
    "register_mechanism",
    "DTYPES",
    "LEVELS",
    "PASSES",
    "BACKWARD_PASSES",
]

LEVELS = ("op", "mixer", "model")
# fwd: the forward alone; fwd_bwd: forward + backward; bwd: the backward alone, of a forward computed outside
# the timed call (attnbench.workloads.closure.timed_call)
PASSES = ("fwd", "fwd_bwd", "bwd")
BACKWARD_PASSES = ("fwd_bwd", "bwd")  # passes that compute gradients (need has_backward; verify checks grads)


@dataclass(frozen=True)
class Shape:
    """The shape of one case. `dim` = heads * head_dim at op level; mixer channels at mixer level."""

    batch: int
    heads: int
    height: int
    width: int
    head_dim: int
    dim: int

    @property
    def tokens(self) -> int:
        return self.height * self.width


class Mechanism:
    """Base class. Subclasses implement what they support; the rest raises NotImplementedError.

    Attributes set by `register_mechanism`: name, family, backend, reference, requires, devices,
    dtypes, head_dims, has_backward, cite, levels (derived: which of op/mixer are implemented).
    """

    name: str = ""
    family: str = ""
    backend: str = ""
    reference: str | None = None
    requires: tuple[str, ...] = ()
    devices: tuple[str, ...] = ("cpu", "cuda")
    dtypes: tuple[str, ...] = DTYPES
    head_dims: tuple[int, ...] | None = None
    has_backward: bool = True
    cite: str = ""
    # Memory layout the op prefers its (B, h, N, d) inputs in: "bhnd" (contiguous) or "bnhd" (a
    # (B, N, h, d) tensor viewed as (B, h, N, d)); workloads build inputs in it, outside the timed call.
    layout: str = "bhnd"
    # False where torch's FlopCounterMode must not run the mechanism: it cannot see inside custom
    # kernels (Triton), and a dispatch mode around torch.compile'd code poisons dynamo's frame cache.
    flop_counter_safe: bool = True
    # False where the backward cannot run twice through one retained graph, which pass bwd needs
    # (attnbench.workloads.closure): e.g. a compiled backward that reuses its saved tensors' memory.
    repeatable_backward: bool = True
    # True where op/mixer run code through torch.compile: each timed case then writes `compile_s` (its first call
    # after torch._dynamo.reset()) and `recompiles` (graphs compiled during the timed repeats) rows.
    compiled: bool = False
    # The public code the implementation was checked against ("owner/repo@commit path"); shown by `list`.
    upstream: str = ""

    # -- the interface (docs/design.md, "Mechanisms and the registry") ---------------------------
    def op(self, q, k, v, *, grid):  # (B, h, N, d) x3 -> (B, h, N, d); grid = (H, W), N = H*W
        raise NotImplementedError(f"{self.name} has no parameter-free operator (mixer level only)")

    def mixer(self, dim: int, num_heads: int, **options):  # -> nn.Module: forward(x, rope)
        raise NotImplementedError(f"{self.name} has no mixer")

    def flops(self, s: Shape, *, level: str, pass_: str) -> float:
        raise NotImplementedError(f"{self.name} has no analytic FLOP count")

    def bytes(self, s: Shape, *, level: str, dtype: str) -> float:
        raise NotImplementedError(f"{self.name} has no analytic byte count")

    def check(self, device: str | None) -> str | None:
        """None if usable on `device` (None: device-independent checks only), else the reason."""
        return None

    def case_reason(
        self, *, level: str, pass_: str, device: str, grid: tuple[int, int] | None, options: dict[str, Any]
    ) -> str | None:
        """Why this mechanism cannot run one case that its declared fields allow, else None: a grid its pattern
        cannot take ("impossible shape: ..."), a pass it has on some devices only ("unsupported: ..."). The
        planner records it as the case's skip reason. At model level `grid` is None (each stage has its own)."""
        return None

    def reference_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """The case's options that configure the `reference` mechanism too when a case is verified (options that
        define the function computed, such as a local pattern's window); {} for most: their options tune the
        candidate's implementation or approximation, and the reference runs its defaults."""
        return {}

    def variant(self, level: str, options: dict[str, Any]) -> str:
        """The results row's `variant` at op/mixer level: which configuration a case runs where a mechanism
        has several (e.g. "+lepe+gate", "features=128"); "" for the default one. Part of the case_id."""
        return ""

    def stage_options(self, stage: int) -> dict[str, Any]:
        """Mixer options for stage `stage` (0-based) of a hierarchical backbone (attnbench.models), where
        the paper configures its layer per stage (Agent attention: 9/16/49/49 agents); {} for most."""
        return {}

    # -- derived ---------------------------------------------------------------------------------
    @property
    def levels(self) -> tuple[str, ...]:
        out = []
        for level in ("op", "mixer"):
            if _implements(type(self), level):
                out.append(level)
        return tuple(out)

    def supports(self, level: str) -> bool:
        return level in self.levels

    def available(self, device: str | None = "cpu") -> tuple[bool, str]:
        """(True, "") when usable on `device`, else (False, reason). Cached per device."""
        cache = self.__dict__.setdefault("_avail_cache", {})
        if device not in cache:
            cache[device] = self._availability(device)
        return cache[device]

    def _availability(self, device: str | None) -> tuple[bool, str]:
        for module in self.requires:
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                return False, f"python package '{module}' is not installed (pip install {_pip_name(module)})"
        if device is not None:
            dev = str(device).split(":")[0]
            if dev not in self.devices:
                return False, f"runs on {'/'.join(self.devices)} only, not {dev}"
            if dev == "cuda":
                import torch

                if not torch.cuda.is_available():
                    return False, "CUDA is not available on this machine"
        try:
            reason = self.check(device)
        except Exception as exc:  # a check that crashes is a reason, not a crash of the caller
            reason = f"availability check failed: {type(exc).__name__}: {exc}"
        if reason:
            return False, str(reason)
        return True, ""

    def __repr__(self) -> str:
        return f"<Mechanism {self.name} family={self.family} backend={self.backend}>"


_PIP_NAMES = {"flash_attn": "flash-attn", "flash_attn_interface": "flash-attn (FA3 build)"}


def _pip_name(module: str) -> str:
    return _PIP_NAMES.get(module, module)


def _implements(cls: type, method: str) -> bool:
    return getattr(cls, method) is not getattr(Mechanism, method)


def accepted_options(fn: Callable, options: dict[str, Any]) -> dict[str, Any]:
    """The subset of `options` that `fn` takes as keywords (all of them if it has **kwargs).

    Suite options configure a mechanism at every level; an op, a mixer and a cost function each
    take the ones that concern them (e.g. `gate` is a mixer option, `features` both)."""
    import inspect

    if not options:
        return {}
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return dict(options)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(options)
    return {k: v for k, v in options.items() if k in params}


_REGISTRY: dict[str, Mechanism] = {}
_BUILTINS_REQUESTED = False  # set once the first lookup has asked for the built-ins (or while it loads them)


def _ensure_builtins() -> None:
    """Load the built-in mechanisms on the first lookup; a no-op afterwards and during that load (a mechanism
    module that looks another one up while it is imported sees the registry as filled so far)."""
    global _BUILTINS_REQUESTED
    if _BUILTINS_REQUESTED:
        return
    _BUILTINS_REQUESTED = True
    from attnbench.loading import load_mechanisms

    try:
        load_mechanisms(entry_points=False)
    except BaseException:
        _BUILTINS_REQUESTED = False  # the next lookup tries again (and raises the same error)
        raise


def _guarded(method: Callable, kind: str) -> Callable:
    @functools.wraps(method)
    def wrapper(self: Mechanism, *args: Any, **kwargs: Any):
        if kind == "op":
            tensor = args[0] if args else kwargs.get("q")
            device = getattr(getattr(tensor, "device", None), "type", None)
        else:
            device = None
        ok, reason = self.available(device)
        if not ok:
            raise MechanismUnavailable(f"{self.name} is unavailable: {reason}")
        return method(self, *args, **kwargs)

    wrapper._attnbench_guarded = True  # type: ignore[attr-defined]
    return wrapper


def register_mechanism(
    name: str,
    *,
    family: str,
    backend: str = "torch",
    reference: str | None = None,
    requires: Iterable[str] = (),
    devices: Iterable[str] = ("cpu", "cuda"),
    dtypes: Iterable[str] = DTYPES,
    head_dims: Iterable[int] | None = None,
    has_backward: bool = True,
    cite: str = "",
) -> Callable[[type], type]:
    """Class decorator: instantiate the mechanism once and register it under `name`."""

    def decorate(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, Mechanism)):
            raise TypeError(f"@register_mechanism({name!r}) must decorate a Mechanism subclass")
        if name in _REGISTRY:
            raise ValueError(
                f"mechanism name {name!r} is already registered by {type(_REGISTRY[name]).__module__}; "
                "choose another name"
            )
        bad = set(dtypes) - set(DTYPES)
        if bad:
            raise ValueError(f"{name}: unknown dtypes {sorted(bad)} (use {DTYPES})")
        for method in ("op", "mixer"):
            impl = getattr(cls, method)
            if impl is not getattr(Mechanism, method) and not getattr(impl, "_attnbench_guarded", False):
                setattr(cls, method, _guarded(impl, method))
        inst = cls()
        inst.name = name
        inst.family = family
        inst.backend = backend
        inst.reference = reference
        inst.requires = tuple(requires)
        inst.devices = tuple(devices)
        inst.dtypes = tuple(dtypes)
        inst.head_dims = tuple(head_dims) if head_dims is not None else None
        inst.has_backward = has_backward
        inst.cite = cite
        _REGISTRY[name] = inst
        return cls

    return decorate


def unregister(name: str) -> None:
    """Remove a registration (tests and interactive use)."""
    _REGISTRY.pop(name, None)


def get(name: str) -> Mechanism:
    """The registered mechanism `name`; unknown names raise UnknownMechanism naming close matches."""
    _ensure_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        if not _REGISTRY:
            raise UnknownMechanism(
                f"unknown mechanism {name!r}: no mechanisms are loaded (the registry is empty); "
                "attnbench.loading.load_mechanisms() loads the built-in ones"
            ) from None
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownMechanism(f"unknown mechanism {name!r}{hint} (`python -m attnbench list` shows all)") from None


def names(family: str | None = None) -> list[str]:
    """Registered names, sorted; only those of `family` when given."""
    _ensure_builtins()
    return sorted(n for n, m in _REGISTRY.items() if family is None or m.family == family)


def families() -> list[str]:
    """The families of the registered mechanisms, sorted."""
    _ensure_builtins()
    return sorted({m.family for m in _REGISTRY.values()})


_LOADED_PLUGIN_FILES: dict[str, str] = {}


def load_plugins(plugins: Iterable[str], base_dir: str | Path | None = None) -> list[str]:
    """Import plugin modules (dotted names) or .py files (paths, relative to `base_dir`).

    Loading the same module or file twice is a no-op. Returns the module names imported.
    """
    loaded = []
    for plugin in plugins:
        plugin = str(plugin)
        if plugin.endswith(".py") or "/" in plugin or "\\" in plugin:
            path = Path(plugin).expanduser()
            if not path.is_absolute() and base_dir is not None:
                path = Path(base_dir) / path
            path = path.resolve()
            if not path.is_file():
                looked = f" (looked at {path})" if str(path) != plugin else ""
                raise PluginError(f"plugin file {plugin!r} not found{looked}")
            key = str(path)
            if key in _LOADED_PLUGIN_FILES:
                loaded.append(_LOADED_PLUGIN_FILES[key])
                continue
            mod_name = f"attnbench_plugin_{abs(hash(key)):x}_{path.stem}"
            spec = importlib.util.spec_from_file_location(mod_name, path)
            if spec is None or spec.loader is None:
                raise PluginError(f"plugin file {plugin!r} cannot be imported as a Python module")
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            try:
                spec.loader.exec_module(module)
            except Exception as exc:
                sys.modules.pop(mod_name, None)
                raise PluginError(f"plugin {plugin!r} failed to import: {type(exc).__name__}: {exc}") from exc
            _LOADED_PLUGIN_FILES[key] = mod_name
            loaded.append(mod_name)
        else:
            try:
                importlib.import_module(plugin)
            except ImportError as exc:
                raise PluginError(
                    f"plugin module {plugin!r} cannot be imported ({exc}); check the name or PYTHONPATH"
                ) from exc
            except Exception as exc:
                raise PluginError(f"plugin {plugin!r} failed to import: {type(exc).__name__}: {exc}") from exc
            loaded.append(plugin)
    return loaded
