"""Statistics shared by gate, compare and analysis: run-level samples, tests, intervals, corrections.

Pure functions over numbers (numpy / pandas); scipy is imported where a distribution is needed.

Run-level samples. Repeats of one process share its memory layout, frequency state and neighbour load,
so they miss the variation between runs; `round_medians` reduces a samples table to one value per
(case, round), each round measured in a fresh worker process (`rounds:` in a suite). Uncertainty of a
comparison comes from these round medians, never from pooled within-process repeats.

Comparison of two sets of round medians (`log_ratio_test`): the effect is the ratio of medians
median(new) / median(base); its test and interval are Welch's t on log round medians (timings are
positive and multiplicative; the log makes a 10 % change the same size at 0.01 ms and at 100 ms, and
Welch's test allows each side its own noise). The interval is exp of Welch's interval of the difference
of mean logs, i.e. of the ratio of geometric means, which estimates the same ratio as the medians when the
round medians are log-symmetric. Needs >= 2 values per side; with fewer there is no noise estimate.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

_BOOTSTRAP_CHUNK = 1 << 20  # resampled values held at once


def finite(values: Sequence[float] | np.ndarray) -> np.ndarray:
    a = np.asarray(values, dtype=float).ravel()
    return a[np.isfinite(a)]


def last_blocks(samples: pd.DataFrame) -> pd.DataFrame:
    """Per (case_id, metric, round, sweep), the repeats from its last `rep == 0` on: a case-round measured twice
    in one file (e.g. re-measured by --resume) counts with its latest block."""
    if samples.empty:
        return samples
    zero = pd.Series(0, index=samples.index)
    keys = [samples["case_id"], samples["metric"], samples.get("round", zero), samples.get("sweep", zero)]
    block = samples["rep"].eq(0).fillna(False).astype(int).groupby(keys).cumsum()
    return samples[block == block.groupby(keys).transform("max")]


def round_medians(samples: pd.DataFrame | None, metric: str = "latency") -> dict[str, np.ndarray]:
    """case_id -> each round's value of `metric`, in round order: the median of its finite repeats, or with
    several sweeps per round the lowest sweep median (attnbench.rounds.round_value). Files without a round
    (sweep) column are one round (sweep)."""
    if samples is None or samples.empty:
        return {}
    s = last_blocks(samples[samples["metric"] == metric])
    s = s[np.isfinite(s["value"].to_numpy(float))]
    s = s.assign(**{c: 0 for c in ("round", "sweep") if c not in s.columns})
    meds = s.groupby(["case_id", "round", "sweep"], sort=True)["value"].median().groupby(level=[0, 1]).min()
    out: dict[str, np.ndarray] = {}
    for case_id in dict.fromkeys(s["case_id"]):  # first-seen order
        out[str(case_id)] = meds.loc[case_id].to_numpy(float)
    return out


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


def log_ratio_test(base: np.ndarray, new: np.ndarray, *, confidence: float = 0.95) -> tuple[float, float, float]:
    """(two-sided p, ci_low, ci_high) for new vs base from Welch's t on log values (module docstring).

    Non-positive values are dropped (no log). Both sides without spread: p = 1 if their means agree, else 0,
    and the interval is the point ratio. Fewer than 2 values on a side: (nan, nan, nan)."""
    from scipy import stats as sst  # imported here: the rest of attnbench runs without scipy

    a = np.log(base[base > 0])
    b = np.log(new[new > 0])
    if a.size < 2 or b.size < 2:
        return math.nan, math.nan, math.nan
    diff = float(b.mean() - a.mean())
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    if se == 0.0 or se < 1e-12 * max(1.0, abs(diff)):
        point = math.exp(diff)
        return (1.0 if abs(diff) < 1e-12 else 0.0), point, point
    df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))  # Welch-Satterthwaite
    t = diff / se
    p = float(2 * sst.t.sf(abs(t), df))
    half = float(sst.t.ppf((1 + confidence) / 2, df)) * se
    return p, math.exp(diff - half), math.exp(diff + half)


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


def seeded_rng(seed: int, key: str) -> np.random.Generator:
    """A generator seeded from (seed, key): the same case gets the same resamples in every call."""
    return np.random.default_rng([seed, zlib.crc32(key.encode())])


def log_sd(x: np.ndarray) -> float:
    """Standard deviation (ddof 1) of the logs of the positive values; NaN with fewer than 2."""
    x = x[x > 0]
    return float(np.log(x).std(ddof=1)) if x.size >= 2 else math.nan


# -- ratios of medians with uncertainty (speedup, compare) -----------------------------------------------
def ratio_band(
    num: np.ndarray, num_p20: np.ndarray, num_p80: np.ndarray, den: np.ndarray, den_p20: np.ndarray, den_p80: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) of num/den from each side's p20-p80 band, added in quadrature in log space (NaN if missing)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.asarray(num, float) / np.asarray(den, float)
        up = np.hypot(np.log(np.asarray(num_p80, float) / num), np.log(den / np.asarray(den_p20, float)))
        down = np.hypot(np.log(num / np.asarray(num_p20, float)), np.log(np.asarray(den_p80, float) / den))
    return ratio * np.exp(-down), ratio * np.exp(up)


def bootstrap_ratio(
    num: np.ndarray, den: np.ndarray, *, confidence: float = 0.95, n_boot: int = 2000, seed: int = 0, key: str = ""
) -> tuple[float, float]:
    """Percentile bootstrap CI of median(num) / median(den), seeded from (seed, key)."""
    return bootstrap_ratio_ci(
        np.asarray(den, float), np.asarray(num, float), confidence=confidence, n_boot=n_boot, rng=seeded_rng(seed, key)
    )


def samples_by_case(samples: pd.DataFrame | None, metric: str = "latency") -> dict[str, np.ndarray]:
    """case_id -> the samples an interval is computed from: the round medians when the file has several rounds
    (run-level noise, module docstring), else the finite raw repeats of its one round (last block)."""
    if samples is None or samples.empty:
        return {}
    s = samples[samples["metric"] == metric]
    if "round" in s.columns and s["round"].nunique() > 1:
        return round_medians(s, metric)
    s = last_blocks(s)
    out = {str(k): g["value"].to_numpy(float) for k, g in s.groupby("case_id", sort=False)}
    return {k: finite(v) for k, v in out.items()}


def ratio_intervals(
    num: pd.DataFrame,
    den: pd.DataFrame,
    num_samples: Sequence[np.ndarray | None],
    den_samples: Sequence[np.ndarray | None],
    keys: Sequence[str],
    *,
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
    min_samples: int = 5,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(low, high, interval) of center(num) / center(den), row by row (frames with center, p20, p80).

    Rows whose two sides both have >= min_samples raw samples (5, as in the gate: fewer make a bootstrap CI
    meaningless) get a bootstrap CI seeded by (seed, keys[i]); the others the p20-p80 band (module
    docstring); '' where neither is available.
    """
    low, high = ratio_band(
        num["center"].to_numpy(float),
        num["p20"].to_numpy(float),
        num["p80"].to_numpy(float),
        den["center"].to_numpy(float),
        den["p20"].to_numpy(float),
        den["p80"].to_numpy(float),
    )
    kinds = ["p20-p80" if np.isfinite(lo) and np.isfinite(hi) else "" for lo, hi in zip(low, high)]
    for i, (sa, sb) in enumerate(zip(num_samples, den_samples)):
        if isinstance(sa, np.ndarray) and isinstance(sb, np.ndarray) and min(sa.size, sb.size) >= min_samples:
            low[i], high[i] = bootstrap_ratio(sa, sb, confidence=confidence, n_boot=n_boot, seed=seed, key=keys[i])
            kinds[i] = f"{confidence:.0%} bootstrap CI"
    return low, high, kinds


