"""A history's steps for people and machines: display rows (terminal, Markdown, CSV), a JSON object, and one
plot per series with a step (matplotlib: pip install 'attnbench[plot]')."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from attnbench.history import HistoryError, HistoryResult, Series, Step

JSON_SCHEMA_ID = "attnbench-history/1"


def _pct(x: float) -> str:
    return "-" if not math.isfinite(x) else f"{x - 1:+.1%}"


def _commits(step: Step) -> str:
    span = f"{step.commit_before[:10]}..{step.commit_after[:10]}"
    if step.commits_between is not None:
        span += f" ({step.commits_between} commit{'s' if step.commits_between != 1 else ''})"
    return span


def header(result: HistoryResult) -> list[str]:
    """The keys of `rows`: case, case_id, machine, commits, before, after, change, interval, direction, runs, p."""
    interval = f"{1 - result.alpha:.0%} interval"
    return ["case", "case_id", "machine", "commits", "before", "after", "change", interval, "direction", "runs", "p"]


def rows(result: HistoryResult) -> list[dict[str, str]]:
    """One display row per step (all strings, the keys of `header`). before and after are the medians of
    the segments on either side; change and its interval are after/before - 1."""
    return [
        dict(
            zip(
                header(result),
                [
                    s.name,
                    s.case_id,
                    f"{s.hardware} ({s.machine_id})" if s.machine_id else s.hardware,
                    _commits(s),
                    f"{s.before:.4g}",
                    f"{s.after:.4g}",
                    _pct(s.change),
                    f"[{_pct(s.ci_low)}, {_pct(s.ci_high)}]",
                    s.direction,
                    f"{s.runs_before}/{s.runs_after}",
                    "<0.0001" if s.p < 1e-4 else f"{s.p:.4f}",
                ],
            )
        )
        for s in result.steps
    ]


def _num(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def to_json(result: HistoryResult) -> dict[str, Any]:
    """The history as a JSON-able object: options, summary, notes, one entry per series (its points' commits and
    values) and per step (case_id, mechanism, machine, commit_before, commit_after, change = after/before and its
    interval `change_interval`, p, runs on each side, direction)."""
    return {
        "schema": JSON_SCHEMA_ID,
        "metric": result.metric,
        "alpha": result.alpha,
        "across_hardware": result.across_hardware,
        "summary": result.summary(),
        "steps": [
            {
                "case_id": s.case_id,
                "name": s.name,
                "mechanism": s.mechanism,
                "machine_id": s.machine_id,
                "hardware": s.hardware,
                "commit_before": s.commit_before,
                "commit_after": s.commit_after,
                "commits_between": s.commits_between,
                "before": _num(s.before),
                "after": _num(s.after),
                "change": _num(s.change),
                "change_interval": [_num(s.ci_low), _num(s.ci_high)],
                "confidence": 1 - result.alpha,
                "p": _num(s.p),
                "runs_before": s.runs_before,
                "runs_after": s.runs_after,
                "direction": s.direction,
            }
            for s in result.steps
        ],
        "series": [
            {
                "case_id": s.case_id,
                "name": s.name,
                "machine_id": s.machine_id,
                "hardware": s.hardware,
                "unit": s.unit,
                "order": s.order,
                "points": [
                    {"commit": p.commit, "dirty": p.dirty, "started_at": p.started_at, "value": p.value}
                    for p in s.points
                ],
            }
            for s in result.series
        ],
        "notes": list(result.notes),
    }


def to_markdown(result: HistoryResult) -> str:
    """A Markdown table of the steps, the summary line and the notes."""
    shown = rows(result)
    lines = [f"### attnbench history: {result.metric}", "", result.summary() + "."]
    if shown:
        header = list(shown[0])
        lines += ["", "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        for r in shown:
            lines.append("| " + " | ".join(_md(r[h]) for h in header) + " |")
    if result.notes:
        lines += [""] + [f"- note: {_md(n)}" for n in result.notes]
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return " ".join(str(text).split()).replace("\\", "\\\\").replace("|", "\\|")


def plot_name(series: Series) -> str:
    """A file name for a series' plot: its case id and machine id, safe on every file system."""
    stem = f"{series.case_id}-{series.machine_id}" if series.machine_id else series.case_id
    return re.sub(r"[^\w.-]+", "_", stem)[:120] + ".png"


def flagged_series(result: HistoryResult) -> list[tuple[Series, list[Step]]]:
    """Each series with a step, with its steps (in the order of `result.series`)."""
    flagged: dict[tuple[str, str], list[Step]] = {}
    for step in result.steps:
        flagged.setdefault((step.case_id, step.machine_id), []).append(step)
    return [(s, flagged[(s.case_id, s.machine_id)]) for s in result.series if (s.case_id, s.machine_id) in flagged]


def series_figure(result: HistoryResult, s: Series, steps: list[Step]):
    """A matplotlib Figure of one series: each point's value (the median of its round medians) with its rounds'
    range as an error bar, the segment medians between steps as horizontal lines, each step as a dashed line,
    commits on the x axis (oldest left)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise HistoryError("plots need matplotlib: pip install 'attnbench[plot]'") from None
    fig = Figure(figsize=(max(6.4, 0.35 * len(s.points)), 4.4), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(s.points))
    values = np.array([p.value for p in s.points])
    low = values - np.array([p.rounds.min() for p in s.points])
    high = np.array([p.rounds.max() for p in s.points]) - values
    ax.errorbar(x, values, yerr=[low, high], fmt="o", ms=4, capsize=2, label="run (median, rounds' range)")
    cuts = [0, *(st.index for st in steps), len(values)]
    for a, b in zip(cuts, cuts[1:]):
        level = float(np.median(values[a:b]))
        ax.hlines(level, a - 0.4, b - 0.6, colors="tab:orange", linewidth=2)
    for st in steps:
        ax.axvline(st.index - 0.5, color="tab:red", linestyle="--", linewidth=1)
        ax.annotate(
            f"{st.change - 1:+.1%}", (st.index - 0.5, 1), xycoords=("data", "axes fraction"), va="top", ha="left"
        )
    ax.set_xticks(x, [p.label[:8] + ("+" if p.dirty else "") for p in s.points], rotation=60, fontsize=7)
    ax.set_xlabel("commit" if s.order == "commits" else "commit (ordered by run time)")
    ax.set_ylabel(f"{result.metric} ({s.unit})" if s.unit else result.metric)
    ax.set_title(f"{s.name} on {s.hardware}", fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    return fig


def write_plots(result: HistoryResult, folder: str | Path) -> list[Path]:
    """One PNG per series with a step (`series_figure`), named by `plot_name`."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise HistoryError(
            f"cannot create the plot folder {str(folder)[:200]!r}: {reason}; choose another --plot"
        ) from None
    written = []
    for s, steps in flagged_series(result):
        path = folder / plot_name(s)
        series_figure(result, s, steps).savefig(path, dpi=120)
        written.append(path)
    return written
