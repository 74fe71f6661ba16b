"""Suites: YAML -> one frozen, validated `Suite`, or a `file:line: message` SuiteError (exit 2).

Precedence: file < `gpu:` (merged when the resolved device is cuda) < `--set key=value` (value
parsed as YAML; dotted keys reach into mappings, e.g. `--set repeats.min=3`).
Every sweep axis accepts a scalar or a list. Unknown keys, wrong types, empty sweeps and unknown
mechanisms stop the run before anything is measured.

The keys, their types, defaults and allowed values are the fields of `Suite` (`attnbench.suite_schema`);
the checks are in `attnbench.suite_checks`; this module merges the sources and builds the Suite.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from attnbench.errors import AttnbenchError, SuiteError
from attnbench.suite_checks import Locator, check_values, coerce, fail, show, validate_mechanisms
from attnbench.suite_schema import (
    DEFAULT_METRICS,
    DEFAULT_ROUNDS,
    DEVICES,
    GPU_KEY,
    METRICS,
    Repeats,
    Suite,
    default,
    key_fields,
    kinds,
    yaml_name,
)
from attnbench.userinput import MAX_SUITE_BYTES, YamlInputError, compose_yaml, load_yaml, read_user_text

__all__ = [
    "DEFAULT_METRICS",
    "DEFAULT_ROUNDS",
    "METRICS",
    "Repeats",
    "Suite",
    "expand_mechanisms",
    "load_suite",
    "resolve_device",
]


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
    return show(str(text))


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
    loc = Locator(shown, node)
    set_keys: set[str] = set()

    def where(key: str) -> str:
        top = key.split(".")[0]
        if key in set_keys or top in set_keys:
            return "--set"
        return loc.where(key)

    raw = copy.deepcopy(raw)
    known = ", ".join(sorted(kinds()))
    for key in raw:
        if not isinstance(key, str):
            raise SuiteError(f"{shown}:1: keys must be names, got {show(key)} (known: {known})")
        if key not in kinds():
            raise fail(where, key, f"unknown key `{str(key)[:60]}` (known: {known})")
    overrides_raw: dict[str, Any] = {}
    for assignment in overrides:
        set_keys.add(_apply_set(overrides_raw, assignment))
    for top in overrides_raw:
        if top not in kinds():
            raise SuiteError(f"--set: unknown key `{str(top)[:60]}` (known: {known})")
    device_raw = overrides_raw.get("device", raw.get("device", "auto"))
    device_key = "device"
    device = coerce("str", device_key, device_raw, where)
    if device not in DEVICES:
        raise fail(where, device_key, f"`device` must be one of {', '.join(DEVICES)}, got {show(device)}")
    device = resolve_device(device)
    gpu = copy.deepcopy(coerce("mapping", GPU_KEY, raw.get(GPU_KEY), where))
    gpu_set = coerce("mapping", GPU_KEY, overrides_raw.pop(GPU_KEY, None), where)
    _deep_update(gpu, gpu_set)  # --set gpu.batch=[...] edits the gpu: block
    for key in gpu:
        if key not in kinds() or key in (GPU_KEY, "name", "device"):
            raise fail(where, f"gpu.{key}", f"unknown or unmergeable key `{str(key)[:60]}` under `gpu:`")
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
            check_values(on_gpu, where_gpu, path)
    _deep_update(merged, overrides_raw)
    merged["device"] = device
    merged.pop("gpu", None)

    for required in ("name", "mechanisms"):
        if required not in merged:
            raise SuiteError(f"{shown}:1: missing required key `{required}`")
    values, repeats = check_values(merged, where, path)

    # .py plugin paths are relative to the suite file; store them absolute so FILE.suite.yaml re-runs
    plugins = tuple(_absolute_plugin(p, path.parent) for p in values.get("plugins", ()))
    if plugins:
        merged["plugins"] = list(plugins)
    # the round structure is part of the record even where the file left it to the defaults
    for name in ("rounds", "order_seed"):
        merged.setdefault(name, values.get(name, default(name)))
    fields = {f.name: values[yaml_name(f)] for f in key_fields(Suite) if yaml_name(f) in values}
    fields.update(
        device=device,
        repeats=repeats,
        plugins=plugins,
        options={k: dict(v) for k, v in values.get("options", {}).items()},
        hardware=tuple(dict.fromkeys(values.get("hardware", ()))),
        path=str(path),
        resolved=_jsonable(merged),
    )
    suite = Suite(**fields)
    validate_mechanisms(suite, where)
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
