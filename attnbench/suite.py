"""Suites: YAML -> one frozen, validated `Suite`, or a `file:line: message` SuiteError (exit 2).

Precedence: file < `gpu:` (merged when the resolved device is cuda) < `--set key=value` (value
parsed as YAML; dotted keys reach into mappings, e.g. `--set repeats.min=3`).
Every sweep axis accepts a scalar or a list. Unknown keys, wrong types, empty sweeps and unknown
mechanisms stop the run before anything is measured.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

from attnbench.dtypes import DTYPES
from attnbench.errors import AttnbenchError, SuiteError
from attnbench.registry import LEVELS, PASSES
from attnbench.userinput import MAX_SUITE_BYTES, YamlInputError, compose_yaml, load_yaml, read_user_text

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


# upper bounds: beyond them a value is a typo (and 10**30 could not be written to a results row and read back)
_MAX_INT = {"dim": 1 << 16, "heads": 1 << 12, "resolution": 1 << 15, "grid": 1 << 15, "batch": 1 << 20,
            "threads": 1 << 12, "warmup": 100_000, "repeats.min": 1_000_000, "repeats.max": 1_000_000}  # fmt: skip
_MAX_FLOAT = {"timeout_s": 7 * 86400.0, "repeats.min_time_s": 86400.0, "repeats.target_ci": 1.0,
              "memory_limit_gb": float(1 << 20)}  # fmt: skip
MAX_NAME = 100  # characters of a suite name (it also names the default results file)
MAX_TEXT = 4096  # characters of any other string (mechanism names, paths)
INT32 = (1 << 31) - 1


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _text_problem(text: str, limit: int) -> str | None:
    if len(text) > limit:
        return f"longer than {limit} characters"
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        return "contains control characters"
    return None


def _coerce(kind: str, key: str, value: Any, where: Callable[[str], str]) -> Any:
    """`value` checked against `kind` (type) and the key's range; raises SuiteError naming file:line."""

    def bad(expected: str) -> SuiteError:
        return _fail(where, key, f"`{key}` must be {expected}, got {_show(value)}")

    def check_text(item: str) -> str:
        problem = _text_problem(item, MAX_NAME if key == "name" else MAX_TEXT)
        if problem:
            raise _fail(where, key, f"`{key}` value {_show(item)} {problem}")
        return item

    def check_int(item: int) -> int:
        top = _MAX_INT.get(key, INT32)
        if item > top:
            raise _fail(where, key, f"`{key}` value {_show(item)} is larger than {top}")
        return item

    if kind == "str":
        if not isinstance(value, str):
            raise bad("a string")
        return check_text(value)
    if kind == "str?":
        if value is not None and not isinstance(value, str):
            raise bad("a string or null")
        return value if value is None else check_text(value)
    if kind in ("int", "int?"):
        if value is None and kind == "int?":
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return check_int(value)
    if kind in ("float", "float?"):
        if value is None and kind == "float?":
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        if isinstance(value, int) and abs(value) > 1e300:
            raise bad("a finite number")
        number = float(value)
        if not math.isfinite(number):
            raise bad("a finite number")
        top = _MAX_FLOAT.get(key)
        if top is not None and number > top:
            raise _fail(where, key, f"`{key}` value {_show(value)} is larger than {top:g}")
        return number
    if kind == "bool":
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if kind == "mapping":
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise bad("a mapping")
        for sub in value:
            if not isinstance(sub, str):
                raise _fail(where, key, f"keys under `{key}` must be names, got {_show(sub)}")
            check_text(sub)
        return value
    if kind in ("intlist", "strlist"):
        items = value if isinstance(value, list) else [value]
        if not items:
            raise _fail(where, key, f"`{key}` is an empty sweep; give at least one value")
        want = str if kind == "strlist" else int
        for item in items:
            if isinstance(item, bool) or not isinstance(item, want):
                raise bad(f"{'a string' if want is str else 'an integer'} or a list of them")
            if want is str:
                check_text(item)
            else:
                check_int(item)
        if want is int and any(item <= 0 for item in items):
            raise _fail(where, key, f"`{key}` values must be positive, got {_show(value)}")
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
            grids.append((check_int(item[0]), check_int(item[1])))
        return tuple(grids)
    raise AssertionError(kind)


