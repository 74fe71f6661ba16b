"""Writing report tables out: Markdown, LaTeX (booktabs), tidy CSV, and matplotlib figures.

The tables come from `attnbench.tables` (numbers from `attnbench.analysis`); this module only renders and
writes them. `to_markdown` / `to_latex` render one table; `tidy` / `to_csv` give the pivots' numbers in long
form; `write_plots` draws the latency, memory and speedup figures. Plots use matplotlib's object API (no
pyplot, no global backend), imported only when a plot is made.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from attnbench import analysis, stats
from attnbench.analysis import CURVE_KEYS, PivotTable
from attnbench.errors import AttnbenchError
from attnbench.labels import group_label, has_value
from attnbench.tables import AnyTable, as_table


class ExportError(AttnbenchError):
    """An export that cannot be written (matplotlib missing, unwritable directory)."""


# -- Markdown / LaTeX / CSV ----------------------------------------------------------------------------
def to_markdown(table: AnyTable) -> str:
    """A GitHub Markdown table with the title in bold above it; pipes in cells escaped."""
    t = as_table(table)
    head = [t.frame.index.name or "", *map(str, t.frame.columns)]
    rows = [[str(i), *map(str, r)] for i, r in zip(t.frame.index, t.frame.itertuples(index=False))]
    esc = [[c.replace("|", "\\|") for c in line] for line in [head, *rows]]
    rule = "|" + "|".join([":--", *["--:"] * (len(head) - 1)]) + "|"
    lines = [f"**{t.title}**", "", "| " + " | ".join(esc[0]) + " |", rule]
    lines += ["| " + " | ".join(line) + " |" for line in esc[1:]]
    if isinstance(table, PivotTable) and table.interval:
        lines += ["", f"_± / [ ]: {table.interval}_"]
    lines += [line for note in t.notes for line in ("", f"_{note}_")]
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    "×": r"$\times$",
    "²": r"$^2$",
    "—": "---",
    "≥": r"$\geq$",
    "†": r"\dag{}",
}
_LATEX_RE = re.compile("|".join(re.escape(k) for k in _LATEX_SPECIAL))


def latex_escape(text: str) -> str:
    """Escape LaTeX specials (& % $ # _ { } ~ ^ \\) and map ± × ² — to math/ligatures."""
    return _LATEX_RE.sub(lambda m: _LATEX_SPECIAL[m.group(0)], str(text))


def to_latex(table: AnyTable, caption: str | None = None, label: str | None = None) -> str:
    """A booktabs table (\\toprule/\\midrule/\\bottomrule) in a table float; caption defaults to the title."""
    t = as_table(table)
    head = [t.frame.index.name or "", *map(str, t.frame.columns)]
    body = [[str(i), *map(str, r)] for i, r in zip(t.frame.index, t.frame.itertuples(index=False))]
    cap = caption if caption is not None else t.title
    if isinstance(table, PivotTable) and table.interval and caption is None:
        cap += f" (± / [ ]: {table.interval})"
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{latex_escape(cap)}}}"]
    if label:
        lines.append(rf"\label{{{label}}}")
    lines += [
        rf"\begin{{tabular}}{{l{'r' * (len(head) - 1)}}}",
        r"\toprule",
        " & ".join(latex_escape(h) for h in head) + r" \\",
        r"\midrule",
    ]
    lines += [" & ".join(latex_escape(c) for c in row) + r" \\" for row in body]
    lines += [r"\bottomrule", r"\end{tabular}"]
    lines += [rf"\par\footnotesize {latex_escape(note)}" for note in t.notes]
    lines += [r"\end{table}"]
    return "\n".join(lines) + "\n"


