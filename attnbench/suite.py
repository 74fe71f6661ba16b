"""Suites: YAML -> one frozen, validated `Suite`, or a `file:line: message` SuiteError (exit 2).

A suite comes from a YAML file (a path), a shipped suite's name (`smoke`: the file stem of a suite in the
`suites/` folder, which the wheel carries as `attnbench/suites`), or a mapping of the same keys (the Python
API). Precedence: file < `gpu:` (merged when the resolved device is cuda) < `--set key=value` (value
parsed as YAML; dotted keys reach into mappings, e.g. `--set repeats.min=3`) or the API's `overrides`
mapping ({"repeats.min": 3}), applied the same way.
Every sweep axis accepts a scalar or a list. Unknown keys, wrong types, empty sweeps and unknown
mechanisms stop the run before anything is measured.

The keys, their types, defaults and allowed values are the fields of `Suite` (`attnbench.suite_schema`);
the checks are in `attnbench.suite_checks`; this module merges the sources and builds the Suite.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Union

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
from attnbench.userinput import MAX_SUITE_BYTES, YamlInputError, compose_and_load, load_yaml, read_user_text

__all__ = [
    "DEFAULT_METRICS",
    "DEFAULT_ROUNDS",
    "METRICS",
    "Repeats",
    "Suite",
    "expand_mechanisms",
    "find_suite",
    "load_suite",
    "resolve_device",
    "shipped_suites",
]

SuiteSource = Union[str, Path, Mapping[str, Any]]
Overrides = Union[Sequence[str], Mapping[str, Any]]
SUITE_SUFFIXES = (".yaml", ".yml")
MAPPING_NAME = "suite mapping"  # names a suite given as a mapping in error messages


def shipped_suites_dir() -> Path | None:
    """The folder of the shipped suites: `attnbench/suites` in an installed wheel, `suites/` beside the
    package in a checkout (an editable install or PYTHONPATH); None if neither exists."""
    package = Path(__file__).resolve().parent
    for folder in (package / "suites", package.parent / "suites"):
        if folder.is_dir():
            return folder
    return None


def shipped_suites() -> dict[str, Path]:
    """Shipped suite name (the file stem) -> its file, sorted by name."""
    folder = shipped_suites_dir()
    if folder is None:
        return {}
    files = [f for f in folder.iterdir() if f.suffix in SUITE_SUFFIXES and f.is_file()]
    return {f.stem: f for f in sorted(files, key=lambda f: f.stem)}


def find_suite(spec: str | Path) -> Path:
    """The suite file `spec` names: an existing file, else (a bare name without a folder or .yaml suffix)
    the shipped suite of that name. An unknown name is a SuiteError listing the shipped ones; any other
    path is returned as is (load_suite reports a missing file)."""
    path = Path(spec)
    try:
        if path.is_file():
            return path
    except (OSError, ValueError):  # a name too long for the file system, a NUL: load_suite says so
        return path
    text = str(spec)
    bare = text and not any(c in text for c in "/\\") and not text.startswith((".", "~"))
    if bare and path.suffix not in SUITE_SUFFIXES:
        shipped = shipped_suites()
        if text in shipped:
            return shipped[text]
        raise SuiteError(
            f"unknown suite {_short(text)}: no such file, and no shipped suite has that name "
            f"(shipped: {', '.join(shipped) or 'none found'}); give a shipped suite's name or a suite YAML file"
        )
    return path


def _parse_key(key: Any, shown: str, label: str) -> list[str]:
    key = key.strip() if isinstance(key, str) else key
    if not isinstance(key, str) or not key or any(not part.strip() for part in key.split(".")):
        if label == "--set":
            raise SuiteError(f"--set {shown}: expected key=value with a key such as batch or repeats.min")
        raise SuiteError(f"overrides: {_short(key)} is not a suite key such as batch or repeats.min")
    return key.split(".")


def _set_key(raw: dict[str, Any], parts: list[str], value: Any, shown: str, label: str) -> str:
    target = raw
    for part in parts[:-1]:
        nxt = target.get(part)
        if nxt is None:
            nxt = target[part] = {}
        if not isinstance(nxt, dict):
            raise SuiteError(f"{label} {shown}: `{_short(part)}` is not a mapping")
        target = nxt
    target[parts[-1]] = value
    return ".".join(parts)


def _apply_set(raw: dict[str, Any], assignment: str) -> str:
    if "=" not in assignment:
        raise SuiteError(f"--set {_short(assignment)}: expected key=value")
    key, text = assignment.split("=", 1)
    shown = _short(assignment)
    parts = _parse_key(key, shown, "--set")
    try:
        value = load_yaml(text) if text.strip() else None
    except YamlInputError as exc:
        raise SuiteError(f"--set {shown}: value is not valid YAML ({exc})") from None
    return _set_key(raw, parts, value, shown, "--set")


def _apply_overrides(raw: dict[str, Any], overrides: Overrides) -> tuple[set[str], str]:
    """Apply `--set` strings or an overrides mapping to `raw`; (the keys set, the label for messages)."""
    keys: set[str] = set()
    if isinstance(overrides, Mapping):
        for key, value in overrides.items():
            shown = f"{{{_short(key)}: {_short(value)}}}"
            parts = _parse_key(key, shown, "overrides")
            keys.add(_set_key(raw, parts, _plain(value, "overrides", str(key)), shown, "overrides"))
        return keys, "overrides"
    if isinstance(overrides, (str, bytes)):
        raise SuiteError("overrides must be a list of key=value strings or a mapping of suite keys, not one string")
    for assignment in overrides:
        keys.add(_apply_set(raw, str(assignment)))
    return keys, "--set"


def _plain(value: Any, what: str, key: str = "") -> Any:
    """A Python value as YAML would give it: mappings and sequences as dicts and lists, numpy scalars and
    paths as their plain values; anything YAML cannot hold is a SuiteError."""
    if isinstance(value, Mapping):
        return {k: _plain(v, what, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, what, key) for v in value]
    if isinstance(value, Path):
        return str(value)
    if type(value).__module__ == "numpy" and hasattr(value, "item"):
        return value.item()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise SuiteError(
        f"{what}: `{key[:60]}` has a value of type {type(value).__name__}; "
        "use YAML values (str, int, float, bool, None, lists, dicts)"
    )


def _short(text: Any) -> str:
    """repr of user text for a message, cut to 60 characters."""
    return show(str(text))


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class _MappingLocator(Locator):
    """A suite given as a mapping has no lines: messages name the mapping (and the key, as they all do)."""

    def where(self, key: str) -> str:
        return MAPPING_NAME


def _read_suite(source: SuiteSource) -> tuple[dict[str, Any], Locator, Path | None, str]:
    """(raw mapping, locator, file or None, name for messages) of a suite file, shipped name or mapping."""
    if isinstance(source, Mapping):
        raw = _plain(source, MAPPING_NAME)
        return raw, _MappingLocator(MAPPING_NAME, None), None, MAPPING_NAME
    if not isinstance(source, (str, Path)):
        raise SuiteError(
            f"a suite is a YAML file's path, a shipped suite's name or a mapping of suite keys, "
            f"not {type(source).__name__}"
        )
    path = find_suite(source)
    shown = str(path)
    names = ", ".join(shipped_suites())
    hint = f"; give a suite YAML file or a shipped suite's name ({names})" if names else "; a suite is a YAML file"
    try:
        text = read_user_text(path, "suite file", max_bytes=MAX_SUITE_BYTES, hint=hint)
    except AttnbenchError as exc:
        raise SuiteError(str(exc)) from None
    try:
        node, raw = compose_and_load(text)
    except YamlInputError as exc:
        raise SuiteError(f"{shown}:{exc.line or 1}: {exc}") from None
    if not isinstance(raw, dict):
        raise SuiteError(f"{shown}:1: a suite must be a YAML mapping of keys (name, mechanisms, ...)")
    return raw, Locator(shown, node), path, shown


def load_suite(source: SuiteSource, overrides: Overrides = ()) -> Suite:
    """Parse, merge (gpu:, then `--set` strings or an overrides mapping) and validate a suite: a file's path,
    a shipped suite's name (`find_suite`) or a mapping of suite keys. Raises SuiteError (`file:line: ...`;
    `suite mapping: ...` for a mapping). Relative `.py` plugin paths are relative to the suite file (to the
    working directory for a mapping)."""
    raw, loc, path, shown = _read_suite(source)
    head = f"{shown}:1" if path is not None else shown
    base = path.parent if path is not None else Path.cwd()
    anchor = path if path is not None else base / MAPPING_NAME  # check_values reads relative paths from its parent
    set_keys: set[str] = set()
    set_label = "--set"

    def where(key: str) -> str:
        top = key.split(".")[0]
        if key in set_keys or top in set_keys:
            return set_label
        return loc.where(key)

    raw = copy.deepcopy(raw)
    known = ", ".join(sorted(kinds()))
    for key in raw:
        if not isinstance(key, str):
            raise SuiteError(f"{head}: keys must be names, got {show(key)} (known: {known})")
        if key not in kinds():
            raise fail(where, key, f"unknown key `{str(key)[:60]}` (known: {known})")
    overrides_raw: dict[str, Any] = {}
    keys, set_label = _apply_overrides(overrides_raw, overrides)
    set_keys |= keys
    for top in overrides_raw:
        if top not in kinds():
            raise SuiteError(f"{set_label}: unknown key `{str(top)[:60]}` (known: {known})")
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
            check_values(on_gpu, where_gpu, anchor)
    _deep_update(merged, overrides_raw)
    merged["device"] = device
    merged.pop("gpu", None)

    for required in ("name", "mechanisms"):
        if required not in merged:
            raise SuiteError(f"{head}: missing required key `{required}`")
    values, repeats = check_values(merged, where, anchor)

    # .py plugin paths are relative to the suite file; store them absolute so FILE.suite.yaml re-runs
    plugins = tuple(_absolute_plugin(p, base) for p in values.get("plugins", ()))
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
        path=str(path) if path is not None else "",
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
