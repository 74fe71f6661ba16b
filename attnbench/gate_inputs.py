"""The gate's inputs: one side's run-level samples (round medians per case) from results CSVs (with their
FILE.samples.csv) or pytest-benchmark JSONs (`--benchmark-save-data`), read defensively: a damaged or
non-finite sample stops the gate instead of letting it pass. See `attnbench.gate` for how they are judged."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from attnbench import contention, results, stats
from attnbench.errors import AttnbenchError, GateError
from attnbench.labels import case_label
from attnbench.userinput import read_user_text


@dataclass(frozen=True)
class SampleSet:
    """One side's round medians of one metric, keyed by case (several files: their rounds concatenated)."""

    paths: tuple[Path, ...]
    kind: str  # "results" | "pytest-benchmark"
    samples: dict[str, np.ndarray]  # key -> round medians
    names: dict[str, str] = field(default_factory=dict)
    unit: str = ""
    aliases: dict[str, str] = field(default_factory=dict)  # pytest-benchmark: fullname -> name
    contended: frozenset[str] = frozenset()  # keys whose latency rows are marked contended (attnbench.contention)

    @property
    def label(self) -> str:
        return " ".join(str(p) for p in self.paths)


def side_hardware(side: SampleSet) -> set[str]:
    from attnbench.compare import run_hardware

    labels: set[str] = set()
    for path in side.paths:
        if Path(path).is_file() and not str(path).endswith(".samples.csv"):
            labels |= run_hardware(path, results.load(path))
    return labels


def align_names(base: SampleSet, new: SampleSet) -> tuple[SampleSet, SampleSet]:
    """pytest-benchmark: fall back from fullname to name when no fullname matches and names are unique."""
    if set(base.samples) & set(new.samples) or not (base.aliases and new.aliases):
        return base, new
    rekeyed = []
    for s in (base, new):
        if len(set(s.aliases.values())) != len(s.aliases):
            return base, new
        samples = {s.aliases[k]: v for k, v in s.samples.items()}
        rekeyed.append(replace(s, samples=samples, names={v: v for v in samples}, aliases={}))
    return rekeyed[0], rekeyed[1]


