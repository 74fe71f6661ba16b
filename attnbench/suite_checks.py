"""Suite validation: each value checked against the schema (`attnbench.suite_schema`) by type, allowed values
and range, then across keys, mechanisms and options; every problem is a `file:line: message` SuiteError.

Pure checks over parsed YAML values; `attnbench.suite.load_suite` merges the sources (file, gpu:, --set)
and calls them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import yaml

from attnbench.errors import AttnbenchError, SuiteError
from attnbench.suite_schema import (
    INT32,
    MAX_ROUNDS,
    MAX_SWEEPS,
    MODEL_OPTIONS,
    MODEL_SETTINGS,
    Repeats,
    Suite,
    allowed_values,
    auto_keys,
    default,
    kinds,
    upper_bounds,
)


class Locator:
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


def fail(loc: Callable[[str], str], key: str, message: str) -> SuiteError:
    return SuiteError(f"{loc(key)}: {message}")


MAX_NAME = 100  # characters of a suite name (it also names the default results file)
MAX_TEXT = 4096  # characters of any other string (mechanism names, paths)


def show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def text_problem(text: str, limit: int) -> str | None:
    if len(text) > limit:
        return f"longer than {limit} characters"
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        return "contains control characters"
    return None


def coerce(kind: str, key: str, value: Any, where: Callable[[str], str]) -> Any:
    """`value` checked against `kind` (type) and the key's range; raises SuiteError naming file:line."""

    def bad(expected: str) -> SuiteError:
        return fail(where, key, f"`{key}` must be {expected}, got {show(value)}")

    def check_text(item: str) -> str:
        problem = text_problem(item, MAX_NAME if key == "name" else MAX_TEXT)
        if problem:
            raise fail(where, key, f"`{key}` value {show(item)} {problem}")
        return item

    def check_int(item: int) -> int:
        top = upper_bounds().get(key, INT32)
        if item > top:
            raise fail(where, key, f"`{key}` value {show(item)} is larger than {top}")
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
            raise bad("an integer or auto" if key in auto_keys() else "an integer")
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
        top = upper_bounds().get(key)
        if top is not None and number > top:
            raise fail(where, key, f"`{key}` value {show(value)} is larger than {top:g}")
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
                raise fail(where, key, f"keys under `{key}` must be names, got {show(sub)}")
            check_text(sub)
        return value
    if kind in ("intlist", "strlist"):
        items = value if isinstance(value, list) else [value]
        if not items:
            raise fail(where, key, f"`{key}` is an empty sweep; give at least one value")
        want = str if kind == "strlist" else int
        for item in items:
            if isinstance(item, bool) or not isinstance(item, want):
                raise bad(f"{'a string' if want is str else 'an integer'} or a list of them")
            if want is str:
                check_text(item)
            else:
                check_int(item)
        if want is int and any(item <= 0 for item in items):
            raise fail(where, key, f"`{key}` values must be positive, got {show(value)}")
        return tuple(items)
    if kind == "grids":
        items = value if isinstance(value, list) else [value]
        if items and not isinstance(items[0], list):  # a single [H, W]
            items = [items]
        grids = []
        for item in items:
            ok = (
                isinstance(item, list)
                and len(item) == 2
                and all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in item)
            )
            if not ok:
                raise bad("[H, W] or a list of [H, W] pairs of positive integers")
            grids.append((check_int(item[0]), check_int(item[1])))
        return tuple(grids)
    raise AssertionError(kind)


def _get(values: dict[str, Any], name: str) -> Any:
    """A checked value, or the key's default (the Suite field's)."""
    return values[name] if name in values else default(name)


