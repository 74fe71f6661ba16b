"""Regression gate: compare two runs' raw repeat samples case by case and decide pass or fail.

Pure logic behind `python -m attnbench gate BASELINE NEW` (load, align, test, decide); the CLI prints
`format_rows(result)`, `result.summary()` and `result.notes`, and exits with `result.exit_code`.

Inputs, both of one kind: a results CSV from `attnbench run`, whose raw repeats are read from the
FILE.samples.csv beside it (the chosen metric's rows; a case measured twice counts with its last block of
repeats, the last one starting at rep 0), aligned by case_id and named from FILE.csv's rows; or a
pytest-benchmark JSON with raw data (`--benchmark-save-data` / `--benchmark-json`; `stats.data`, seconds per
iteration, converted to ms; latency only), aligned by `fullname`, else by `name` when no fullname matches
and names are unique. Non-finite samples are dropped. Cases on one side only are listed, never failures.

Per case on both sides: change = median(new) / median(base) - 1; p_raw from a two-sided Mann-Whitney U
test (scipy; exact for small samples without ties), one family for both directions; p_holm by Holm's
step-down method over all judged cases, so pure noise flags any case with probability <= alpha however
large the suite. Verdict: regression if worse by more than `threshold` and p_holm <= alpha, improvement if
better by more than `threshold` and p_holm <= alpha, else unchanged ("worse" = larger, or smaller for
HIGHER_IS_BETTER metrics). too_few_samples: under `min_samples` (default 5) on a side; such cases are
shown, kept out of the Holm family and never fail. Why 5: the smallest attainable two-sided p with n per
side is 2 / C(2n, n) = 0.1, 0.029, 0.0079 for n = 3, 4, 5; `notes` warns when judged cases cannot reach
significance after Holm. ci_low/ci_high: percentile bootstrap CI (confidence 1 - alpha) of the ratio of
medians, seeded per case from (seed, case key). exit_code: 1 if any case regressed, else 0; usage errors
raise `GateError` (exit 2).
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from attnbench import results
from attnbench.errors import AttnbenchError
from attnbench.userinput import read_user_text

VERDICTS = ("regression", "improvement", "too_few_samples", "unchanged")  # display order
HIGHER_IS_BETTER = frozenset(
    {"throughput", "tokens_per_s", "achieved_tflops", "achieved_gbps", "frac_bandwidth", "frac_flops", "top1", "top5"}
)
_BOOTSTRAP_CHUNK = 1 << 20  # resampled values held at once
_DESCRIBE = ("mechanism", "level", "variant", "pass", "dtype", "batch", "height", "width")


class GateError(AttnbenchError):
    """A gate that cannot be evaluated: missing or unreadable input, no common cases, bad option."""


@dataclass(frozen=True)
class CaseRef:
    """A case seen on one side only."""

    key: str
    name: str


@dataclass(frozen=True)
class GateCase:
    """The comparison of one case; ratio and CI are new/base of the medians."""

    key: str  # case_id, or pytest-benchmark fullname/name
    name: str  # for display: "rala_eager op fwd fp32 b1 14x14" or the benchmark name
    n_base: int
    n_new: int
    median_base: float
    median_new: float
    ratio: float
    change: float  # ratio - 1; positive = larger values in new
    ci_low: float  # of the ratio; nan for too_few_samples
    ci_high: float
    p_raw: float  # nan for too_few_samples
    p_holm: float
    verdict: str  # one of VERDICTS


@dataclass(frozen=True)
class GateResult:
    """A gate's outcome: the options it ran with, one GateCase per common case, one-sided cases, notes."""

    baseline: str
    new: str
    metric: str
    unit: str
    threshold: float
    alpha: float
    min_samples: int
    higher_is_better: bool
    cases: tuple[GateCase, ...]  # cases on both sides, in baseline order
    only_in_baseline: tuple[CaseRef, ...] = ()
    only_in_new: tuple[CaseRef, ...] = ()
    notes: tuple[str, ...] = ()  # warnings worth printing under the table

    def with_verdict(self, verdict: str) -> tuple[GateCase, ...]:
        return tuple(c for c in self.cases if c.verdict == verdict)

    @property
    def regressions(self) -> tuple[GateCase, ...]:
        return self.with_verdict("regression")

    @property
    def improvements(self) -> tuple[GateCase, ...]:
        return self.with_verdict("improvement")

    @property
    def passed(self) -> bool:
        return not self.regressions

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    def summary(self) -> str:
        """One line: verdict counts and one-sided cases, e.g. for under the CLI table."""
        labels = {"regression": "regressed", "improvement": "improved", "too_few_samples": "too few samples"}
        counts = ", ".join(f"{len(self.with_verdict(v))} {labels.get(v, v)}" for v in VERDICTS)
        line = f"{'FAIL' if self.regressions else 'PASS'}: {len(self.cases)} cases compared ({counts})"
        if self.only_in_baseline or self.only_in_new:
            line += f"; {len(self.only_in_baseline)} only in baseline, {len(self.only_in_new)} only in new"
        return line

    def to_frame(self) -> pd.DataFrame:
        columns = list(GateCase.__dataclass_fields__)
        return pd.DataFrame([asdict(c) for c in self.cases], columns=columns)