def load_side(paths: str | Path | Sequence[str | Path], metric: str = "latency") -> SampleSet:
    """One side of a gate: the round medians of every file, concatenated per case in the order given."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise GateError("a side of the gate has no files; pass results CSVs or pytest-benchmark JSONs")
    sets = [load_samples(p, metric) for p in paths]
    kinds = {s.kind for s in sets}
    if len(kinds) > 1:
        raise GateError(
            f"{' '.join(map(str, paths))} mixes results CSVs and pytest-benchmark JSONs; give one kind per side"
        )
    samples: dict[str, list[np.ndarray]] = {}
    names: dict[str, str] = {}
    aliases: dict[str, str] = {}
    contended = frozenset().union(*(s.contended for s in sets))
    for s in sets:
        for key, meds in s.samples.items():
            samples.setdefault(key, []).append(meds)
        names.update(s.names)
        aliases.update(s.aliases)
    return SampleSet(
        paths=tuple(p for s in sets for p in s.paths),
        kind=sets[0].kind,
        samples={k: np.concatenate(v) for k, v in samples.items()},
        names=names,
        unit=next((s.unit for s in sets if s.unit), ""),
        aliases=aliases,
        contended=contended,
    )


def load_samples(path: str | Path, metric: str = "latency") -> SampleSet:
    """Round medians of `metric` from a results CSV (via FILE.samples.csv) or a pytest-benchmark JSON."""
    path = Path(path)
    if not path.is_file():
        raise GateError(f"{path} not found; pass a results CSV from `attnbench run` or a pytest-benchmark JSON")
    if path.suffix == ".json":
        return _load_benchmark_json(path, metric)
    return _load_results_csv(path, metric)


def _load_results_csv(path: Path, metric: str) -> SampleSet:
    is_samples = path.name.endswith(".samples.csv")
    main = path.with_name(path.name[: -len(".samples.csv")] + ".csv") if is_samples else path
    samples_path = path if is_samples else results.companion(path, "samples.csv")
    if not samples_path.is_file():
        raise GateError(
            f"{path} has no samples file beside it ({samples_path.name}); gate needs the raw repeats that "
            "`attnbench run` writes next to the results CSV - copy it along"
        )
    df = results.load_samples(samples_path)
    skipped = df.attrs.get("skipped_lines", [])
    if skipped:  # NaN/inf or malformed samples must not make a gate pass: refuse to judge instead
        raise GateError(
            f"{samples_path} has {len(skipped)} invalid sample lines (first: {skipped[0]}); a gate "
            "cannot judge damaged samples: re-run, or repair the file"
        )
    available = sorted(set(df["metric"]))
    if df[df["metric"] == metric].empty:
        raise GateError(f"{samples_path} has no {metric!r} samples (it has {available}); pick one with --metric")
    samples = {k: v for k, v in stats.round_medians(df, metric).items() if v.size}
    names: dict[str, str] = {}
    unit = ""
    contended: frozenset[str] = frozenset()
    if main.is_file():
        rows = results.load(main)
        contended = frozenset(contention.contended_cases(rows))
        for case_id, g in rows.groupby("case_id", sort=False):
            names[str(case_id)] = case_label(g.iloc[0].to_dict())
        units = rows.loc[(rows["metric"] == metric) & (rows["unit"] != ""), "unit"]
        unit = str(units.iloc[0]) if len(units) else ""
    return SampleSet(
        paths=(main if main.is_file() else path,),
        kind="results",
        samples=samples,
        names=names,
        unit=unit,
        contended=contended,
    )


def _load_benchmark_json(path: Path, metric: str) -> SampleSet:
    """One pytest-benchmark run = one process = one round: each benchmark's median of `stats.data`."""
    if metric != "latency":
        raise GateError(f"{path} is pytest-benchmark JSON, which holds timings only; use --metric latency")
    samples: dict[str, np.ndarray] = {}
    aliases: dict[str, str] = {}  # fullname -> name
    try:
        doc = json.loads(
            read_user_text(path, "pytest-benchmark JSON file", max_bytes=MAX_JSON_BYTES),
            parse_constant=_refuse_constant,
        )
        benches = doc["benchmarks"]
        if not isinstance(benches, list):
            raise TypeError("`benchmarks` is not a list")
        for bench in benches:
            name = str(bench.get("name", ""))
            key = str(bench.get("fullname") or name)
            data = _benchmark_data(path, key, (bench.get("stats") or {}).get("data") or [])
            if data.size:  # the run's median is this file's one round
                samples[key] = np.array([float(np.median(data))])
            aliases[key] = name or key
    except GateError:
        raise
    except (AttnbenchError, OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise GateError(
            f"cannot read {path} as pytest-benchmark JSON ({reason}); pass a file saved with --benchmark-save-data"
        ) from None
    if not samples:
        raise GateError(f"{path} has no raw samples (stats.data); re-run pytest with --benchmark-save-data")
    return SampleSet((path,), "pytest-benchmark", samples, names=dict(aliases), unit="ms", aliases=aliases)


MAX_JSON_BYTES = 1 << 30


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a timing")


def _benchmark_data(path: Path, key: str, data: Any) -> np.ndarray:
    """stats.data of one benchmark in ms: a flat list of finite, non-negative seconds, else GateError (a
    gate must not pass because a timing was NaN or overflowed to inf, e.g. 1e999999)."""
    if not isinstance(data, list) or any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in data):
        raise GateError(
            f"{path}: benchmark {key[:80]!r} has stats.data that is not a list of numbers; "
            "pass a file saved with --benchmark-save-data"
        )
    values = np.asarray(data, dtype=float)
    bad = values[~np.isfinite(values) | (values < 0)]
    if bad.size:
        raise GateError(
            f"{path}: benchmark {key[:80]!r} has {bad.size} invalid timings (e.g. {bad[0]!r}); a gate "
            "cannot judge non-finite or negative times: re-run the benchmark"
        )
    return values * 1e3  # s per iteration -> ms