def _apply_set(raw: dict[str, Any], assignment: str) -> str:
    if "=" not in assignment:
        raise SuiteError(f"--set {_short(assignment)}: expected key=value")
    key, text = assignment.split("=", 1)
    key = key.strip()
    shown = _short(assignment)
    if not key or any(not part.strip() for part in key.split(".")):
        raise SuiteError(f"--set {shown}: expected key=value with a key such as batch or repeats.min")
    try:
        value = load_yaml(text) if text.strip() else None
    except YamlInputError as exc:
        raise SuiteError(f"--set {shown}: value is not valid YAML ({exc})") from None
    target = raw
    parts = key.split(".")
    for part in parts[:-1]:
        nxt = target.get(part)
        if nxt is None:
            nxt = target[part] = {}
        if not isinstance(nxt, dict):
            raise SuiteError(f"--set {shown}: `{_short(part)}` is not a mapping")
        target = nxt
    target[parts[-1]] = value
    return key


def _short(text: Any) -> str:
    """repr of user text for a message, cut to 60 characters."""
    return _show(str(text))


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_suite(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Suite:
    """Parse, merge (gpu:, --set) and validate a suite file. Raises SuiteError (`file:line: ...`)."""
    path = Path(path)
    shown = str(path)
    try:
        text = read_user_text(path, "suite file", max_bytes=MAX_SUITE_BYTES, hint="; a suite is a YAML file")
    except AttnbenchError as exc:
        raise SuiteError(str(exc)) from None
    try:
        node = compose_yaml(text)
        raw = load_yaml(text)
    except YamlInputError as exc:
        raise SuiteError(f"{shown}:{exc.line or 1}: {exc}") from None
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
    known = ", ".join(sorted(_KEYS))
    for key in raw:
        if not isinstance(key, str):
            raise SuiteError(f"{shown}:1: keys must be names, got {_show(key)} (known: {known})")
        if key not in _KEYS:
            raise _fail(where, key, f"unknown key `{str(key)[:60]}` (known: {known})")
    overrides_raw: dict[str, Any] = {}
    for assignment in overrides:
        set_keys.add(_apply_set(overrides_raw, assignment))
    for top in overrides_raw:
        if top not in _KEYS:
            raise SuiteError(f"--set: unknown key `{str(top)[:60]}` (known: {known})")
    device_raw = overrides_raw.get("device", raw.get("device", "auto"))
    device_key = "device"
    device = _coerce("str", device_key, device_raw, where)
    if device not in _ALLOWED["device"]:
        raise _fail(where, device_key, f"`device` must be one of auto, cpu, cuda, got {_show(device)}")
    device = resolve_device(device)
    gpu = copy.deepcopy(_coerce("mapping", "gpu", raw.get("gpu"), where))
    gpu_set = _coerce("mapping", "gpu", overrides_raw.pop("gpu", None), where)
    _deep_update(gpu, gpu_set)  # --set gpu.batch=[...] edits the gpu: block
    for key in gpu:
        if key not in _KEYS or key in ("gpu", "name", "device"):
            raise _fail(where, f"gpu.{key}", f"unknown or unmergeable key `{str(key)[:60]}` under `gpu:`")
    merged = copy.deepcopy(raw)
    if device == "cuda":  # deep: `gpu: {repeats: {min: 4}}` keeps the file's repeats.max
        _deep_update(merged, copy.deepcopy(gpu))
        for key in gpu:
            loc.lines[key] = loc.lines.get(f"gpu.{key}", loc.lines.get(key, 1))
    elif gpu:  # the gpu: block is checked on every machine, so a typo there shows up before the GPU run
        on_gpu = copy.deepcopy(raw)
        _deep_update(on_gpu, copy.deepcopy(gpu))
        _deep_update(on_gpu, copy.deepcopy(overrides_raw))
        on_gpu["device"] = "cuda"
        on_gpu.pop("gpu", None)

        def where_gpu(key: str) -> str:
            top = key.split(".")[0]
            return loc.where(f"gpu.{key}") if top in gpu and top not in set_keys else where(key)

        if "name" in on_gpu and "mechanisms" in on_gpu:
            _check_values(on_gpu, where_gpu, path)
    _deep_update(merged, overrides_raw)
    merged["device"] = device
    merged.pop("gpu", None)

    for required in ("name", "mechanisms"):
        if required not in merged:
            raise SuiteError(f"{shown}:1: missing required key `{required}`")
    values, repeats = _check_values(merged, where, path)
    levels = values.get("level", ("op",))
    options = values.get("options", {})
    checkpoints = values.get("checkpoints", {})
    threads = values.get("threads")

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


def _check_values(merged: dict[str, Any], where: Callable[[str], str], path: Path) -> tuple[dict[str, Any], Repeats]:
    """Every key of a merged suite checked by type and range; (values, repeats) or a SuiteError."""
    values: dict[str, Any] = {}
    for key, value in merged.items():
        values[key] = _coerce(_KEYS[key], key, value, where)
    for key, allowed in _ALLOWED.items():
        if key in values and key != "device" and values[key] is not None:
            seq = values[key] if isinstance(values[key], tuple) else (values[key],)
            for item in seq:
                if item not in allowed:
                    raise _fail(where, key, f"`{key}` value {_show(item)} is not one of {', '.join(allowed)}")
    repeats_raw = values.get("repeats", {})
    for key in repeats_raw:
        if key not in _REPEAT_KEYS:
            raise _fail(where, f"repeats.{key}", f"unknown key `repeats.{str(key)[:60]}` (min, max, min_time_s, "
                        "target_ci)")  # fmt: skip
    rep = {k: _coerce(_REPEAT_KEYS[k], f"repeats.{k}", v, where) for k, v in repeats_raw.items()}
    repeats = Repeats(**rep)
    if repeats.min < 1 or repeats.max < repeats.min or repeats.min_time_s < 0:
        raise _fail(where, "repeats", f"`repeats` needs 1 <= min <= max and min_time_s >= 0, got {repeats}")
    if repeats.target_ci is not None and not repeats.target_ci > 0:
        raise _fail(where, "repeats", "`repeats.target_ci` must be a positive fraction (e.g. 0.02) or null")
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
        for name in opts:
            if not isinstance(name, str) or _text_problem(name, MAX_NAME):
                raise _fail(where, f"options.{mech}", f"option names under `options.{mech}` must be names, "
                            f"got {_show(name)}")  # fmt: skip
    checkpoints = values.get("checkpoints", {})
    for model, spec in list(checkpoints.items()):
        if isinstance(spec, str):
            spec = checkpoints[model] = {"path": spec, "ema": False}
        elif not isinstance(spec, dict) or "path" not in spec or set(spec) - {"path", "ema"}:
            raise _fail(where, f"checkpoints.{model}", "each checkpoint needs `path:` (and optionally `ema:`)")
        if spec["path"] is not None:  # null: not given yet (the run reports accuracy as not measured)
            _check_file(where, f"checkpoints.{model}.path", spec["path"], path.parent, "checkpoint")
        if not isinstance(spec.get("ema", False), bool):
            raise _fail(where, f"checkpoints.{model}.ema", "`ema` must be true or false")
    limit = values.get("memory_limit_gb")
    if limit is not None and limit <= 0:
        raise _fail(where, "memory_limit_gb", "`memory_limit_gb` must be positive or null")
    threads = values.get("threads")
    if threads is not None and threads < 1:
        raise _fail(where, "threads", "`threads` must be >= 1 or null")
    return values, repeats


def _check_file(where: Callable[[str], str], key: str, value: Any, base: Path, what: str) -> None:
    """A path option (checkpoint) must name an existing file: an empty or missing path is an error, never a
    silent fall-back to random weights."""
    if not isinstance(value, str) or not value.strip():
        raise _fail(where, key, f"`{key}` must be the path of a {what} file, got {_show(value)}")
    problem = _text_problem(value, MAX_TEXT)
    if problem:
        raise _fail(where, key, f"`{key}` {problem}")
    candidate = Path(value).expanduser()  # relative to the working directory, as the run opens it
    try:
        ok = candidate.is_file()
    except (OSError, ValueError):
        ok = False
    if not ok:
        raise _fail(where, key, f"{what} {_show(value)} not found; fix `{key}`")


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
    """Load the suite's plugins, expand family:<f>, and stop on names that are not registered (the built-in
    mechanisms are loaded by the program's entry point, `attnbench.loading`)."""
    from attnbench import registry

    try:
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
            if "checkpoint" in opts:
                _check_file(where, f"options.{mech}.checkpoint", opts["checkpoint"], Path("."), "checkpoint")
            if not isinstance(opts.get("ema", False), bool):
                raise _fail(where, f"options.{mech}.ema", "`ema` must be true or false")
            late = opts.get("mixer_late", "softmax_eager")
            if not isinstance(late, str) or late not in registry.names():
                raise _fail(where, f"options.{mech}.mixer_late", f"`mixer_late` must name a registered mechanism, "
                            f"got {_show(late)}")  # fmt: skip
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
        _check_option_values(m, opts, where, f"options.{mech}")


def _option_defaults(mech) -> dict[str, Any]:
    """Default values of a mechanism's options: its declared `option_defaults`, else the keyword defaults
    of op() and mixer()."""
    import inspect

    defaults: dict[str, Any] = {}
    for fn in (mech.op, mech.mixer):
        try:
            params = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):
            continue
        defaults.update({p.name: p.default for p in params if p.default is not inspect.Parameter.empty})
    defaults.update(getattr(mech, "option_defaults", None) or {})
    return defaults