def tidy(tables: Sequence[AnyTable]) -> pd.DataFrame:
    """The pivots' numbers in long form: group keys, metric, unit, mechanism, column, value, low, high,
    interval, status, contended (Tables of strings are skipped)."""
    parts = []
    for t in tables:
        if not isinstance(t, PivotTable):
            continue
        long = t.values.stack(future_stack=True).rename("value").reset_index().rename(columns={"level_1": "column"})
        long.columns = ["mechanism", "column", "value"]
        for name, frame in (("low", t.low), ("high", t.high), ("status", t.status), ("contended", t.flagged)):
            long[name] = frame.stack(future_stack=True).to_numpy() if frame is not None else math.nan
        long["contended"] = long["contended"].eq(True)
        parts.append(long.assign(**t.group, metric=t.metric, unit=t.unit, axis=t.axis, interval=t.interval))
    if not parts:
        return pd.DataFrame()
    out = pd.concat(parts, ignore_index=True)
    first = [c for c in (*analysis.BATCH_GROUP, "batch") if c in out.columns]
    return out[
        [
            *dict.fromkeys(
                [
                    *first,
                    *("metric", "unit", "axis", "mechanism", "column", "value", "low", "high", "interval", "status"),
                    "contended",
                ]
            )
        ]
    ]


def to_csv(tables: Sequence[AnyTable]) -> str:
    """tidy(tables) as CSV text."""
    return tidy(tables).to_csv(index=False)


# -- plots ---------------------------------------------------------------------------------------------
def _figure():
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ExportError("plots need matplotlib: pip install 'attnbench[plot]'") from None
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    return fig, fig.add_subplot()


def _group_figures(frame: pd.DataFrame):
    """(group, its rows, fig, ax) for each CURVE_KEYS group of `frame` measured at two or more token counts."""
    for key, g in frame.groupby(list(CURVE_KEYS), sort=False, dropna=False):
        if g["tokens"].nunique() >= 2:
            yield dict(zip(CURVE_KEYS, key)), g, *_figure()


def _error_bars(y: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """(2, n) distances below and above y for ax.errorbar; 0 where an end is missing."""
    err = np.vstack([y - low, high - y])
    return np.where(np.isfinite(err), np.clip(err, 0, None), 0)


def group_slug(group: dict) -> str:
    """File-name part of a group: 'op-fwd-fp32-cpu-b1-h1-d64'."""
    present = {k: v for k, v in group.items() if has_value(v)}
    parts = [str(present[k]) for k in ("level", "variant", "pass", "dtype", "device") if k in present]
    parts += [f"{p}{present[k]}" for k, p in (("batch", "b"), ("heads", "h"), ("dim", "d")) if k in present]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(parts))


def _save(fig, out_dir: Path, stem: str, formats: Sequence[str]) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.{fmt}" for fmt in formats]
    for p in paths:
        fig.savefig(p, dpi=150)
    return paths


def plot_vs_tokens(
    df: pd.DataFrame,
    out_dir: str | Path,
    metric: str = "latency",
    *,
    min_tokens: int | None = None,
    formats: Sequence[str] = ("png", "pdf"),
) -> list[Path]:
    """Per group, `metric` vs tokens (log-log), one line per mechanism, error bars p20-p80, dashed power-law
    fits in the mechanism's colour (over tokens >= min_tokens) with the exponent in the legend.
    Files: <metric>-<group slug>.<fmt>."""
    vals = analysis.metric_frame(df, metric)
    if vals.empty:
        return []
    scale, unit = analysis.display_scale(metric, str(vals["unit"].iloc[0]))
    styles = _styles(df)
    paths = []
    for group, g, fig, ax in _group_figures(vals):
        for mech, m in g.groupby("mechanism", sort=False):
            m = m.sort_values("tokens")
            n, y = m["tokens"].to_numpy(float), m["center"].to_numpy(float) / scale
            err = _error_bars(y, m["p20"].to_numpy(float) / scale, m["p80"].to_numpy(float) / scale)
            keep = n >= (min_tokens or 0)
            fit = stats.fit_power_law(n[keep], y[keep]) if np.unique(n[keep]).size >= 2 else None
            label = mech + (rf" ($\propto N^{{{fit.exponent:.2f}}}$)" if fit else "")
            ax.errorbar(n, y, yerr=err, ms=4, capsize=3, label=label, **styles[mech])
            _hollow(ax, n, y, m["contended"].to_numpy(bool), styles[mech])
            if fit:
                xs = np.geomspace(n[keep].min(), n[keep].max(), 50)
                ax.plot(xs, fit.prefactor * xs**fit.exponent, "--", lw=1, alpha=0.6, color=styles[mech]["color"])
        _axes(ax, f"{metric.replace('_', ' ')} ({unit})", group_label(group))
        paths += _save(fig, Path(out_dir), f"{metric}-{group_slug(group)}", formats)
    return paths


