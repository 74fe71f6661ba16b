"""The suite schema: the frozen `Suite` dataclass is the one list of suite keys.

Each field that is a suite key carries its YAML spelling, allowed values, upper bound and one line of
documentation in `metadata` (`key(...)`); its type annotation says how a YAML value is parsed (`kind`):
`tuple[str, ...]` is a sweep of strings (a scalar or a list), `int | None` an integer or null, and so on.
Parsing and validation (`attnbench.suite_checks`), defaults (the fields' defaults) and the key reference
(`key_reference`, printed by `python -m attnbench suite-keys`) are all derived from it.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

from attnbench.dtypes import DTYPES
from attnbench.registry import LEVELS, PASSES

METRICS = ("latency", "memory", "flops", "rank", "accuracy")
DEFAULT_METRICS = ("latency", "memory", "flops")
ISOLATIONS = ("auto", "inprocess", "process")
DEVICES = ("auto", "cpu", "cuda")
COMPILE_MODES = ("none", "model")  # suite key `compile` (level model)
AMP_DTYPES = ("none", "bf16", "fp16")  # suite key `amp` (level model)
MODEL_SETTINGS = ("channels_last", "compile", "amp")  # suite keys that apply to level model only
DEFAULT_ROUNDS = 5  # the gate's calibration (results/gate-calibration-cpu-20261202.csv) holds at this default
MAX_ROUNDS = 1000
MAX_SWEEPS = 100
INT32 = (1 << 31) - 1


def key(
    default: Any = dataclasses.MISSING,
    *,
    doc: str,
    allowed: tuple[str, ...] | None = None,
    max: float | None = None,
    yaml_name: str | None = None,
    factory: Any = None,
    shown_default: Any = dataclasses.MISSING,
    auto: bool = False,
) -> Any:
    """A dataclass field that is a suite key: `doc` (one line), `allowed` values, an upper bound `max` (beyond it
    a value is a typo), the key's YAML spelling when it is not the field name, and the default as a suite
    file writes it when it differs from the field's (device: `auto`, resolved to cpu or cuda). `auto`: the
    key also takes the word `auto`, held as None (as is null)."""
    meta = {"doc": doc, "allowed": allowed, "max": max, "yaml": yaml_name, "shown_default": shown_default}
    meta["auto"] = auto
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Repeats:
    min: int = key(5, doc="at least this many timed repeats per round", max=1_000_000)
    max: int = key(100, doc="at most this many timed repeats per round", max=1_000_000)
    min_time_s: float = key(0.5, doc="keep repeating until this much timed work (seconds) is done", max=86400.0)
    target_ci: float | None = key(
        None, doc="stop early once the median's 95% CI half-width / median is below this", max=1.0
    )


@dataclass(frozen=True)
class Suite:
    name: str = key(doc="the suite's name (required); it also names the default results file")
    mechanisms: tuple[str, ...] = key(doc="required: mechanism names or family:<family> (expanded by the plan)")
    level: tuple[str, ...] = key(
        ("op",), allowed=LEVELS, doc="op: the bare operator; mixer: the token mixer; model: the RAVLT backbone"
    )
    models: tuple[str, ...] = key((), doc="model names for level model (e.g. ravlt_t)")
    channels_last: bool = key(
        False, doc="level model: model and input in torch.channels_last memory format (variant `+cl`)"
    )
    compile: str = key(
        "none",
        allowed=COMPILE_MODES,
        doc="level model: `model` runs the whole backbone through torch.compile (variant `+compiled`; compile_s "
        "and recompiles rows)",
    )
    amp: str = key(
        "none",
        allowed=AMP_DTYPES,
        doc="level model: torch.autocast to this dtype around the forward and loss of an fp32 model (variant "
        "`+amp_bf16`)",
    )
    dim: tuple[int, ...] = key((64,), max=1 << 16, doc="mixer channels (op level: heads * head_dim)")
    heads: tuple[int, ...] = key((1,), max=1 << 12, doc="attention heads")
    resolution: tuple[int, ...] = key((), max=1 << 15, doc="square token grid side (op/mixer) or image size (model)")
    grid: tuple[tuple[int, int], ...] = key((), max=1 << 15, doc="non-square [H, W] grids, in addition to resolution")
    batch: tuple[int, ...] = key((1,), max=1 << 20, doc="items per call")
    dtype: tuple[str, ...] = key(("fp32",), allowed=DTYPES, doc="input and parameter dtype")
    pass_: tuple[str, ...] = key(
        ("fwd",),
        allowed=PASSES,
        yaml_name="pass",
        doc="fwd (under torch.no_grad), fwd_bwd (forward + backward of sum(out * g)) or bwd (that backward alone, "
        "through a graph retained from one untimed forward)",
    )
    device: str = key("cpu", allowed=DEVICES, shown_default="auto", doc="auto = cuda if available, else cpu")
    threads: int | None = key(
        None,
        max=1 << 12,
        auto=True,
        shown_default="auto",
        doc="CPU torch threads; auto: torch's default, at most the cores free when the run starts (GPU: torch's "
        "default); recorded",
    )
    warmup: int = key(3, max=100_000, doc="untimed calls before each case's timed repeats")
    warmup_s: float = key(
        0.025, max=3600.0, doc="untimed seconds too: the warm-up runs until both `warmup` calls and these are done"
    )
    repeats: Repeats = key(factory=Repeats, doc="timed repeats per round: {min, max, min_time_s, target_ci}")
    rounds: int = key(
        DEFAULT_ROUNDS,
        doc=f"timed cases are measured in this many rounds (1-{MAX_ROUNDS}), each in a fresh worker process",
    )
    sweeps: int = key(
        1,
        doc=f"visits of every timed case per round (1-{MAX_SWEEPS}), each sweep in its own shuffled "
        "order timing 1/sweeps of the repeats; a round's value is its fastest sweep's median "
        "(docs/methodology.md: Sweeps)",
    )
    retries: int = key(
        2,
        max=100,
        doc="CPU/GPU: a visit whose repeats were mostly preempted (waited for a core, or the GPU throttled) is "
        "timed again up to this many times; 0: never (docs/methodology.md: Contention)",
    )
    order_seed: int = key(0, doc="seeds the shuffled case order of each round (recorded)")
    timeout_s: float = key(120.0, max=7 * 86400.0, doc="per case and round, in seconds")
    isolation: str = key("auto", allowed=ISOLATIONS, doc="auto: process on GPU or with rounds > 1, else inprocess")
    verify: bool = key(True, doc="compare each case's output (and gradients) with its reference mechanism")
    profile: bool = key(
        False,
        doc="after its timing, run each timed case a few more times under torch.profiler: FILE.kernels.csv and "
        "FILE.profiles/<case_id>.json (run --profile; docs/results.md: Kernel profiles)",
    )
    options: dict[str, dict[str, Any]] = key(
        factory=dict, doc="per-mechanism (or per-model) options, e.g. {performer: {features: 256}}"
    )
    plugins: tuple[str, ...] = key((), doc="modules or .py paths (relative to the suite file) that register mechanisms")
    metrics: tuple[str, ...] = key(DEFAULT_METRICS, allowed=METRICS, doc="what is measured per case")
    data: str | None = key(None, doc="accuracy: the ImageNet val folder or labels file")
    checkpoints: dict[str, dict[str, Any]] = key(
        factory=dict, doc="accuracy: {model: {path: ..., ema: false}} (or {model: path})"
    )
    flush_l2: bool = key(True, doc="GPU op and mixer level: flush L2 before every repeat, outside its events")
    cuda_graphs: bool = key(
        False, doc="GPU: time replays of a CUDA graph of k captured calls (about 1 ms, k <= 100), each / k"
    )
    memory_limit_gb: float | None = key(
        None, max=float(1 << 20), doc="RLIMIT_AS of process workers (CPU); also caps the memory used for pruning"
    )
    tf32: bool = key(False, doc="GPU fp32: allow TF32 matmuls/convolutions (recorded)")
    hardware: tuple[str, ...] = key((), doc="--executor ray: every case once per hardware kind")
    exclusive: str | None = key(
        None, allowed=("node",), doc="node: one case per node at a time (--workers, Ray); null: one per device"
    )
    path: str = ""  # the suite file (not a key)
    resolved: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)  # the resolved suite, as YAML

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


GPU_KEY = "gpu"
GPU_DOC = "keys merged (deeply) when the resolved device is cuda, e.g. {batch: [1, 64], dtype: [bf16]}"
MODEL_OPTIONS = {"mixer_late", "checkpoint", "ema"}  # options keyed by a model name (level model)


# -- derived from the dataclasses ------------------------------------------------------------------------
def key_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of `cls` that are suite keys (those made with `key`)."""
    return [f for f in dataclasses.fields(cls) if "doc" in f.metadata]