# -- power laws (scaling exponents) --------------------------------------------------------------------
@dataclass(frozen=True)
class PowerFit:
    """value ~ prefactor * tokens ** exponent, fitted in log-log by least squares."""

    exponent: float
    prefactor: float
    ci_low: float  # two-sided t-interval of the exponent (NaN with 2 points)
    ci_high: float
    r2: float
    n: int


def fit_power_law(tokens: Sequence[float], values: Sequence[float], *, confidence: float = 0.95) -> PowerFit:
    """Least-squares slope of log(values) on log(tokens); needs >= 2 distinct positive token counts."""
    x, y = np.asarray(tokens, float), np.asarray(values, float)
    ok = (x > 0) & (y > 0) & np.isfinite(x) & np.isfinite(y)
    x, y = np.log(x[ok]), np.log(y[ok])
    if np.unique(x).size < 2:
        raise ValueError("a power-law fit needs at least two distinct positive token counts")
    n = int(x.size)
    slope, intercept = np.polyfit(x, y, 1)
    resid = y - (slope * x + intercept)
    sxx = float(((x - x.mean()) ** 2).sum())
    syy = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / syy if syy > 0 else 1.0
    stderr = math.sqrt(float((resid**2).sum()) / (n - 2) / sxx) if n > 2 else math.nan
    half = _t_quantile((1 + confidence) / 2, n - 2) * stderr if n > 2 else math.nan
    return PowerFit(float(slope), float(math.exp(intercept)), float(slope - half), float(slope + half), r2, n)


def _t_quantile(q: float, dof: int) -> float:
    """Student-t quantile (scipy, imported here so the rest of the report runs where scipy is absent,
    e.g. a bare GPU image: the interval is then NaN, shown as missing, never approximated)."""
    try:
        from scipy import stats as sst
    except ImportError:
        return math.nan
    return float(sst.t.ppf(q, dof))
