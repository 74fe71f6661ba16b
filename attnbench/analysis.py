"""Numbers for papers from result rows: pivots, speedups, crossovers, scaling exponents, Pareto fronts.

Pure functions over the tidy rows of `results.load` (and, where given, the raw repeats of
`results.load_samples`); they return DataFrames and dataclasses of numbers. Formatting, Markdown,
LaTeX, CSV and plots live in `attnbench.export`.

Conventions (documented choices):
- A case's value of a metric is its `median` row, else its `value` row (peak_memory, flops, ...);
  only rows with status ok count. Peak memory is shown in MiB (2**20 bytes).
- Curves over token counts are per group of CURVE_KEYS (level, variant, pass, dtype, device, batch,
  heads, head_dim, dim) and mechanism; tokens = height * width.
- Uncertainty of a ratio of medians (speedup, compare): with >= 5 samples for both cases, a seeded
  percentile bootstrap CI (each side resampled independently); the samples are the round medians when the
  run has several rounds (each a fresh process, `attnbench.stats`), else one process's raw repeats; without
  them, the p20-p80 band of each
  side propagated in quadrature in log space, `ratio * exp(+-sqrt(u_num^2 + u_den^2))` with
  u = log(p80 / median) upwards and log(median / p20) downwards. That band describes the spread of
  single calls, not a confidence interval of the median; the `interval` column says which one a row has.
- Crossover of A and B: sign changes of d(N) = log(lat_A / lat_B) over the tokens both measured
  (several shapes with one token count: geometric mean), located by linear interpolation of d in
  log N between the bracketing points (exact where both latencies are power laws in N).
- Scaling exponent: least-squares slope of log(value) on log(tokens), two-sided t-interval on the slope
  with n - 2 degrees of freedom (scipy.stats), R^2; `min_tokens` drops the overhead-dominated small grids.
- Pareto front: a model is on it when no other model has accuracy >= and cost <= with one strict.
The statistics behind these (intervals, bootstrap, power-law fits) live in `attnbench.stats`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from attnbench import stats
from attnbench.contention import is_contended
from attnbench.errors import AttnbenchError
from attnbench.labels import group_label, mechanism_label, row_order
from attnbench.results_schema import STATS

CASE_KEYS = (
    "mechanism",
    "level",
    "variant",
    "pass",
    "dtype",
    "device",
    "batch",
    "height",
    "width",
    "heads",
    "head_dim",
    "dim",
)
CURVE_KEYS = ("level", "variant", "pass", "dtype", "device", "batch", "heads", "head_dim", "dim")
# pivot tables: rows are "mechanism [variant]", so the variant (model name) is not a group key
SHAPE_GROUP = ("level", "pass", "dtype", "device", "batch", "heads", "head_dim", "dim")  # columns: token grids
BATCH_GROUP = ("level", "pass", "dtype", "device", "height", "width", "heads", "head_dim", "dim")  # columns: batch
MODEL_KEYS = ("mechanism", "variant", "height", "width")  # a model at one resolution
COST_CONTEXT = ("batch", "dtype", "device", "pass", "note", "source")
_STATUS_ORDER = ("crash", "oom", "timeout", "error", "skipped")
MIB = 2.0**20


class AnalysisError(AttnbenchError):
    """An analysis the rows cannot support (unknown baseline, mechanism without rows, ...)."""


# -- per-case values ------------------------------------------------------------------------------------
def cases(df: pd.DataFrame) -> pd.DataFrame:
    """One row per case_id: CASE_KEYS, tokens, family (where the rows have it) and the case's worst status."""
    cols = ["case_id", *CASE_KEYS, "tokens", *(["family"] if "family" in df.columns else [])]
    if df.empty:
        return pd.DataFrame(columns=[*cols, "status"])
    out = df.drop_duplicates("case_id", keep="last")[cols].reset_index(drop=True)
    worst = df.groupby("case_id", sort=False)["status"].agg(_worst_status)
    return out.assign(status=out["case_id"].map(worst))


def _worst_status(statuses: pd.Series) -> str:
    return next((s for s in _STATUS_ORDER if (statuses == s).any()), "ok")


