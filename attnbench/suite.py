"""Suites: YAML -> one frozen, validated `Suite`, or a `file:line: message` SuiteError (exit 2).

Precedence: file < `gpu:` (merged when the resolved device is cuda) < `--set key=value` (value
parsed as YAML; dotted keys reach into mappings, e.g. `--set repeats.min=3`).
Every sweep axis accepts a scalar or a list. Unknown keys, wrong types, empty sweeps and unknown
mechanisms stop the run before anything is measured.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

from attnbench.errors import AttnbenchError, SuiteError
from attnbench.registry import DTYPES, LEVELS, PASSES

METRICS = ("latency", "memory", "flops", "rank", "accuracy")
MODEL_OPTIONS = {"mixer_late", "checkpoint", "ema"}  # options keyed by a model name (level model)
DEFAULT_METRICS = ("latency", "memory", "flops")
ISOLATIONS = ("auto", "inprocess", "process")
DEFAULT_ROUNDS = 5  # the gate's calibration (README "Regression gating") holds at this default
MAX_ROUNDS = 1000


@dataclass(frozen=True)
class Repeats:
    min: int = 5
    max: int = 100
    min_time_s: float = 0.5
    target_ci: float | None = None  # stop early once the median's 95% CI half-width / median < this


@dataclass(frozen=True)
class Suite:
    name: str
    mechanisms: tuple[str, ...]  # as written (names or family:<family>); expanded by the plan
    level: tuple[str, ...] = ("op",)
    models: tuple[str, ...] = ()
    dim: tuple[int, ...] = (64,)
    heads: tuple[int, ...] = (1,)
    resolution: tuple[int, ...] = ()
    grid: tuple[tuple[int, int], ...] = ()
    batch: tuple[int, ...] = (1,)
    dtype: tuple[str, ...] = ("fp32",)
    pass_: tuple[str, ...] = ("fwd",)
    device: str = "cpu"  # resolved: cpu | cuda
    threads: int | None = None
    warmup: int = 3
    repeats: Repeats = Repeats()  # per round
    rounds: int = DEFAULT_ROUNDS  # timed cases are measured in this many rounds, each in a fresh worker process
    order_seed: int = 0  # seeds the shuffled case order of each round (recorded in FILE.suite.yaml)
    timeout_s: float = 120.0
    isolation: str = "auto"
    verify: bool = True
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    plugins: tuple[str, ...] = ()
    metrics: tuple[str, ...] = DEFAULT_METRICS
    data: str | None = None
    checkpoints: dict[str, dict[str, Any]] = field(default_factory=dict)
    flush_l2: bool = True
    cuda_graphs: bool = False
    memory_limit_gb: float | None = None
    tf32: bool = False  # TF32 matmuls/convolutions for fp32 on GPU (off unless asked; recorded)
    hardware: tuple[str, ...] = ()  # Ray: every case once per hardware kind (custom resource or accelerator type)
    exclusive: str | None = None  # "node": one case per node at a time (executors); None: one per device
    path: str = ""
    resolved: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def grids(self) -> tuple[tuple[int, int], ...]:
        """Square grids from `resolution` followed by the explicit `grid` entries (deduplicated)."""
        out: list[tuple[int, int]] = []
        for g in [(r, r) for r in self.resolution] + list(self.grid):
            if g not in out:
                out.append(g)
        return tuple(out)

    def to_yaml(self) -> str:
        """The fully resolved suite (after gpu: and --set), loadable again with load_suite."""
        return yaml.safe_dump(self.resolved, sort_keys=False)


# key -> (kind, allowed) ; kind: str | int | float | bool | intlist | strlist | grids | mapping | any
_SWEEPS = {"level", "models", "dim", "heads", "resolution", "grid", "batch", "dtype", "pass"}
_KEYS: dict[str, str] = {
    "name": "str",
    "plugins": "strlist",
    "mechanisms": "strlist",
    "level": "strlist",
    "models": "strlist",
    "dim": "intlist",
    "heads": "intlist",
    "resolution": "intlist",
    "grid": "grids",
    "batch": "intlist",
    "dtype": "strlist",
    "pass": "strlist",
    "device": "str",
    "threads": "int?",
    "warmup": "int",
    "repeats": "mapping",
    "rounds": "int",
    "order_seed": "int",
    "timeout_s": "float",
    "isolation": "str",
    "verify": "bool",
    "options": "mapping",
    "gpu": "mapping",
    "metrics": "strlist",
    "data": "str?",
    "checkpoints": "mapping",
    "flush_l2": "bool",
    "cuda_graphs": "bool",
    "memory_limit_gb": "float?",
    "tf32": "bool",
    "hardware": "strlist",
    "exclusive": "str?",
}
_ALLOWED = {"level": LEVELS, "dtype": DTYPES, "pass": PASSES, "isolation": ISOLATIONS, "metrics": METRICS,
            "device": ("auto", "cpu", "cuda"), "exclusive": ("node",)}  # fmt: skip
_REPEAT_KEYS = {"min": "int", "max": "int", "min_time_s": "float", "target_ci": "float?"}


class _Locator:
    """Maps key paths ("repeats.min", "gpu.batch") to `file:line` for error messages."""

    def __init__(self, path: str, node: yaml.Node | None):
        self.path = path
        self.lines: dict[str, int] = {}
        if node is not None:
            self._walk(node, "")

    def _walk(self, node: yaml.Node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = f"{prefix}{key_node.value}"
                self.lines[key] = key_node.start_mark.line + 1
                self._walk(value_node, key + ".")

    def where(self, key: str) -> str:
        parts = key.split(".")
        while parts:
            line = self.lines.get(".".join(parts))
            if line is not None:
                return f"{self.path}:{line}"
            parts.pop()
        return f"{self.path}:1"


def _fail(loc: Callable[[str], str], key: str, message: str) -> SuiteError:
    return SuiteError(f"{loc(key)}: {message}")


def _coerce(kind: str, key: str, value: Any, where: Callable[[str], str]) -> Any:
    def bad(expected: str) -> SuiteError:
        return _fail(where, key, f"`{key}` must be {expected}, got {value!r}")

    if kind == "str":
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if kind == "str?":
        if value is not None and not isinstance(value, str):
            raise bad("a string or null")
        return value
    if kind in ("int", "int?"):
        if value is None and kind == "int?":
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if kind in ("float", "float?"):
        if value is None and kind == "float?":
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        return float(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if kind == "mapping":
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise bad("a mapping")
        return value
    if kind in ("intlist", "strlist"):
        items = value if isinstance(value, list) else [value]
        if not items:
            raise _fail(where, key, f"`{key}` is an empty sweep; give at least one value")
        want = str if kind == "strlist" else int
        for item in items:
            if isinstance(item, bool) or not isinstance(item, want):
                raise bad(f"{'a string' if want is str else 'an integer'} or a list of them")
        if want is int and any(item <= 0 for item in items):
            raise _fail(where, key, f"`{key}` values must be positive, got {value!r}")
        return tuple(items)
    if kind == "grids":
        items = value if isinstance(value, list) else [value]
        if items and not isinstance(items[0], list):  # a single [H, W]
            items = [items]
        grids = []
        for item in items:
            ok = isinstance(item, list) and len(item) == 2 and all(
                isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in item
            )
            if not ok:
                raise bad("[H, W] or a list of [H, W] pairs of positive integers")
            grids.append((item[0], item[1]))
        return tuple(grids)
    raise AssertionError(kind)


def _apply_set(raw: dict[str, Any], assignment: str) -> str:
    if "=" not in assignment:
        raise SuiteError(f"--set {assignment!r}: expected key=value")
    key, text = assignment.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as exc:
        raise SuiteError(f"--set {assignment!r}: value is not valid YAML ({exc.problem})") from None
    target = raw
    parts = key.split(".")
    for part in parts[:-1]:
        nxt = target.get(part)
        if nxt is None:
            nxt = target[part] = {}
        if not isinstance(nxt, dict):
            raise SuiteError(f"--set {assignment!r}: `{part}` is not a mapping")
        target = nxt
    target[parts[-1]] = value
    return key


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_suite(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Suite:
    """Parse, merge (gpu:, --set) and validate a suite file. Raises SuiteError (`file:line: ...`)."""
    path = Path(path)
    shown = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SuiteError(f"{shown}: suite file not found") from None
    except UnicodeDecodeError:
        raise SuiteError(f"{shown}: not a text (UTF-8) file; a suite is YAML") from None
    except OSError as exc:
        raise SuiteError(f"{shown}: cannot read suite file ({exc.strerror})") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SuiteError(f"{shown}:{line}: malformed YAML: {problem}") from None
    if not isinstance(raw, dict):
        raise SuiteError(f"{shown}:1: a suite must be a YAML mapping of keys (name, mechanisms, ...)")
    loc = _Locator(shown, node)
    set_keys: set[str] = set()

    def where(key: str) -> str:
        top = key.split(".")[0]
        if key in set_keys or top in set_keys:
            return "--set"
        return loc.where(key)

    raw = copy.deepcopy(raw)
    for key in raw:
        if not isinstance(key, str):
            raise SuiteError(f"{shown}:1: keys must be names, got {key!r} (known: {', '.join(sorted(_KEYS))})")
        if key not in _KEYS:
            raise _fail(where, key, f"unknown key `{key}` (known: {', '.join(sorted(_KEYS))})")
    overrides_raw: dict[str, Any] = {}
    for assignment in overrides:
        set_keys.add(_apply_set(overrides_raw, assignment))
    device_raw = overrides_raw.get("device", raw.get("device", "auto"))
    device_key = "device"
    device = _coerce("str", device_key, device_raw, where)
    if device not in _ALLOWED["device"]:
        raise _fail(where, device_key, f"`device` must be one of auto, cpu, cuda, got {device!r}")
    device = resolve_device(device)
    gpu = copy.deepcopy(_coerce("mapping", "gpu", raw.get("gpu"), where))
    _deep_update(gpu, overrides_raw.pop("gpu", None) or {})  # --set gpu.batch=[...] edits the gpu: block
    for key in gpu:
        if key not in _KEYS or key in ("gpu", "name"):
            raise _fail(where, f"gpu.{key}", f"unknown or unmergeable key `{key}` under `gpu:`")
    merged = copy.deepcopy(raw)
    if device == "cuda":  # deep: `gpu: {repeats: {min: 4}}` keeps the file's repeats.max
        _deep_update(merged, copy.deepcopy(gpu))
        for key in gpu:
            loc.lines[key] = loc.lines.get(f"gpu.{key}", loc.lines.get(key, 1))
    for top in overrides_raw:
        if top not in _KEYS:
            raise SuiteError(f"--set: unknown key `{top}` (known: {', '.join(sorted(_KEYS))})")
    _deep_update(merged, overrides_raw)
    merged["device"] = device
    merged.pop("gpu", None)

    for required in ("name", "mechanisms"):
        if required not in merged:
            raise SuiteError(f"{shown}:1: missing required key `{required}`")
    values: dict[str, Any] = {}
    for key, value in merged.items():
        values[key] = _coerce(_KEYS[key], key, value, where)
    for key, allowed in _ALLOWED.items():
        if key in values and key != "device" and values[key] is not None:
            seq = values[key] if isinstance(values[key], tuple) else (values[key],)
            for item in seq:
                if item not in allowed:
                    raise _fail(where, key, f"`{key}` value {item!r} is not one of {', '.join(allowed)}")
    repeats_raw = values.get("repeats", {})
    for key in repeats_raw:
        if key not in _REPEAT_KEYS:
            raise _fail(where, f"repeats.{key}", f"unknown key `repeats.{key}` (min, max, min_time_s)")
    rep = {k: _coerce(_REPEAT_KEYS[k], f"repeats.{k}", v, where) for k, v in repeats_raw.items()}
    repeats = Repeats(**rep)
    if repeats.min < 1 or repeats.max < repeats.min or repeats.min_time_s < 0:
        raise _fail(where, "repeats", f"`repeats` needs 1 <= min <= max and min_time_s >= 0, got {repeats}")
    if not 1 <= values.get("rounds", DEFAULT_ROUNDS) <= MAX_ROUNDS:
        raise _fail(where, "rounds", f"`rounds` must be between 1 and {MAX_ROUNDS}")
    if values.get("order_seed", 0) < 0:
        raise _fail(where, "order_seed", "`order_seed` must be >= 0")
    if values.get("warmup", 0) < 0:
        raise _fail(where, "warmup", "`warmup` must be >= 0")
    if values.get("timeout_s", 1.0) <= 0:
        raise _fail(where, "timeout_s", "`timeout_s` must be positive")
    levels = values.get("level", ("op",))
    if "model" in levels and not values.get("models"):
        raise _fail(where, "level", "`level: model` needs `models:` (e.g. [ravlt_t])")
    if set(levels) - {"model"} and not (values.get("resolution") or values.get("grid")):
        raise _fail(where, "resolution", "op/mixer levels need `resolution:` or `grid:`")
    if "model" in levels and not values.get("resolution"):
        raise _fail(where, "resolution", "`level: model` needs `resolution:` (the image size)")
    options = values.get("options", {})
    for mech, opts in options.items():
        if not isinstance(opts, dict):
            raise _fail(where, f"options.{mech}", f"`options.{mech}` must be a mapping of constructor options")
    checkpoints = values.get("checkpoints", {})
    for model, spec in checkpoints.items():
        if isinstance(spec, str):
            checkpoints[model] = {"path": spec, "ema": False}
        elif not isinstance(spec, dict) or "path" not in spec or set(spec) - {"path", "ema"}:
            raise _fail(where, f"checkpoints.{model}", "each checkpoint needs `path:` (and optionally `ema:`)")
    limit = values.get("memory_limit_gb")
    if limit is not None and limit <= 0:
        raise _fail(where, "memory_limit_gb", "`memory_limit_gb` must be positive or null")
    threads = values.get("threads")
    if threads is not None and threads < 1:
        raise _fail(where, "threads", "`threads` must be >= 1 or null")

    # .py plugin paths are relative to the suite file; store them absolute so FILE.suite.yaml re-runs
    plugins = tuple(_absolute_plugin(p, path.parent) for p in values.get("plugins", ()))
    if plugins:
        merged["plugins"] = list(plugins)
    # the round structure is part of the record even where the file left it to the defaults
    merged.setdefault("rounds", values.get("rounds", DEFAULT_ROUNDS))
    merged.setdefault("order_seed", values.get("order_seed", 0))
    suite = Suite(
        name=values["name"],
        mechanisms=values["mechanisms"],
        level=levels,
        models=values.get("models", ()),
        dim=values.get("dim", (64,)),
        heads=values.get("heads", (1,)),
        resolution=values.get("resolution", ()),
        grid=values.get("grid", ()),
        batch=values.get("batch", (1,)),
        dtype=values.get("dtype", ("fp32",)),
        pass_=values.get("pass", ("fwd",)),
        device=device,
        threads=threads,
        warmup=values.get("warmup", 3),
        repeats=repeats,
        rounds=values.get("rounds", DEFAULT_ROUNDS),
        order_seed=values.get("order_seed", 0),
        timeout_s=values.get("timeout_s", 120.0),
        isolation=values.get("isolation", "auto"),
        verify=values.get("verify", True),
        options={k: dict(v) for k, v in options.items()},
        plugins=plugins,
        metrics=values.get("metrics", DEFAULT_METRICS),
        data=values.get("data"),
        checkpoints=checkpoints,
        flush_l2=values.get("flush_l2", True),
        cuda_graphs=values.get("cuda_graphs", False),
        memory_limit_gb=values.get("memory_limit_gb"),
        tf32=values.get("tf32", False),
        hardware=tuple(dict.fromkeys(values.get("hardware", ()))),
        exclusive=values.get("exclusive"),
        path=str(path),
        resolved=_jsonable(merged),
    )
    _validate_mechanisms(suite, where)
    return suite


def _absolute_plugin(plugin: str, base: Path) -> str:
    if plugin.endswith(".py") or "/" in plugin or "\\" in plugin:
        candidate = Path(plugin).expanduser()
        return str(candidate if candidate.is_absolute() else (base / candidate).resolve())
    return plugin  # a module name


def _deep_update(base: dict[str, Any], new: dict[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = value


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def _validate_mechanisms(suite: Suite, where: Callable[[str], str]) -> None:
    """Load plugins, expand family:<f>, and stop on names that are not registered."""
    from attnbench import registry

    try:
        registry.load_builtin()
        registry.load_plugins(suite.plugins, base_dir=Path(suite.path).parent)
    except AttnbenchError as exc:
        raise _fail(where, "plugins", str(exc)) from None
    for entry in suite.mechanisms:
        if entry.startswith("family:"):
            fam = entry.split(":", 1)[1]
            if not registry.names(family=fam):
                raise _fail(where, "mechanisms", f"no mechanisms in family {fam!r} (families: "
                            f"{', '.join(registry.families())})")  # fmt: skip
            continue
        try:
            registry.get(entry)
        except AttnbenchError as exc:
            raise _fail(where, "mechanisms", str(exc)) from None
    for mech, opts in suite.options.items():
        if mech in suite.models:
            bad = sorted(set(opts) - MODEL_OPTIONS)
            if bad:
                raise _fail(where, f"options.{mech}", f"unknown model options {bad} for {mech} "
                            f"(known: {', '.join(sorted(MODEL_OPTIONS))})")  # fmt: skip
            continue
        if mech not in registry.names():
            raise _fail(where, f"options.{mech}", f"options given for {mech!r}, which is neither a registered "
                        "mechanism nor one of `models:`")  # fmt: skip
        m = registry.get(mech)
        taken = {"weights"}  # rank metrics: which weights to load (random or a checkpoint)
        declared = getattr(m, "option_defaults", None)  # mechanisms that list their options
        if declared is not None:
            taken |= set(declared) | {"gate", "lepe"}
        else:
            for fn in (m.op, m.mixer):
                taken |= set(registry.accepted_options(fn, opts))
        bad = sorted(set(opts) - taken)
        if bad:
            raise _fail(where, f"options.{mech}", f"{mech} takes no option(s) {bad} in op() or mixer()")


def expand_mechanisms(entries: tuple[str, ...]) -> list[str]:
    """Names in suite order, family:<f> expanded (sorted within the family), duplicates removed."""
    from attnbench import registry

    out: list[str] = []
    for entry in entries:
        names = registry.names(family=entry.split(":", 1)[1]) if entry.startswith("family:") else [entry]
        for name in names:
            if name not in out:
                out.append(name)
    return out