def check_values(merged: dict[str, Any], where: Callable[[str], str], path: Path) -> tuple[dict[str, Any], Repeats]:
    """Every key of a merged suite checked by type and range; (values, repeats) or a SuiteError."""
    values: dict[str, Any] = {}
    for key, value in merged.items():
        if key in auto_keys() and value == "auto":
            value = None
        values[key] = coerce(kinds()[key], key, value, where)
    for key, allowed in allowed_values().items():
        if key in values and key != "device" and values[key] is not None:
            seq = values[key] if isinstance(values[key], tuple) else (values[key],)
            for item in seq:
                if item not in allowed:
                    raise fail(where, key, f"`{key}` value {show(item)} is not one of {', '.join(allowed)}")
    repeats_raw = values.get("repeats", {})
    for key in repeats_raw:
        if key not in kinds(Repeats):
            raise fail(where, f"repeats.{key}", f"unknown key `repeats.{str(key)[:60]}` ({', '.join(kinds(Repeats))})")
    rep = {k: coerce(kinds(Repeats)[k], f"repeats.{k}", v, where) for k, v in repeats_raw.items()}
    repeats = Repeats(**rep)
    if repeats.min < 1 or repeats.max < repeats.min or repeats.min_time_s < 0:
        raise fail(where, "repeats", f"`repeats` needs 1 <= min <= max and min_time_s >= 0, got {repeats}")
    if repeats.target_ci is not None and not repeats.target_ci > 0:
        raise fail(where, "repeats", "`repeats.target_ci` must be a positive fraction (e.g. 0.02) or null")
    if not 1 <= _get(values, "rounds") <= MAX_ROUNDS:
        raise fail(where, "rounds", f"`rounds` must be between 1 and {MAX_ROUNDS}")
    if not 1 <= _get(values, "sweeps") <= MAX_SWEEPS:
        raise fail(where, "sweeps", f"`sweeps` must be between 1 and {MAX_SWEEPS}")
    if _get(values, "order_seed") < 0:
        raise fail(where, "order_seed", "`order_seed` must be >= 0")
    if _get(values, "warmup") < 0:
        raise fail(where, "warmup", "`warmup` must be >= 0")
    if _get(values, "warmup_s") < 0:
        raise fail(where, "warmup_s", "`warmup_s` must be >= 0 seconds")
    if _get(values, "timeout_s") <= 0:
        raise fail(where, "timeout_s", "`timeout_s` must be positive")
    levels = _get(values, "level")
    if "model" in levels and not values.get("models"):
        raise fail(where, "level", "`level: model` needs `models:` (e.g. [ravlt_t])")
    if set(levels) - {"model"} and not (values.get("resolution") or values.get("grid")):
        raise fail(where, "resolution", "op/mixer levels need `resolution:` or `grid:`")
    if "model" in levels and not values.get("resolution"):
        raise fail(where, "resolution", "`level: model` needs `resolution:` (the image size)")
    for name in MODEL_SETTINGS:
        if "model" not in levels and name in values and values[name] != default(name):
            raise fail(where, name, f"`{name}` applies at level model only; add model to `level` or remove it")
    amp, dtypes = _get(values, "amp"), _get(values, "dtype")
    if amp != "none" and set(dtypes) != {"fp32"}:
        raise fail(where, "amp", f"`amp: {amp}` autocasts an fp32 model; set `dtype: fp32` (got {', '.join(dtypes)})")
    options = values.get("options", {})
    for mech, opts in options.items():
        if not isinstance(opts, dict):
            raise fail(where, f"options.{mech}", f"`options.{mech}` must be a mapping of constructor options")
        for name in opts:
            if not isinstance(name, str) or text_problem(name, MAX_NAME):
                raise fail(
                    where, f"options.{mech}", f"option names under `options.{mech}` must be names, got {show(name)}"
                )
    checkpoints = values.get("checkpoints", {})
    for model, spec in list(checkpoints.items()):
        if isinstance(spec, str):
            spec = checkpoints[model] = {"path": spec, "ema": False}
        elif not isinstance(spec, dict) or "path" not in spec or set(spec) - {"path", "ema"}:
            raise fail(where, f"checkpoints.{model}", "each checkpoint needs `path:` (and optionally `ema:`)")
        if spec["path"] is not None:  # null: not given yet (the run reports accuracy as not measured)
            _check_file(where, f"checkpoints.{model}.path", spec["path"], path.parent, "checkpoint")
        if not isinstance(spec.get("ema", False), bool):
            raise fail(where, f"checkpoints.{model}.ema", "`ema` must be true or false")
    limit = values.get("memory_limit_gb")
    if limit is not None and limit <= 0:
        raise fail(where, "memory_limit_gb", "`memory_limit_gb` must be positive or null")
    threads = values.get("threads")
    if threads is not None and threads < 1:
        raise fail(where, "threads", "`threads` must be >= 1 or auto")
    if _get(values, "retries") < 0:
        raise fail(where, "retries", "`retries` must be >= 0 (0: never re-time a preempted visit)")
    return values, repeats


