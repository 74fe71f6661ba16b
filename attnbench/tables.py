"""The report's tables: formatted pivots, crossovers, scaling exponents and Pareto fronts, as `Table`s of strings.

Numbers come from `attnbench.analysis` (and its statistics from `attnbench.stats`); this module turns them
into tables of strings. `report_tables(df, ...)` gathers everything `attnbench report` shows; `as_table`
turns any of its items into a `Table` for the terminal (the CLI renders it) or for `attnbench.export`
(Markdown, LaTeX, CSV, plots).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

import pandas as pd

from attnbench import analysis
from attnbench.analysis import PivotTable
from attnbench.contention import LEGEND, MARK
from attnbench.labels import group_label, mechanism_label

COST_METRICS = ("latency", "flops", "macs", "params")


@dataclass
class Table:
    title: str
    frame: pd.DataFrame  # index: mechanism; columns: shape labels; cells: formatted strings
    notes: tuple[str, ...] = ()  # lines under the table (the legend of a marked cell)


AnyTable = Union[PivotTable, Table]


# -- formatting ----------------------------------------------------------------------------------------
def fmt_number(v: float, digits: int = 3) -> str:
    """`digits` significant digits: 0.0123, 1.23, 1234 (no exponent below 1e5), 2.42e+09; '' for NaN."""
    if v is None or pd.isna(v):
        return ""
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if v != 0 and (abs(v) >= 1e5 or abs(v) < 10 ** -(digits + 1)):
        return f"{v:.{digits - 1}e}"
    return f"{v:.0f}" if abs(v) >= 10**digits else f"{v:.{digits}g}"


def format_pivot(table: PivotTable, *, digits: int = 3, interval: str = "auto") -> Table:
    """Cells as strings: 'median ±spread%' (spread = larger distance to low/high), or 'value [low, high]'
    (interval="range", the default for speedups), or the bare value ("none"); a case's status where it
    did not run; '-' where it ran without this metric. A contended case's value ends in MARK, and the table
    then has LEGEND as a note."""
    mode = ("range" if table.metric == "speedup" else "percent") if interval == "auto" else interval
    cells = pd.DataFrame("", index=table.values.index, columns=table.values.columns)
    marked = False
    for r in table.values.index:
        for c in table.values.columns:
            v = table.values.at[r, c]
            status = table.status.at[r, c] if table.status is not None else ""
            if pd.isna(v):
                cells.at[r, c] = status if isinstance(status, str) and status else "-"
                continue
            lo = table.low.at[r, c] if table.low is not None else math.nan
            hi = table.high.at[r, c] if table.high is not None else math.nan
            cells.at[r, c] = _cell(v, lo, hi, mode, digits)
            if table.flagged is not None and table.flagged.at[r, c]:
                cells.at[r, c] += f" {MARK}"
                marked = True
    return Table(table.title, cells, (LEGEND,) if marked else ())


def _cell(v: float, lo: float, hi: float, mode: str, digits: int) -> str:
    txt = fmt_number(v, digits)
    if mode == "none" or pd.isna(lo) or pd.isna(hi):
        return txt
    if mode == "range":
        return f"{txt} [{fmt_number(lo, digits)}, {fmt_number(hi, digits)}]"
    spread = max(hi - v, v - lo) / v * 100 if v else math.nan
    return f"{txt} ±{spread:.0f}%" if math.isfinite(spread) else txt


def as_table(table: AnyTable) -> Table:
    """A report.Table of strings for the terminal (the CLI's render_table) or Markdown/LaTeX."""
    return format_pivot(table) if isinstance(table, PivotTable) else table


def crossover_table(cross: pd.DataFrame) -> Table:
    """analysis.crossovers -> one line per group: crossover tokens, who is faster below/above, bracket."""
    lines = []
    for _, r in cross.iterrows():
        group = group_label(r.to_dict())
        if r["result"] == "crossover":
            what = f"N* = {fmt_number(r['tokens'])} (grid ~{math.sqrt(r['tokens']):.0f}x{math.sqrt(r['tokens']):.0f})"
            what += f", 1 of {r['crossings']:.0f} (noise near a tie?)" if r["crossings"] > 1 else ""
            faster = f"{r['faster_below']} below, {r['faster_above']} above"
            bracket = (
                f"{r['lo_tokens']:.0f}: {fmt_number(r['lo_a'])} vs {fmt_number(r['lo_b'])}; "
                f"{r['hi_tokens']:.0f}: {fmt_number(r['hi_a'])} vs {fmt_number(r['hi_b'])}"
            )
        elif r["result"] == "none_in_range":
            what, faster, bracket = "none in range", f"{r['faster']} throughout", ""
        else:
            what, faster, bracket = "too few points", "", ""
        span = f"{r['tokens_min']:.0f}-{r['tokens_max']:.0f} ({r['n_points']:.0f} pts)"
        lines.append(
            {
                "group": group,
                "crossover": what,
                "faster": faster,
                "bracket (tokens: A vs B)": bracket,
                "tokens measured": span,
            }
        )
    title = f"crossover {cross['a'].iloc[0]} (A) vs {cross['b'].iloc[0]} (B)" if len(cross) else "crossover"
    return Table(title, pd.DataFrame(lines).set_index("group") if lines else pd.DataFrame())


def scaling_table(exps: pd.DataFrame, *, min_tokens: int | None = None) -> Table:
    """analysis.scaling_exponents -> exponent [95% CI], R², points and token range per mechanism and group."""
    lines = []
    for _, r in exps.iterrows():
        ci = f" [{r['ci_low']:.2f}, {r['ci_high']:.2f}]" if pd.notna(r["ci_low"]) else ""
        lines.append(
            {
                "mechanism": r["mechanism"],
                "group": group_label(r.to_dict()),
                "metric": r["metric"],
                "exponent [95% CI]": f"{r['exponent']:.2f}{ci}",
                "R²": f"{r['r2']:.3f}",
                "tokens": f"{r['tokens_min']:.0f}-{r['tokens_max']:.0f} ({r['n_points']} pts)",
            }
        )
    above = f", tokens >= {min_tokens}" if min_tokens else ""
    title = f"scaling exponents (log-log least squares{above})"
    return Table(title, pd.DataFrame(lines).set_index("mechanism") if lines else pd.DataFrame())


def pareto_table(points: pd.DataFrame, cost: str) -> Table:
    """analysis.pareto_front -> models with accuracy, cost and a mark on the front."""
    lines = [
        {
            "model": f"{mechanism_label(r)} @{r['height']}",
            "context": _context(r),
            "accuracy": f"{r['accuracy']:.2f} ({r['accuracy_source']})",
            f"{cost} ({r['cost_unit']})": fmt_number(r["cost"]),
            "front": "*" if r["on_front"] else "",
        }
        for _, r in points.iterrows()
    ]
    return Table(f"accuracy vs {cost}: Pareto front (*)", pd.DataFrame(lines).set_index("model"))


def _context(r: pd.Series) -> str:
    parts = [str(r[k]) for k in ("pass", "dtype", "device") if r[k]] + [f"batch {r['batch']}"]
    convention = str(r["note"]).split(";")[0].strip() if r["source"] == "measured" else "reported"
    return " ".join(parts) + (f" ({convention})" if convention else "")


# -- everything a report shows -------------------------------------------------------------------------
def report_tables(
    df: pd.DataFrame,
    *,
    baseline: str | None = None,
    crossover: tuple[str, str] | None = None,
    samples: pd.DataFrame | None = None,
    min_tokens: int | None = None,
    by: str = "auto",
) -> list[AnyTable]:
    """Latency and peak-memory pivots, speedups vs `baseline`, the crossover of a pair, scaling exponents,
    and accuracy-vs-cost fronts (model level), in that order; sections without data are left out."""
    tables: list[AnyTable] = [*analysis.pivot_tables(df, "latency", by=by)]
    tables += analysis.pivot_tables(df, "peak_memory", by=by)
    if baseline:
        tables += analysis.speedup_tables(df, baseline, by=by, samples=samples)
    if crossover:
        tables.append(crossover_table(analysis.crossovers(df, *crossover)))
    exps = analysis.scaling_exponents(df, min_tokens=min_tokens)
    if len(exps):
        tables.append(scaling_table(exps, min_tokens=min_tokens))
    for cost in COST_METRICS:
        front = analysis.pareto_front(df, cost)
        if len(front):
            tables.append(pareto_table(front, cost))
    return tables
