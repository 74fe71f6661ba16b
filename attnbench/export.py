"""Writing report tables out: Markdown, LaTeX (booktabs), tidy CSV, and figure files.

The tables come from `attnbench.tables` (numbers from `attnbench.analysis`); this module only renders and
writes them. `to_markdown` / `to_latex` render one table; `tidy` / `to_csv` give the pivots' numbers in long
form; `write_plots` writes the latency, memory and speedup figures that `attnbench.figures` draws.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from attnbench import analysis, figures, labels, tables
from attnbench.analysis import PivotTable
from attnbench.errors import AttnbenchError
from attnbench.tables import AnyTable, as_table


class ExportError(AttnbenchError):
    """An export that cannot be written (matplotlib missing, unwritable directory)."""


# -- Markdown / LaTeX / CSV ----------------------------------------------------------------------------
def to_markdown(table: AnyTable, caption: str | None = None) -> str:
    """A GitHub Markdown table under its caption in bold (default: what it shows in words, `tables.caption`);
    pipes in cells escaped."""
    t = as_table(table)
    head = [t.frame.index.name or "", *map(str, t.frame.columns)]
    rows = [[str(i), *map(str, r)] for i, r in zip(t.frame.index, t.frame.itertuples(index=False))]
    esc = [[c.replace("|", "\\|") for c in line] for line in [head, *rows]]
    rule = "|" + "|".join([":--", *["--:"] * (len(head) - 1)]) + "|"
    cap = caption if caption is not None else tables.caption(table)
    lines = [f"**{cap}**", "", "| " + " | ".join(esc[0]) + " |", rule]
    lines += ["| " + " | ".join(line) + " |" for line in esc[1:]]
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
    """A booktabs table (\\toprule/\\midrule/\\bottomrule) in a table float; the caption defaults to what the
    table shows in words (`tables.caption`)."""
    t = as_table(table)
    head = [t.frame.index.name or "", *map(str, t.frame.columns)]
    body = [[str(i), *map(str, r)] for i, r in zip(t.frame.index, t.frame.itertuples(index=False))]
    cap = caption if caption is not None else tables.caption(table)
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
# The figures themselves (palette, axes, splitting by family, facets) are drawn by attnbench.figures.
group_slug = labels.group_slug
HOLLOW_LABEL = figures.HOLLOW_LABEL


def _save(fig, out_dir: Path, stem: str, formats: Sequence[str]) -> list[Path]:
    return figures.save(figures.Plot(stem, "", fig, {}, ""), out_dir, formats)


def _write(plots: list[figures.Plot], out_dir: str | Path, formats: Sequence[str]) -> list[Path]:
    return [p for plot in plots for p in _save(plot.figure, Path(out_dir), plot.stem, formats)]


def plot_vs_tokens(
    df: pd.DataFrame,
    out_dir: str | Path,
    metric: str = "latency",
    *,
    min_tokens: int | None = None,
    formats: Sequence[str] = ("png", "pdf"),
) -> list[Path]:
    """Per group, `metric` vs tokens (log-log), one line per mechanism, error bars p20-p80, dashed power-law
    fits (over tokens >= min_tokens) with the exponent in the legend.
    Files: <metric>-<group slug>[-<families>].<fmt>."""
    return _write(figures.vs_tokens(df, metric, min_tokens=min_tokens), out_dir, formats)


def plot_speedup(
    df: pd.DataFrame,
    out_dir: str | Path,
    baseline: str,
    *,
    samples: pd.DataFrame | None = None,
    formats: Sequence[str] = ("png", "pdf"),
) -> list[Path]:
    """Per group, speedup vs `baseline` (baseline / mechanism latency) against tokens, with its interval."""
    return _write(figures.speedups(df, baseline, samples=samples), out_dir, formats)


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
    plots = figures.report_plots(df, baseline=baseline, samples=samples, min_tokens=min_tokens)
    return _write(plots, out_dir, formats)
