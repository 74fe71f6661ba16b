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

import numpy as np
import pandas as pd

_BOOTSTRAP_CHUNK = 1 << 20  # resampled values held at once


def finite(values: Sequence[float] | np.ndarray) -> np.ndarray:
    a = np.asarray(values, dtype=float).ravel()
    return a[np.isfinite(a)]


def last_blocks(samples: pd.DataFrame) -> pd.DataFrame:
    """Per (case_id, metric, round), the repeats from its last `rep == 0` on: a case-round measured twice in
    one file (e.g. re-measured by --resume) counts with its latest block."""
    if samples.empty:
        return samples
    rounds = samples["round"] if "round" in samples.columns else pd.Series(0, index=samples.index)
    keys = [samples["case_id"], samples["metric"], rounds]
    block = samples["rep"].eq(0).fillna(False).astype(int).groupby(keys).cumsum()
    return samples[block == block.groupby(keys).transform("max")]


def round_medians(samples: pd.DataFrame | None, metric: str = "latency") -> dict[str, np.ndarray]:
    """case_id -> median of each round's finite repeats of `metric`, in round order (files without a round
    column are one round)."""
    if samples is None or samples.empty:
        return {}
    s = last_blocks(samples[samples["metric"] == metric])
    s = s[np.isfinite(s["value"].to_numpy(float))]
    if "round" not in s.columns:
        s = s.assign(round=0)
    meds = s.groupby(["case_id", "round"], sort=True)["value"].median()
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