def metric_frame(df: pd.DataFrame, metric: str = "latency") -> pd.DataFrame:
    """One row per case with an ok `metric`: case_id, CASE_KEYS, tokens, unit, note, one column per stat, center,
    contended (the note marks the case contended: attnbench.contention)."""
    cols = ["case_id", *CASE_KEYS, "tokens", "unit", "note"]
    sel = df[(df["metric"] == metric) & (df["status"] == "ok") & df["value"].notna()]
    if sel.empty:
        return pd.DataFrame(columns=[*cols, *STATS, "center", "contended"])
    central = sel["stat"].isin(("median", "value"))  # unit/note of the central row ("n" rows are counts)
    first = sel.assign(_c=central).sort_values("_c", kind="stable").drop_duplicates("case_id", keep="last")
    first = first[cols].set_index("case_id")
    wide = sel.drop_duplicates(["case_id", "stat"], keep="last").pivot(index="case_id", columns="stat", values="value")
    out = first.join(wide.reindex(columns=list(STATS))).reset_index()
    out["center"] = out["median"].fillna(out["value"])
    out["contended"] = out["note"].map(is_contended).astype(bool)
    return out


def display_scale(metric: str, unit: str) -> tuple[float, str]:
    """(divisor, unit) for showing a metric: bytes of peak_memory as MiB, the rest as recorded."""
    return (MIB, "MiB") if metric == "peak_memory" and unit in ("B", "bytes", "") else (1.0, unit)


def _row_label(frame: pd.DataFrame) -> pd.Series:
    return pd.Series([mechanism_label(r) for r in frame.to_dict("records")], index=frame.index, dtype=object)


# -- pivots ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PivotTable:
    """mechanism x shape (or batch) numbers of one group; NaN where a case has no value."""

    title: str
    metric: str
    unit: str
    values: pd.DataFrame  # index: mechanism (" [variant]" at model level); columns: "HxW" or "batch N"
    low: pd.DataFrame | None = None  # lower end of `interval`, same shape as values
    high: pd.DataFrame | None = None
    status: pd.DataFrame | None = None  # "" where ok, else the case's status ("skipped", "oom", ...)
    flagged: pd.DataFrame | None = None  # True where the value comes from a contended case
    interval: str = ""  # what low/high are: "p20-p80", "95% bootstrap CI", ...
    group: dict[str, Any] = field(default_factory=dict)
    axis: str = "shape"  # "shape" | "batch"


def pivot_tables(df: pd.DataFrame, metric: str = "latency", *, by: str = "auto") -> list[PivotTable]:
    """Per group, mechanism x token grid (by="shape") or x batch (by="batch") tables of a metric.

    by="auto" pivots over batch when every group has a single token grid and several batches.
    Values are the case medians (else single values) in display units (display_scale); low/high are p20/p80.
    """
    vals = metric_frame(df, metric)
    if vals.empty:
        return []
    scale, unit = display_scale(metric, str(vals["unit"].iloc[0]))
    frame = cases(df).merge(vals[["case_id", "center", "p20", "p80", "contended"]], on="case_id", how="left")
    frame[["center", "p20", "p80"]] = frame[["center", "p20", "p80"]] / scale
    by = _choose_axis(frame) if by == "auto" else by
    what = f"{metric} {unit} ({'median' if vals['median'].notna().any() else 'value'})"
    interval = "p20-p80" if frame["p20"].notna().any() else ""
    return _pivot(
        frame, "center", "p20", "p80", by=by, metric=metric, unit=unit, what=what, interval=interval, flag="contended"
    )


def _choose_axis(frame: pd.DataFrame) -> str:
    per_group = frame.groupby(["level", "variant", "pass", "dtype", "device", "heads", "dim"], dropna=False)
    one_grid = (per_group["tokens"].nunique(dropna=False) <= 1).all()
    return "batch" if one_grid and frame["batch"].nunique() > 1 else "shape"