def yaml_name(f: dataclasses.Field) -> str:
    return f.metadata.get("yaml") or f.name


def _kind(hint: Any) -> str:
    """How a YAML value of a field with type `hint` is parsed: str | int | float | bool (+ '?' for optional),
    strlist | intlist (sweeps: a scalar or a list), grids, mapping."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        return _kind(inner) + "?"
    if hint in (str, int, float, bool):
        return hint.__name__
    if typing.get_origin(hint) is tuple:
        item = args[0]
        if typing.get_origin(item) is tuple:
            return "grids"
        return {str: "strlist", int: "intlist"}[item]
    if typing.get_origin(hint) is dict or dataclasses.is_dataclass(hint):
        return "mapping"
    raise TypeError(f"no suite kind for {hint!r}")


@functools.cache
def kinds(cls: type = Suite) -> dict[str, str]:
    """YAML key -> kind, for every key of `cls` (Suite: plus `gpu`)."""
    hints = typing.get_type_hints(cls)
    out = {yaml_name(f): _kind(hints[f.name]) for f in key_fields(cls)}
    if cls is Suite:
        out[GPU_KEY] = "mapping"
    return out


@functools.cache
def allowed_values(cls: type = Suite) -> dict[str, tuple[str, ...]]:
    return {yaml_name(f): f.metadata["allowed"] for f in key_fields(cls) if f.metadata["allowed"]}


@functools.cache
def auto_keys() -> frozenset[str]:
    """YAML keys that also take the word `auto` (held as None)."""
    return frozenset(yaml_name(f) for f in key_fields(Suite) if f.metadata.get("auto"))


@functools.cache
def upper_bounds() -> dict[str, float]:
    """Key path ('dim', 'repeats.min') -> the largest value accepted."""
    out = {yaml_name(f): f.metadata["max"] for f in key_fields(Suite) if f.metadata["max"] is not None}
    out.update({f"repeats.{f.name}": f.metadata["max"] for f in key_fields(Repeats) if f.metadata["max"] is not None})
    return out


def default(name: str, cls: type = Suite) -> Any:
    """The default of YAML key `name` (a field's default value; required keys have none: KeyError)."""
    for f in key_fields(cls):
        if yaml_name(f) == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            raise KeyError(f"`{name}` is required")
    raise KeyError(name)


_KIND_TEXT = {
    "str": "string",
    "int": "integer",
    "float": "number",
    "bool": "true/false",
    "strlist": "string(s)",
    "intlist": "integer(s)",
    "grids": "[H, W] pair(s)",
    "mapping": "mapping",
}


def key_reference() -> list[dict[str, str]]:
    """One row per suite key (and repeats.* sub-key): key, type, default (as YAML), allowed values, meaning."""
    rows = []
    for cls, prefix in ((Suite, ""), (Repeats, "repeats.")):
        for f in key_fields(cls):
            name = yaml_name(f)
            kind = kinds(cls)[name]
            shown = f.metadata["shown_default"]
            if shown is dataclasses.MISSING:
                try:
                    shown = default(name, cls)
                except KeyError:
                    shown = "(required)"
            if isinstance(shown, Repeats):
                shown = dataclasses.asdict(shown)
            text = shown if shown == "(required)" else yaml.safe_dump(_plain(shown), default_flow_style=True).strip()
            text = text.removesuffix("\n...").strip()
            type_text = _KIND_TEXT[kind.rstrip("?")] + (" or null" if kind.endswith("?") else "")
            if f.metadata.get("auto"):
                type_text = _KIND_TEXT[kind.rstrip("?")] + " or auto"
            allowed = f.metadata["allowed"]
            rows.append(
                {
                    "key": prefix + name,
                    "type": type_text,
                    "default": text,
                    "allowed": " | ".join(allowed) if allowed else "",
                    "meaning": f.metadata["doc"],
                }
            )
    rows.insert(
        len(key_fields(Suite)), {"key": GPU_KEY, "type": "mapping", "default": "{}", "allowed": "", "meaning": GPU_DOC}
    )
    return rows


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