@dataclass(frozen=True)
class SampleSet:
    """One side's raw samples of one metric, keyed by case."""

    path: Path
    kind: str  # "results" | "pytest-benchmark"
    samples: dict[str, np.ndarray]
    names: dict[str, str] = field(default_factory=dict)
    unit: str = ""
    aliases: dict[str, str] = field(default_factory=dict)  # pytest-benchmark: fullname -> name


def parse_threshold(value: str | float) -> float:
    """'5%' -> 0.05, '0.05' -> 0.05; a plain number must be a fraction below 1 (write '150%' for 1.5)."""
    text = str(value).strip()
    try:
        number = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise GateError(f"threshold {text!r} is not a number; write it like 5% or 0.05") from None
    if not math.isfinite(number) or number < 0:
        raise GateError(f"threshold {text!r} must be a non-negative change; write it like 5% or 0.05")
    if not text.endswith("%") and number >= 1:
        raise GateError(f"threshold {text!r} reads as {number:.0%}; write {text}% for {text} percent, or a fraction")
    return number


def _check_options(alpha: float, min_samples: int) -> float:
    if not 0 < alpha < 1:
        raise GateError(f"alpha {alpha} must lie strictly between 0 and 1, e.g. 0.05")
    if min_samples < 1:
        raise GateError(f"min_samples {min_samples} must be at least 1")
    return float(alpha)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm step-down adjusted p-values, in input order; NaNs stay NaN and are not counted.

    Sorted ascending, p_(i) is multiplied by (k - i + 1) (i from 1), made monotone, and capped at 1;
    rejecting where adjusted p <= alpha controls the family-wise error rate at alpha.
    """
    p = np.asarray(pvalues, dtype=float)
    adjusted = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    order = valid[np.argsort(p[valid], kind="stable")]
    k = order.size
    scaled = p[order] * (k - np.arange(k))
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return adjusted


def mann_whitney_p(base: np.ndarray, new: np.ndarray) -> float:
    """Two-sided Mann-Whitney U p-value; 1.0 where the test is undefined (e.g. all values tied)."""
    from scipy.stats import mannwhitneyu  # imported here: the rest of attnbench runs without scipy

    p = float(mannwhitneyu(base, new, alternative="two-sided").pvalue)
    return 1.0 if math.isnan(p) else p


def bootstrap_ratio_ci(
    base: np.ndarray, new: np.ndarray, *, confidence: float, n_boot: int, rng: np.random.Generator
) -> tuple[float, float]:
    """Percentile bootstrap CI of median(new) / median(base), resampling each side independently."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = _bootstrap_medians(new, n_boot, rng) / _bootstrap_medians(base, n_boot, rng)
    low, high = np.quantile(ratios, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(low), float(high)


def _bootstrap_medians(x: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    rows = max(1, _BOOTSTRAP_CHUNK // x.size)  # bounds memory for pytest-benchmark's thousands of rounds
    chunks = [rng.choice(x, size=(min(rows, n_boot - i), x.size)) for i in range(0, n_boot, rows)]
    return np.concatenate([np.median(c, axis=1) for c in chunks])


def _min_attainable_p(m: int, n: int) -> float:
    """Smallest two-sided exact Mann-Whitney p with sizes m, n (complete separation, no ties)."""
    return min(1.0, 2 / math.comb(m + n, m))


def gate_samples(
    base: Mapping[str, Sequence[float] | np.ndarray],
    new: Mapping[str, Sequence[float] | np.ndarray],
    *,
    threshold: float | str = 0.05,
    alpha: float = 0.05,
    metric: str = "latency",
    min_samples: int = 5,
    n_boot: int = 2000,
    seed: int = 0,
    names: Mapping[str, str] | None = None,
    unit: str = "",
) -> GateResult:
    """Judge every case in both mappings (case key -> raw samples); see the module docstring."""
    threshold = parse_threshold(threshold)
    alpha = _check_options(alpha, min_samples)
    names = names or {}
    common = [k for k in base if k in new]
    if not common:
        raise GateError("no case is in both baseline and new; compare runs of the same suite")

    higher_is_better = metric in HIGHER_IS_BETTER
    arrays = {k: (_finite(base[k]), _finite(new[k])) for k in common}
    judged = [k for k in common if min(arrays[k][0].size, arrays[k][1].size) >= min_samples]
    p_raw = {k: mann_whitney_p(*arrays[k]) for k in judged}
    p_holm = dict(zip(judged, holm([p_raw[k] for k in judged])))

    cases = []
    for key in common:
        b, n = arrays[key]
        median_base = float(np.median(b)) if b.size else math.nan
        median_new = float(np.median(n)) if n.size else math.nan
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = float(np.divide(median_new, median_base))
        ci: tuple[float, float] = (math.nan, math.nan)
        if key in p_holm:
            rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
            ci = bootstrap_ratio_ci(b, n, confidence=1 - alpha, n_boot=n_boot, rng=rng)
            verdict = _verdict(ratio - 1, p_holm[key], threshold, alpha, higher_is_better)
        else:
            verdict = "too_few_samples"
        cases.append(
            GateCase(
                key=key, name=names.get(key, key), n_base=int(b.size), n_new=int(n.size),
                median_base=median_base, median_new=median_new, ratio=ratio, change=ratio - 1,
                ci_low=ci[0], ci_high=ci[1], p_raw=p_raw.get(key, math.nan), p_holm=p_holm.get(key, math.nan),
                verdict=verdict,
            )
        )  # fmt: skip

    return GateResult(
        baseline="baseline", new="new", metric=metric, unit=unit, threshold=threshold, alpha=alpha,
        min_samples=min_samples, higher_is_better=higher_is_better, cases=tuple(cases),
        only_in_baseline=tuple(CaseRef(k, names.get(k, k)) for k in base if k not in new),
        only_in_new=tuple(CaseRef(k, names.get(k, k)) for k in new if k not in base),
        notes=_power_notes(cases, alpha, min_samples),
    )  # fmt: skip


def _verdict(change: float, p_holm: float, threshold: float, alpha: float, higher_is_better: bool) -> str:
    if p_holm > alpha:
        return "unchanged"
    worse_by = -change if higher_is_better else change
    return "regression" if worse_by > threshold else "improvement" if worse_by < -threshold else "unchanged"


def _finite(values: Sequence[float] | np.ndarray) -> np.ndarray:
    a = np.asarray(values, dtype=float).ravel()
    return a[np.isfinite(a)]


def _power_notes(cases: list[GateCase], alpha: float, min_samples: int) -> tuple[str, ...]:
    notes = []
    judged = [c for c in cases if c.verdict != "too_few_samples"]
    weak = [c for c in judged if _min_attainable_p(c.n_base, c.n_new) * len(judged) > alpha]
    if weak:
        n = min(min(c.n_base, c.n_new) for c in weak)
        notes.append(
            f"{len(weak)} of {len(judged)} compared cases have too few samples (down to {n} per side) for a lone "
            f"change to reach significance after Holm over {len(judged)} cases; record more repeats"
        )
    few = len(cases) - len(judged)
    if few:
        notes.append(f"{few} cases have fewer than {min_samples} samples on a side and were not judged")
    return tuple(notes)


def gate(
    baseline: str | Path,
    new: str | Path,
    *,
    threshold: float | str = 0.05,
    alpha: float = 0.05,
    metric: str = "latency",
    min_samples: int = 5,
    n_boot: int = 2000,
    seed: int = 0,
) -> GateResult:
    """Compare NEW against BASELINE (results CSVs or pytest-benchmark JSONs); exit_code 1 on regression."""
    threshold = parse_threshold(threshold)
    alpha = _check_options(alpha, min_samples)
    base_set, new_set = load_samples(baseline, metric), load_samples(new, metric)
    if base_set.kind != new_set.kind:
        raise GateError(
            f"{base_set.path} is a {base_set.kind} file but {new_set.path} is a {new_set.kind} file; "
            "compare two files of the same kind"
        )
    base_set, new_set = _align_names(base_set, new_set)
    if not set(base_set.samples) & set(new_set.samples):
        raise GateError(
            f"no case is in both {base_set.path} ({len(base_set.samples)} cases) and {new_set.path} "
            f"({len(new_set.samples)} cases); compare runs of the same suite"
        )
    result = gate_samples(
        base_set.samples, new_set.samples, threshold=threshold, alpha=alpha, metric=metric,
        min_samples=min_samples, n_boot=n_boot, seed=seed, names={**new_set.names, **base_set.names},
        unit=base_set.unit or new_set.unit,
    )  # fmt: skip
    return replace(result, baseline=str(base_set.path), new=str(new_set.path))


def _align_names(base: SampleSet, new: SampleSet) -> tuple[SampleSet, SampleSet]:
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


def load_samples(path: str | Path, metric: str = "latency") -> SampleSet:
    """Raw samples of `metric` from a results CSV (via FILE.samples.csv) or a pytest-benchmark JSON."""
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
        raise GateError(f"{samples_path} has {len(skipped)} invalid sample lines (first: {skipped[0]}); a gate "
                        "cannot judge damaged samples: re-run, or repair the file")  # fmt: skip
    available = sorted(set(df["metric"]))
    df = df[df["metric"] == metric]
    if df.empty:
        raise GateError(f"{samples_path} has no {metric!r} samples (it has {available}); pick one with --metric")
    df = _last_block(df)
    samples = {str(k): g["value"].to_numpy(dtype=float) for k, g in df.groupby("case_id", sort=False)}
    names: dict[str, str] = {}
    unit = ""
    if main.is_file():
        rows = results.load(main)
        for case_id, g in rows.groupby("case_id", sort=False):
            names[str(case_id)] = describe_case(g.iloc[0].to_dict())
        units = rows.loc[(rows["metric"] == metric) & (rows["unit"] != ""), "unit"]
        unit = str(units.iloc[0]) if len(units) else ""
    return SampleSet(path=main if main.is_file() else path, kind="results", samples=samples, names=names, unit=unit)


def _last_block(df: pd.DataFrame) -> pd.DataFrame:
    """Per case, the repeats from its last `rep == 0` on: a case measured twice in a file counts once."""
    keys = [df["case_id"], df["metric"]]
    block = df["rep"].eq(0).fillna(False).astype(int).groupby(keys).cumsum()
    return df[block == block.groupby(keys).transform("max")]


def describe_case(row: Mapping[str, Any]) -> str:
    """'rala_eager op fwd fp32 b8 14x14' (+ variant) from a results row."""
    get = {c: "" if pd.isna(v := row.get(c, "")) else str(v) for c in _DESCRIBE}
    parts = [get["mechanism"], get["level"], get["variant"], get["pass"], get["dtype"]]
    if get["batch"]:
        parts.append(f"b{get['batch']}")
    if get["height"] and get["width"]:
        parts.append(f"{get['height']}x{get['width']}")
    return " ".join(p for p in parts if p) or str(row.get("case_id", ""))


def _load_benchmark_json(path: Path, metric: str) -> SampleSet:
    if metric != "latency":
        raise GateError(f"{path} is pytest-benchmark JSON, which holds timings only; use --metric latency")
    samples: dict[str, np.ndarray] = {}
    aliases: dict[str, str] = {}  # fullname -> name
    try:
        doc = json.loads(read_user_text(path, "pytest-benchmark JSON file", max_bytes=MAX_JSON_BYTES),
                         parse_constant=_refuse_constant)  # fmt: skip
        benches = doc["benchmarks"]
        if not isinstance(benches, list):
            raise TypeError("`benchmarks` is not a list")
        for bench in benches:
            name = str(bench.get("name", ""))
            key = str(bench.get("fullname") or name)
            samples[key] = _benchmark_data(path, key, (bench.get("stats") or {}).get("data") or [])
            aliases[key] = name or key
    except GateError:
        raise
    except (AttnbenchError, OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise GateError(
            f"cannot read {path} as pytest-benchmark JSON ({reason}); pass a file saved with --benchmark-save-data"
        ) from None
    if samples and not any(v.size for v in samples.values()):
        raise GateError(f"{path} has no raw samples (stats.data); re-run pytest with --benchmark-save-data")
    return SampleSet(path, "pytest-benchmark", samples, names=dict(aliases), unit="ms", aliases=aliases)


MAX_JSON_BYTES = 1 << 30


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a timing")


def _benchmark_data(path: Path, key: str, data: Any) -> np.ndarray:
    """stats.data of one benchmark in ms: a flat list of finite, non-negative seconds, else GateError (a
    gate must not pass because a timing was NaN or overflowed to inf, e.g. 1e999999)."""
    if not isinstance(data, list) or any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in data):
        raise GateError(f"{path}: benchmark {key[:80]!r} has stats.data that is not a list of numbers; "
                        "pass a file saved with --benchmark-save-data")  # fmt: skip
    values = np.asarray(data, dtype=float)
    bad = values[~np.isfinite(values) | (values < 0)]
    if bad.size:
        raise GateError(f"{path}: benchmark {key[:80]!r} has {bad.size} invalid timings (e.g. {bad[0]!r}); a gate "
                        "cannot judge non-finite or negative times: re-run the benchmark")  # fmt: skip
    return values * 1e3  # s per iteration -> ms


def format_rows(result: GateResult) -> list[dict[str, str]]:
    """Display rows (all values strings, same keys in every row): regressions, improvements, too_few_samples,
    unchanged, each by size of change. Keys: case, id, n, baseline, new, change, ci, p, p_holm, verdict."""
    rank = {v: i for i, v in enumerate(VERDICTS)}
    ordered = sorted(result.cases, key=lambda c: (rank[c.verdict], -abs(np.nan_to_num(c.change))))
    unit = f" {result.unit}" if result.unit else ""
    return [
        {
            "case": c.name,
            "id": c.key,
            "n": f"{c.n_base}/{c.n_new}",
            "baseline": f"{c.median_base:.4g}{unit}",
            "new": f"{c.median_new:.4g}{unit}",
            "change": _percent(c.change),
            "ci": "-" if math.isnan(c.ci_low) else f"[{_percent(c.ci_low - 1)}, {_percent(c.ci_high - 1)}]",
            "p": _p(c.p_raw),
            "p_holm": _p(c.p_holm),
            "verdict": c.verdict,
        }
        for c in ordered
    ]


def _percent(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:+.1%}"


def _p(p: float) -> str:
    return "-" if math.isnan(p) else ("<0.0001" if p < 1e-4 else f"{p:.4f}")