def plot_speedup(
    df: pd.DataFrame,
    out_dir: str | Path,
    baseline: str,
    *,
    samples: pd.DataFrame | None = None,
    formats: Sequence[str] = ("png", "pdf"),
) -> list[Path]:
    """Per group, speedup vs `baseline` (baseline / mechanism latency) against tokens, with its interval."""
    sp = analysis.speedup(df, baseline, samples=samples)
    styles = _styles(df)
    paths = []
    for group, g, fig, ax in _group_figures(sp):
        ax.axhline(1.0, color="0.6", lw=0.8)
        for mech, m in g[g["mechanism"] != baseline].groupby("mechanism", sort=False):
            m = m.sort_values("tokens")
            y = m["speedup"].to_numpy(float)
            err = _error_bars(y, m["low"].to_numpy(float), m["high"].to_numpy(float))
            ax.errorbar(m["tokens"].to_numpy(float), y, yerr=err, ms=4, capsize=3, label=mech, **styles[mech])
            _hollow(ax, m["tokens"].to_numpy(float), y, m["contended"].to_numpy(bool), styles[mech])
        _axes(ax, f"speedup vs {baseline} (×, >1 faster)", group_label(group))
        paths += _save(fig, Path(out_dir), f"speedup-vs-{baseline}-{group_slug(group)}", formats)
    return paths


_MARKERS = ("o", "s", "^", "D", "v")
_LINES = ("-", "-.", ":", "--", (0, (3, 1, 1, 1)))


def _styles(df: pd.DataFrame) -> dict[str, dict]:
    """One style per mechanism (order of first appearance), the same in every figure of a report:
    10 colours, then a new marker and line style for each further 10, so no two mechanisms look alike."""
    return {
        m: {"color": f"C{i % 10}", "marker": _MARKERS[(i // 10) % 5], "ls": _LINES[(i // 10) % 5]}
        for i, m in enumerate(dict.fromkeys(df["mechanism"]))
    }


HOLLOW_LABEL = "hollow: contended (re-run quietly)"


def _hollow(ax, x: np.ndarray, y: np.ndarray, flagged: np.ndarray, style: dict) -> None:
    """Redraw the points of contended cases hollow (white inside, the mechanism's colour around); the legend
    explains it once per figure."""
    if not flagged.any():
        return
    ax.plot(x[flagged], y[flagged], ls="none", marker=style["marker"], ms=4, mfc="white", mec=style["color"], zorder=3)
    if HOLLOW_LABEL not in ax.get_legend_handles_labels()[1]:
        ax.plot([], [], ls="none", marker="o", ms=4, mfc="white", mec="0.3", label=HOLLOW_LABEL)


def _axes(ax, ylabel: str, title: str) -> None:
    from matplotlib import ticker

    ax.set_xscale("log")
    ax.set_yscale("log")

    class PlainLog(ticker.LogFormatter):  # the default labels (10^k) are mathtext, whose parsing is most of a
        def _num_to_string(self, x, vmin, vmax):  # figure's drawing time; plain numbers ("0.6", "3000") are not
            return f"{x:g}"

    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(PlainLog())
        axis.set_minor_formatter(PlainLog(labelOnlyBase=False))
    ax.set_xlabel("tokens N = H×W (log)")
    ax.set_ylabel(f"{ylabel} (log)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def write_plots(
    df: pd.DataFrame,
    out_dir: str | Path,
    *,
    baseline: str | None = None,
    samples: pd.DataFrame | None = None,
    min_tokens: int | None = None,
    formats: Sequence[str] = ("png", "pdf"),
) -> list[Path]:
    """Latency and peak memory vs tokens, and speedup vs `baseline` when given; returns the files written."""
    paths = plot_vs_tokens(df, out_dir, "latency", min_tokens=min_tokens, formats=formats)
    paths += plot_vs_tokens(df, out_dir, "peak_memory", min_tokens=min_tokens, formats=formats)
    if baseline:
        paths += plot_speedup(df, out_dir, baseline, samples=samples, formats=formats)
    return paths