def _pivot(
    frame: pd.DataFrame,
    value: str,
    low: str | None,
    high: str | None,
    *,
    by: str,
    metric: str,
    unit: str,
    what: str,
    interval: str,
    flag: str | None = None,
) -> list[PivotTable]:
    if by not in ("shape", "batch"):
        raise AnalysisError(f"pivot axis {by!r} is not one of shape, batch, auto")
    keys = list(SHAPE_GROUP if by == "shape" else BATCH_GROUP)
    col = (
        frame["height"].astype(str) + "x" + frame["width"].astype(str)
        if by == "shape"
        else "batch " + frame["batch"].astype(str)
    )
    frame = frame.assign(_row=_row_label(frame), _col=col, _status=frame["status"].where(frame["status"] != "ok", ""))
    tables = []
    for key, g in frame.groupby(keys, sort=False, dropna=False):
        if g[value].isna().all():
            continue
        g = g.drop_duplicates(["_row", "_col"], keep="last")
        families = g["family"] if "family" in g.columns else [None] * len(g)
        rows = row_order(list(g["_row"]), list(families), list(g[value].isna()))
        cols = list(dict.fromkeys(g.sort_values(["tokens", "height", "batch"])["_col"]))

        def wide(c: str, g: pd.DataFrame = g, rows: list = rows, cols: list = cols) -> pd.DataFrame:
            out = g.pivot(index="_row", columns="_col", values=c).reindex(index=rows, columns=cols)
            out.index.name, out.columns.name = "mechanism", None
            return out

        group = dict(zip(keys, key))
        tables.append(
            PivotTable(
                title=f"{what} — {group_label(group)}",
                metric=metric,
                unit=unit,
                values=wide(value).astype(float),
                low=wide(low).astype(float) if low else None,
                high=wide(high).astype(float) if high else None,
                status=wide("_status").fillna(""),
                flagged=wide(flag).astype("boolean").fillna(False).astype(bool) if flag else None,
                interval=interval,
                group=group,
                axis=by,
            )
        )
    return tables