def _check_file(where: Callable[[str], str], key: str, value: Any, base: Path, what: str) -> None:
    """A path option (checkpoint) must name an existing file: an empty or missing path is an error, never a
    silent fall-back to random weights."""
    if not isinstance(value, str) or not value.strip():
        raise fail(where, key, f"`{key}` must be the path of a {what} file, got {show(value)}")
    problem = text_problem(value, MAX_TEXT)
    if problem:
        raise fail(where, key, f"`{key}` {problem}")
    candidate = Path(value).expanduser()  # relative to the working directory, as the run opens it
    try:
        ok = candidate.is_file()
    except (OSError, ValueError):
        ok = False
    if not ok:
        raise fail(where, key, f"{what} {show(value)} not found; fix `{key}`")


def validate_mechanisms(suite: Suite, where: Callable[[str], str]) -> None:
    """Load the suite's plugins, expand family:<f>, and stop on names that are not registered (the built-in
    mechanisms are loaded by the program's entry point, `attnbench.loading`)."""
    from attnbench import registry

    try:
        registry.load_plugins(suite.plugins, base_dir=Path(suite.path).parent)
    except AttnbenchError as exc:
        raise fail(where, "plugins", str(exc)) from None
    for entry in suite.mechanisms:
        if entry.startswith("family:"):
            fam = entry.split(":", 1)[1]
            if not registry.names(family=fam):
                raise fail(
                    where, "mechanisms", f"no mechanisms in family {fam!r} (families: {', '.join(registry.families())})"
                )
            continue
        try:
            registry.get(entry)
        except AttnbenchError as exc:
            raise fail(where, "mechanisms", str(exc)) from None
    for mech, opts in suite.options.items():
        if mech in suite.models:
            bad = sorted(set(opts) - MODEL_OPTIONS)
            if bad:
                raise fail(
                    where,
                    f"options.{mech}",
                    f"unknown model options {bad} for {mech} (known: {', '.join(sorted(MODEL_OPTIONS))})",
                )
            if "checkpoint" in opts:
                _check_file(where, f"options.{mech}.checkpoint", opts["checkpoint"], Path("."), "checkpoint")
            if not isinstance(opts.get("ema", False), bool):
                raise fail(where, f"options.{mech}.ema", "`ema` must be true or false")
            late = opts.get("mixer_late", "softmax_eager")
            if not isinstance(late, str) or late not in registry.names():
                raise fail(
                    where,
                    f"options.{mech}.mixer_late",
                    f"`mixer_late` must name a registered mechanism, got {show(late)}",
                )
            continue
        if mech not in registry.names():
            raise fail(
                where,
                f"options.{mech}",
                f"options given for {mech!r}, which is neither a registered mechanism nor one of `models:`",
            )
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
            raise fail(where, f"options.{mech}", f"{mech} takes no option(s) {bad} in op() or mixer()")
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
                _check_file(
                    where, key, value.partition("::")[0] if isinstance(value, str) else value, Path("."), "checkpoint"
                )
            continue
        default = defaults.get(name)
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise fail(where, key, f"`{key}` must be true or false, got {show(value)}")
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= INT32:
                raise fail(where, key, f"`{key}` must be an integer from 0 to {INT32}, got {show(value)}")
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) <= 1e300
            if not ok or not math.isfinite(float(value)):
                raise fail(where, key, f"`{key}` must be a finite number, got {show(value)}")
        elif isinstance(default, str):
            if not isinstance(value, str) or text_problem(value, MAX_TEXT):
                raise fail(where, key, f"`{key}` must be a string, got {show(value)}")
        else:
            _check_plain(value, where, key)


def _check_plain(value: Any, where: Callable[[str], str], key: str, depth: int = 0) -> None:
    """A JSON-like value: strings, finite numbers, bools, null, short lists and mappings of them."""
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int):
        if abs(value) > INT32:
            raise fail(where, key, f"`{key}` value {show(value)} is out of range")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise fail(where, key, f"`{key}` must be finite, got {show(value)}")
        return
    if isinstance(value, str):
        if text_problem(value, MAX_TEXT):
            raise fail(where, key, f"`{key}` value {show(value)} {text_problem(value, MAX_TEXT)}")
        return
    if isinstance(value, (list, dict)) and depth < 3 and len(value) <= 64:
        for item in value.values() if isinstance(value, dict) else value:
            _check_plain(item, where, key, depth + 1)
        return
    raise fail(where, key, f"`{key}` must be a plain value (string, number, true/false), got {show(value)}")