def _check_option_values(mech, opts: dict[str, Any], where: Callable[[str], str], prefix: str) -> None:
    """Option values checked by the type of the option's default (bool, int >= 0, finite number, string);
    options without a default take plain JSON values. `weights` is "random" or a checkpoint path."""
    defaults = _option_defaults(mech)
    for name, value in opts.items():
        key = f"{prefix}.{name}"
        if name == "weights":
            if value != "random":
                _check_file(where, key, value.partition("::")[0] if isinstance(value, str) else value, Path("."),
                            "checkpoint")  # fmt: skip
            continue
        default = defaults.get(name)
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise _fail(where, key, f"`{key}` must be true or false, got {_show(value)}")
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= INT32:
                raise _fail(where, key, f"`{key}` must be an integer from 0 to {INT32}, got {_show(value)}")
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) <= 1e300
            if not ok or not math.isfinite(float(value)):
                raise _fail(where, key, f"`{key}` must be a finite number, got {_show(value)}")
        elif isinstance(default, str):
            if not isinstance(value, str) or _text_problem(value, MAX_TEXT):
                raise _fail(where, key, f"`{key}` must be a string, got {_show(value)}")
        else:
            _check_plain(value, where, key)


def _check_plain(value: Any, where: Callable[[str], str], key: str, depth: int = 0) -> None:
    """A JSON-like value: strings, finite numbers, bools, null, short lists and mappings of them."""
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int):
        if abs(value) > INT32:
            raise _fail(where, key, f"`{key}` value {_show(value)} is out of range")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _fail(where, key, f"`{key}` must be finite, got {_show(value)}")
        return
    if isinstance(value, str):
        if _text_problem(value, MAX_TEXT):
            raise _fail(where, key, f"`{key}` value {_show(value)} {_text_problem(value, MAX_TEXT)}")
        return
    if isinstance(value, (list, dict)) and depth < 3 and len(value) <= 64:
        for item in value.values() if isinstance(value, dict) else value:
            _check_plain(item, where, key, depth + 1)
        return
    raise _fail(where, key, f"`{key}` must be a plain value (string, number, true/false), got {_show(value)}")


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