def speedup(
    df: pd.DataFrame,
    baseline: str,
    *,
    metric: str = "latency",
    samples: pd.DataFrame | None = None,
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """Per case, speedup = median(baseline) / median(mechanism) at the same shape (> 1: faster than baseline).

    Columns: CASE_KEYS, tokens, case_id, baseline, value, baseline_value, speedup, low, high, interval, contended
    (either side's case is contended).
    """
    vals = metric_frame(df, metric)
    if baseline not in set(vals["mechanism"]):
        have = ", ".join(sorted(set(vals["mechanism"]))) or "none"
        raise AnalysisError(f"baseline {baseline!r} has no ok {metric} rows; mechanisms with rows: {have}")
    keys = [k for k in CASE_KEYS if k != "mechanism"]
    base = vals[vals["mechanism"] == baseline].drop_duplicates(keys, keep="last")
    pairs = vals.merge(base, on=keys, suffixes=("", "_base"))
    den = pairs[["case_id", "center", "p20", "p80"]]
    num = pairs[["case_id_base", "center_base", "p20_base", "p80_base"]].set_axis(den.columns, axis=1)
    raw = stats.samples_by_case(samples, metric)
    num_ids, den_ids = pairs["case_id_base"].astype(str).tolist(), pairs["case_id"].astype(str).tolist()
    low, high, kinds = stats.ratio_intervals(
        num,
        den,
        [raw.get(k) for k in num_ids],
        [raw.get(k) for k in den_ids],
        [f"{a}/{b}" for a, b in zip(num_ids, den_ids)],
        confidence=confidence,
        n_boot=n_boot,
        seed=seed,
    )
    same = np.array([a == b for a, b in zip(num_ids, den_ids)], bool)  # the baseline itself: exactly 1
    low[same], high[same] = 1.0, 1.0
    kinds = ["same case" if s else k for s, k in zip(same, kinds)]
    out = pairs[["case_id", *CASE_KEYS, "tokens"]].assign(
        baseline=baseline,
        value=pairs["center"],
        baseline_value=pairs["center_base"],
        speedup=pairs["center_base"] / pairs["center"],
        low=low,
        high=high,
        interval=kinds,
        contended=pairs["contended"].astype(bool) | pairs["contended_base"].astype(bool),
    )
    return out.reset_index(drop=True)


def speedup_tables(
    df: pd.DataFrame,
    baseline: str,
    *,
    metric: str = "latency",
    by: str = "auto",
    samples: pd.DataFrame | None = None,
    confidence: float = 0.95,
    seed: int = 0,
) -> list[PivotTable]:
    """Pivots of `speedup` (baseline / mechanism) with low/high from its interval."""
    sp = speedup(df, baseline, metric=metric, samples=samples, confidence=confidence, seed=seed)
    frame = sp.assign(status="ok")
    by = _choose_axis(frame) if by == "auto" else by
    kinds = sorted({k for k in sp["interval"] if k and k != "same case"})
    return _pivot(
        frame,
        "speedup",
        "low",
        "high",
        by=by,
        metric="speedup",
        unit="x",
        what=f"speedup vs {baseline} ({metric} median ratio)",
        interval=" / ".join(kinds),
        flag="contended",
    )


# -- crossovers ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Crossing:
    """Where latency A equals latency B, interpolated in log-log between two measured points."""

    tokens: float
    lower: tuple[float, float, float]  # (tokens, value_a, value_b) of the bracketing point below
    upper: tuple[float, float, float]  # ... and above (the same point when A == B exactly there)
    faster_below: str  # "a" | "b"


def find_crossovers(tokens: Sequence[float], a: Sequence[float], b: Sequence[float]) -> list[Crossing]:
    """Sign changes of log(a / b) over increasing tokens; [] when one side is faster (or equal) throughout."""
    n, va, vb = (np.asarray(x, float) for x in (tokens, a, b))
    order = np.argsort(n)
    n, va, vb = n[order], va[order], vb[order]
    d = np.log(va / vb)
    out: list[Crossing] = []
    for i in range(len(n)):
        if d[i] == 0 and 0 < i < len(n) - 1 and d[i - 1] * d[i + 1] < 0:
            pt = (n[i], va[i], vb[i])
            out.append(Crossing(float(n[i]), pt, pt, "a" if d[i - 1] < 0 else "b"))
        if i + 1 < len(n) and d[i] * d[i + 1] < 0:
            x0, x1 = math.log(n[i]), math.log(n[i + 1])
            x = x0 + d[i] * (x1 - x0) / (d[i] - d[i + 1])
            out.append(
                Crossing(math.exp(x), (n[i], va[i], vb[i]), (n[i + 1], va[i + 1], vb[i + 1]), "a" if d[i] < 0 else "b")
            )
    return out


def crossovers(
    df: pd.DataFrame, a: str, b: str, *, metric: str = "latency", group_keys: Sequence[str] = CURVE_KEYS
) -> pd.DataFrame:
    """Crossover token counts of mechanisms a and b per group (one row per crossing, or one saying none).

    Several crossings in one group (crossings > 1) usually mean noise around a near-tie; each is a row.
    At op and mixer level a `variant` names a mechanism's own configuration (a neighborhood's kernel, a linear
    mechanism's features), so A's curve meets B's whatever their variants: each variant of A against each of B,
    the row's `variant` saying which ("A kernel=5, B default" where they differ). At model level the variant is
    the model, and only the same model's curves meet.
    Columns: group_keys, a, b, variant_a, variant_b, result ("crossover" | "none_in_range" | "too_few_points"),
    crossings, tokens, faster_below, faster_above, faster (throughout, for none_in_range), lo_tokens, lo_a, lo_b,
    hi_tokens, hi_a, hi_b, tokens_min, tokens_max, n_points.
    """
    vals = metric_frame(df, metric)
    for m in (a, b):
        if m not in set(vals["mechanism"]):
            raise AnalysisError(
                f"{m!r} has no ok {metric} rows (mechanisms with rows: "
                f"{', '.join(sorted(set(vals['mechanism']))) or 'none'})"
            )
    vals = vals[vals["mechanism"].isin((a, b)) & (vals["center"] > 0)].assign(logv=lambda f: np.log(f["center"]))
    by_variant = "variant" in group_keys
    keys = [k for k in group_keys if k != "variant"]
    rows = []
    for key, g in vals.groupby(keys, sort=False, dropna=False):
        for variant_a, variant_b in _variant_pairs(g, a, b) if by_variant else [(None, None)]:
            rows += _crossover_rows(g, a, b, variant_a, variant_b, dict(zip(keys, key)))
    columns = [
        *group_keys,
        "a",
        "b",
        "variant_a",
        "variant_b",
        "result",
        "crossings",
        "tokens",
        "faster_below",
        "faster_above",
        "faster",
        "lo_tokens",
        "lo_a",
        "lo_b",
        "hi_tokens",
        "hi_a",
        "hi_b",
        "tokens_min",
        "tokens_max",
        "n_points",
    ]
    out = pd.DataFrame(rows).reindex(columns=columns)
    for c in ("faster_below", "faster_above", "faster"):
        out[c] = out[c].astype(object).fillna("")
    return out


def _variant_pairs(g: pd.DataFrame, a: str, b: str) -> list[tuple[str, str]]:
    """The (variant of A, variant of B) curves that meet in group `g` (see `crossovers`)."""
    ours = {m: sorted(set(g.loc[g["mechanism"] == m, "variant"].fillna("").astype(str))) for m in (a, b)}
    if (g["level"] == "model").all():  # the variant is the model: only the same model's curves meet
        return [(v, v) for v in ours[a] if v in ours[b]]
    return [(va, vb) for va in ours[a] for vb in ours[b]]


def _crossover_rows(
    g: pd.DataFrame, a: str, b: str, variant_a: str | None, variant_b: str | None, group: dict
) -> list[dict]:
    """The rows of one pair of curves (A's and B's, of the given variants; None: every row of the group)."""
    if variant_a is not None:
        variants = g["variant"].fillna("").astype(str)
        g = g[((g["mechanism"] == a) & (variants == variant_a)) | ((g["mechanism"] == b) & (variants == variant_b))]
        label = variant_a if variant_a == variant_b else f"A {variant_a or 'default'}, B {variant_b or 'default'}"
        group = {**group, "variant": label}
    curve = g.groupby(["tokens", "mechanism"])["logv"].mean().unstack("mechanism").reindex(columns=[a, b]).dropna()
    if curve.empty:
        return []
    n = curve.index.to_numpy(float)
    va, vb = np.exp(curve[a].to_numpy()), np.exp(curve[b].to_numpy())
    base = {
        **group,
        "a": a,
        "b": b,
        "variant_a": variant_a,
        "variant_b": variant_b,
        "tokens_min": n.min(),
        "tokens_max": n.max(),
        "n_points": len(n),
    }
    if len(n) < 2:
        return [{**base, "result": "too_few_points"}]
    found = find_crossovers(n, va, vb)
    rows = []
    for c in found:
        below, above = (a, b) if c.faster_below == "a" else (b, a)
        rows.append(
            {
                **base,
                "result": "crossover",
                "crossings": len(found),
                "tokens": c.tokens,
                "faster_below": below,
                "faster_above": above,
                "lo_tokens": c.lower[0],
                "lo_a": c.lower[1],
                "lo_b": c.lower[2],
                "hi_tokens": c.upper[0],
                "hi_a": c.upper[1],
                "hi_b": c.upper[2],
            }
        )
    if not found:
        faster = a if np.mean(np.log(va / vb)) < 0 else b
        rows.append({**base, "result": "none_in_range", "crossings": 0, "faster": faster})
    return rows


# -- scaling exponents ---------------------------------------------------------------------------------
def scaling_exponents(
    df: pd.DataFrame,
    metrics: Sequence[str] = ("latency", "peak_memory"),
    *,
    min_tokens: int | None = None,
    confidence: float = 0.95,
    group_keys: Sequence[str] = CURVE_KEYS,
) -> pd.DataFrame:
    """Fitted exponents per (group, mechanism, metric) over cases with tokens >= min_tokens.

    Columns: group_keys, mechanism, metric, exponent, ci_low, ci_high, r2, n_points, tokens_min, tokens_max,
    prefactor (in the metric's recorded unit).
    """
    rows = []
    for metric in metrics:
        vals = metric_frame(df, metric)
        if min_tokens is not None:
            vals = vals[vals["tokens"] >= min_tokens]
        for key, g in vals.groupby([*group_keys, "mechanism"], sort=False, dropna=False):
            n, center = g["tokens"].to_numpy(float), g["center"].to_numpy(float)
            usable = np.isfinite(n) & np.isfinite(center) & (n > 0) & (center > 0)  # log-log needs positives
            n, center = n[usable], center[usable]
            if np.unique(n).size < 2:
                continue
            fit = stats.fit_power_law(n, center, confidence=confidence)
            rows.append(
                {
                    **dict(zip([*group_keys, "mechanism"], key)),
                    "metric": metric,
                    "exponent": fit.exponent,
                    "ci_low": fit.ci_low,
                    "ci_high": fit.ci_high,
                    "r2": fit.r2,
                    "n_points": fit.n,
                    "tokens_min": n.min(),
                    "tokens_max": n.max(),
                    "prefactor": fit.prefactor,
                }
            )
    columns = [
        *group_keys,
        "mechanism",
        "metric",
        "exponent",
        "ci_low",
        "ci_high",
        "r2",
        "n_points",
        "tokens_min",
        "tokens_max",
        "prefactor",
    ]
    return pd.DataFrame(rows).reindex(columns=columns)


# -- accuracy vs cost ----------------------------------------------------------------------------------
def pareto_mask(accuracy: Sequence[float], cost: Sequence[float]) -> np.ndarray:
    """True where no other point has accuracy >= and cost <= with one of them strict (NaN: False)."""
    acc, c = np.asarray(accuracy, float), np.asarray(cost, float)
    valid = np.isfinite(acc) & np.isfinite(c)
    mask = np.zeros(acc.size, bool)
    for i in np.flatnonzero(valid):
        dominated = valid & (acc >= acc[i]) & (c <= c[i]) & ((acc > acc[i]) | (c < c[i]))
        mask[i] = not dominated.any()
    return mask


def pareto_front(df: pd.DataFrame, cost: str = "latency", *, accuracy: str = "top1") -> pd.DataFrame:
    """Model-level accuracy vs cost points with `on_front`, one front per cost context.

    A model is (mechanism, variant, height, width); its accuracy is the measured row if any, else the
    reported one. Cost rows (median, else value) keep their context COST_CONTEXT (batch, dtype, device,
    pass, note, source): each context (e.g. latency at batch 64 bf16, or macs with its counting note)
    gets its own front. Sorted by context, then cost.
    """
    model = df[(df["level"] == "model") & (df["status"] == "ok") & df["value"].notna()]
    acc = model[model["metric"] == accuracy]
    acc = acc.assign(_measured=acc["source"] == "measured").sort_values("_measured", kind="stable")
    acc = acc.drop_duplicates(list(MODEL_KEYS), keep="last")[[*MODEL_KEYS, "value", "source"]]
    acc = acc.rename(columns={"value": "accuracy", "source": "accuracy_source"})
    costs = model[(model["metric"] == cost) & model["stat"].isin(("median", "value"))]
    costs = costs.sort_values("stat", key=lambda s: s.eq("median"), kind="stable")
    costs = costs.drop_duplicates([*MODEL_KEYS, *COST_CONTEXT], keep="last")
    costs = costs[[*MODEL_KEYS, *COST_CONTEXT, "value", "unit"]].rename(columns={"value": "cost", "unit": "cost_unit"})
    points = costs.merge(acc, on=list(MODEL_KEYS))
    if points.empty:
        return points.assign(on_front=pd.Series(dtype=bool))
    front = pd.Series(False, index=points.index)
    for _, g in points.groupby(list(COST_CONTEXT), sort=False, dropna=False):
        front[g.index] = pareto_mask(g["accuracy"], g["cost"])
    points = points.assign(on_front=front.astype(bool))
    return points.sort_values([*COST_CONTEXT, "cost"], kind="stable").reset_index(drop=True)
