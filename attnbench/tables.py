"""The report's tables: formatted pivots, crossovers, scaling exponents and Pareto fronts, as `Table`s of strings.

Numbers come from `attnbench.analysis` (and its statistics from `attnbench.stats`); this module turns them
into tables of strings. `report_tables(df, ...)` gathers everything `attnbench report` shows; `as_table`
turns any of its items into a `Table` for the terminal (the CLI renders it) or for `attnbench.export`
(Markdown, LaTeX, CSV, plots).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Union

import pandas as pd

from attnbench import analysis
from attnbench.analysis import PivotTable
from attnbench.contention import LEGEND, MARK
from attnbench.labels import group_label, group_slug, mechanism_label, words_title

COST_METRICS = ("latency", "flops", "macs", "params")


@dataclass
class Table:
    title: str
    frame: pd.DataFrame  # index: mechanism; columns: shape labels; cells: formatted strings
    notes: tuple[str, ...] = ()  # lines under the table (the legend of a marked cell)
    caption: str = ""  # what the table shows, in words (LaTeX and HTML captions); the title where empty
    key: str = ""  # a short stable name of the kind of table ("crossover", "scaling", ...), for LaTeX labels


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
    return Table(table.title, cells, (LEGEND,) if marked else (), caption(table), table_key(table))


def _cell(v: float, lo: float, hi: float, mode: str, digits: int) -> str:
    txt = fmt_number(v, digits)
    if mode == "none" or pd.isna(lo) or pd.isna(hi):
        return txt
    if mode == "range":
        return f"{txt} [{fmt_number(lo, digits)}, {fmt_number(hi, digits)}]"
    spread = max(hi - v, v - lo) / v * 100 if v else math.nan
    return f"{txt} ±{spread:.0f}%" if math.isfinite(spread) else txt


_METRIC_WORDS = {"latency": "latency per call", "peak_memory": "peak memory"}


def caption(table: AnyTable) -> str:
    """What a table shows, in words (a LaTeX or HTML caption): for a pivot 'Median forward latency per call (ms)
    of the attention operator, fp32 on CPU, batch 1, 1 head of 64 channels, by mechanism and token grid HxW; ±:
    the larger distance to p20 or p80 of the round values'."""
    if not isinstance(table, PivotTable):
        return table.caption or table.title
    across = "token grid HxW" if table.axis == "shape" else "batch size"
    if table.metric == "speedup":
        over = re.search(r"speedup vs (.+?) \(", table.title)
        what = f"speed-up over {over.group(1)}" if over else "speed-up"
        text = words_title(f"{what} (ratio of median latencies, > 1: faster)", table.group)
        return (
            text
            + f", by mechanism and {across}"
            + (f"; [ ]: its interval ({table.interval})" if table.interval else "")
        )
    median = "median" if "(median)" in table.title else ""
    what = f"{_METRIC_WORDS.get(table.metric, table.metric.replace('_', ' '))} ({table.unit})"
    text = words_title(what, table.group, lead=median) + f", by mechanism and {across}"
    if table.interval == "p20-p80":
        text += "; ±: the larger distance to p20 or p80 of the round values (of the repeats with one round)"
    return text


def table_key(table: AnyTable) -> str:
    """A short stable name of a table: 'latency-op-fwd-fp32-cpu-b1-h1-d64', 'crossover', 'scaling', ..."""
    if not isinstance(table, PivotTable):
        return table.key
    return f"{table.metric}-{group_slug(table.group)}"


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
    words = (
        f"Crossover: the token count N* where the latencies of {cross['a'].iloc[0]} (A) and {cross['b'].iloc[0]} "
        "(B) cross, per group, interpolated in log-log space between the two measured points that bracket it"
        if len(cross)
        else "Crossover of two mechanisms' latencies"
    )
    frame = pd.DataFrame(lines).set_index("group") if lines else pd.DataFrame()
    return Table(title, frame, caption=words, key="crossover")


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
    words = (
        "Scaling exponents: the least-squares slope of the log of each metric against log tokens, with its 95% "
        f"confidence interval and R², per mechanism and group{f' (tokens at least {min_tokens})' if min_tokens else ''}"
    )
    frame = pd.DataFrame(lines).set_index("mechanism") if lines else pd.DataFrame()
    return Table(title, frame, caption=words, key="scaling")


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
    words = f"Accuracy against {cost} of each model; * marks the models on the Pareto front (none better in both)"
    return Table(
        f"accuracy vs {cost}: Pareto front (*)",
        pd.DataFrame(lines).set_index("model"),
        caption=words,
        key=f"pareto-{cost}",
    )


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
