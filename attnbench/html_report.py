"""`attnbench report FILES --html OUT.html`: one self-contained HTML file (no server, no network).

Everything is inline: the style, one small script, the figures as SVG (`attnbench.figures.svg`) and the
tables as HTML tables. A Content-Security-Policy in the page forbids loading anything from elsewhere, and the
page holds no URL. The script records any script error or blocked load in attributes of <html>
(`data-errors`: their count, `data-error-text`: their messages) and sets `data-ready="1"` once the page has
loaded, so that a headless browser can check the page (tests/test_html.py does).

The builder, `HtmlReport`, is a list of sections; a caller appends one with a call:

    page = HtmlReport("Resolution sweep on CPU", subtitle="results/resolution-cpu.csv")
    sec = page.add_section("History", text="Median latency per commit.", anchor="history")
    sec.add_figure(svg_text, "Latency of rala_eager per commit; change points dashed")
    sec.add_table(frame, "Change points")  # a DataFrame, an attnbench.tables.Table or a PivotTable
    page.add_section("Notes", text="...", figures=[(svg_text, caption)], table=frame, caption="...")
    page.write("report.html")  # or page.render() -> str

`add_section(title, *, text="", figures=(), table=None, caption="", level=2, anchor=None)` returns the
`Section`, whose `add_text`, `add_figure(svg, caption)` and `add_table(table, caption="")` append in order;
sections at level 2 are listed in the page's contents. `figure_svg(plot)` turns an `attnbench.figures.Plot`
into the SVG text that `add_figure` takes. Text is escaped; SVG is inserted as given (ids made unique per
figure), so it must come from a trusted drawing (matplotlib's).

`report_html(parts, runs, ...)` assembles what `report` shows: per results file (or all files together when
no case is in two of them) the latency, peak-memory and speed-up tables with their figures, the crossover,
scaling and Pareto tables, the cases that did not run, and the environment of each run. When the files come
from several machines (their env files name different hardware), each figure has one panel per machine.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from attnbench.errors import AttnbenchError

_CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:"
_STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1180px;
       padding: 0 1.2em; color: #1b1b1b; }
h1 { font-size: 1.7em; margin-bottom: 0.2em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
h3 { margin-top: 1.5em; font-size: 1.05em; }
.subtitle { color: #555; margin-top: 0; }
nav ul { columns: 2; padding-left: 1.2em; }
table { border-collapse: collapse; margin: 0.4em 0 1em; font-size: 0.88em; }
figure.table figcaption { font-weight: 600; max-width: 70em; }
th, td { padding: 0.22em 0.7em; border-bottom: 1px solid #e3e3e3; vertical-align: top; }
thead th { border-bottom: 2px solid #999; text-align: right; } tbody th { text-align: left; font-weight: 500; }
td { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.text { text-align: left; white-space: normal; }
tbody tr:hover { background: #f4f7fb; }
.notes { font-size: 0.85em; color: #555; margin-top: -0.5em; }
figure { margin: 1em 0 2em; } figure svg { max-width: 100%; height: auto; }
figcaption { font-size: 0.9em; color: #333; }
.scroll { overflow-x: auto; }
"""
_SCRIPT = """
(function () {
  var root = document.documentElement, seen = [];
  function note(text) {
    seen.push(String(text)); root.dataset.errors = String(seen.length); root.dataset.errorText = seen.join(" | ");
  }
  root.dataset.errors = "0";
  window.addEventListener("error", function (e) { note(e.message || ("failed to load " + e.target)); }, true);
  window.addEventListener("unhandledrejection", function (e) { note("unhandled rejection: " + e.reason); });
  document.addEventListener("securitypolicyviolation", function (e) { note("blocked: " + e.blockedURI); });
  var error = console.error;
  console.error = function () { note(Array.prototype.join.call(arguments, " ")); error.apply(console, arguments); };
  window.addEventListener("load", function () {
    root.dataset.figures = String(document.querySelectorAll("figure svg").length);
    root.dataset.tables = String(document.querySelectorAll("table").length);
    root.dataset.ready = "1";
  });
})();
"""


class HtmlReportError(AttnbenchError):
    """An HTML report that cannot be written (an unwritable path)."""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _anchor(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "section"


def _scoped(svg: str, prefix: str) -> str:
    """`svg` with its ids (and the references to them) prefixed, so that figures of one page never share an id."""
    ids = set(re.findall(r'\bid="([^"]+)"', svg))
    if not ids:
        return svg
    pattern = re.compile(r'(\bid="|#)(' + "|".join(re.escape(i) for i in sorted(ids, key=len, reverse=True)) + r")\b")
    return pattern.sub(lambda m: f"{m.group(1)}{prefix}-{m.group(2)}", svg)


def table_html(table: Any, caption: str = "") -> str:
    """A <table> of a DataFrame (its index as row headers when named or not a plain range), an
    `attnbench.tables.Table` or a PivotTable (formatted), with `caption` (default: the table's words caption)."""
    from attnbench import tables

    notes: tuple[str, ...] = ()
    if not isinstance(table, pd.DataFrame):
        caption = caption or tables.caption(table)
        t = tables.as_table(table)
        frame, notes = t.frame, t.notes
    else:
        frame = table
    show_index = frame.index.name is not None or not isinstance(frame.index, pd.RangeIndex)
    head = ([_esc(frame.index.name or "")] if show_index else []) + [_esc(c) for c in frame.columns]
    lines = ['<figure class="table">']
    if caption:
        lines.append(f"<figcaption>{_esc(caption)}</figcaption>")
    lines.append('<div class="scroll"><table>')
    lines.append("<thead><tr>" + "".join(f'<th scope="col">{h}</th>' for h in head) + "</tr></thead><tbody>")
    for idx, row in zip(frame.index, frame.itertuples(index=False)):
        cells = [f'<th scope="row">{_esc(idx)}</th>'] if show_index else []
        for v in row:
            txt = "" if v is None or (isinstance(v, float) and pd.isna(v)) else str(v)
            numeric = bool(re.fullmatch(r"[-+0-9.,e ±%\[\]x†*]*", txt))
            cells.append(f"<td>{_esc(txt)}</td>" if numeric else f'<td class="text">{_esc(txt)}</td>')
        lines.append("<tr>" + "".join(cells) + "</tr>")
    lines.append("</tbody></table></div>")
    lines += [f'<p class="notes">{_esc(n)}</p>' for n in notes]
    lines.append("</figure>")
    return "\n".join(lines)


@dataclass
class Section:
    """A heading and its blocks (paragraphs, figures, tables) in the order they were added."""

    title: str
    level: int = 2
    anchor: str = ""
    blocks: list[str] = field(default_factory=list)
    _figures: int = 0

    def add_text(self, text: str) -> Section:
        """A paragraph of plain text (escaped)."""
        if text:
            self.blocks.append(f"<p>{_esc(text)}</p>")
        return self

    def add_figure(self, svg: str, caption: str = "") -> Section:
        """An inline SVG figure (matplotlib's, e.g. `figure_svg(plot)`) with its caption in words."""
        self._figures += 1
        body = _scoped(svg, f"{self.anchor}-f{self._figures}")
        cap = f"<figcaption>{_esc(caption)}</figcaption>" if caption else ""
        self.blocks.append(f"<figure>{body}{cap}</figure>")
        return self

    def add_table(self, table: Any, caption: str = "") -> Section:
        """A table: a DataFrame, an attnbench.tables.Table or a PivotTable (see `table_html`)."""
        self.blocks.append(table_html(table, caption))
        return self

    def render(self) -> str:
        tag = f"h{min(max(self.level, 2), 4)}"
        return (
            f'<section id="{_esc(self.anchor)}">\n<{tag}>{_esc(self.title)}</{tag}>\n'
            + "\n".join(self.blocks)
            + ("\n</section>")
        )


class HtmlReport:
    """A self-contained HTML page made of sections (see the module docstring for the API)."""

    def __init__(self, title: str, subtitle: str = ""):
        self.title = title
        self.subtitle = subtitle
        self.sections: list[Section] = []

    def add_section(
        self,
        title: str,
        *,
        text: str = "",
        figures: Sequence[tuple[str, str]] = (),
        table: Any = None,
        caption: str = "",
        level: int = 2,
        anchor: str | None = None,
    ) -> Section:
        """Append a section: `text` (a paragraph), `figures` ((svg, caption) pairs), then `table` with `caption`."""
        taken = {s.anchor for s in self.sections}
        base = anchor or _anchor(title)
        name, n = base, 1
        while name in taken:
            n += 1
            name = f"{base}-{n}"
        sec = Section(title, level, name)
        sec.add_text(text)
        for svg, cap in figures:
            sec.add_figure(svg, cap)
        if table is not None:
            sec.add_table(table, caption)
        self.sections.append(sec)
        return sec

    def render(self) -> str:
        from attnbench import __version__

        toc = "".join(
            f'<li><a href="#{_esc(s.anchor)}">{_esc(s.title)}</a></li>' for s in self.sections if s.level <= 2
        )
        parts = [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f'<meta name="generator" content="attnbench {_esc(__version__)}">',
            f"<title>{_esc(self.title)}</title>",
            f"<script>{_SCRIPT}</script>",
            f"<style>{_STYLE}</style>",
            "</head>",
            "<body>",
            f"<h1>{_esc(self.title)}</h1>",
        ]
        if self.subtitle:
            parts.append(f'<p class="subtitle">{_esc(self.subtitle)}</p>')
        if toc:
            parts.append(f"<nav><ul>{toc}</ul></nav>")
        parts += [s.render() for s in self.sections]
        parts += [
            f'<footer><p class="subtitle">Made by attnbench {_esc(__version__)}.</p></footer>',
            "</body>",
            "</html>",
        ]
        return "\n".join(parts) + "\n"

    def write(self, path: str | Path) -> Path:
        out = Path(path)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(self.render(), encoding="utf-8")
        except OSError as exc:
            raise HtmlReportError(
                f"cannot write {str(out)[:200]!r}: {exc.strerror or exc}; choose another --html path"
            ) from None
        return out


def figure_svg(plot: Any) -> str:
    """The inline SVG of an `attnbench.figures.Plot`."""
    from attnbench import figures

    return figures.svg(plot)


# -- what `report --html` shows ------------------------------------------------------------------------
def run_hardware_column(path: str, df: pd.DataFrame) -> pd.Series:
    """Per row of results file `path`, the hardware its env file names for the row's env_id ('' unknown)."""
    from attnbench.compare import hardware_label, read_env

    envs = read_env(Path(path))
    labels = {k: hardware_label(v) for k, v in envs.items() if isinstance(v, Mapping)}
    return df["env_id"].map(lambda e: labels.get(e, "")).astype(object) if "env_id" in df else pd.Series("", df.index)


def _environment(path: str, df: pd.DataFrame) -> pd.DataFrame:
    from attnbench.compare import env_summary, read_env

    env = env_summary(df, read_env(Path(path)))
    when = df["started_at"].dropna().astype(str) if "started_at" in df else pd.Series(dtype=str)
    extra = {
        "suite": ", ".join(dict.fromkeys(df["suite"].dropna().astype(str))) if "suite" in df else "",
        "runs": str(df["run_id"].nunique()) if "run_id" in df else "",
        "cases": str(df["case_id"].nunique()),
        "started": f"{when.min()} to {when.max()}" if len(when) else "",
    }
    rows = {**extra, **env} if env else {**extra, "environment": f"no {Path(path).name[:-4]}.env.json beside it"}
    return pd.DataFrame({"value": list(rows.values())}, index=pd.Index(list(rows), name="property"))


def _plots_svg(plots: list) -> list[tuple[str, str]]:
    return [(figure_svg(p), p.title) for p in plots]


def report_html(
    parts: list[tuple[str, pd.DataFrame, Any]],
    runs: list[tuple[str, pd.DataFrame, Any]],
    *,
    baseline: str | None = None,
    crossover: tuple[str, str] | None = None,
    min_tokens: int | None = None,
    title: str = "",
    history: Any = None,
) -> HtmlReport:
    """The page `report --html` writes. `runs`: (path, rows, samples) of each file; `parts`: what is reported
    as one (report's _report_parts: label '' for all files together, else the file's path); `history`: an
    `attnbench.history.HistoryResult` shown as a section before the environment (`add_history`)."""
    from attnbench import figures, summary, tables
    from attnbench.analysis import PivotTable

    paths = [p for p, _, _ in runs]
    page = HtmlReport(title or "attnbench report", "Results: " + ", ".join(paths))
    hardware = {p: run_hardware_column(p, df) for p, df, _ in runs}
    machines = sorted({h for col in hardware.values() for h in col if h})
    faceted = len(machines) > 1
    overview = pd.DataFrame(
        [
            {
                "file": p,
                "hardware": " + ".join(sorted({h for h in hardware[p] if h})) or "?",
                "cases": df["case_id"].nunique(),
                **summary.status_counts(df),
            }
            for p, df, _ in runs
        ]
    ).fillna(0)
    sec = page.add_section("Overview", table=overview.set_index("file"), caption="The results files and their cases")
    if faceted:
        sec.add_text(f"The files come from {len(machines)} machines: each figure has one panel per machine.")
    per_part = []
    for label, df, samples in parts:
        if df.empty:
            continue
        made = tables.report_tables(df, baseline=baseline, crossover=crossover, samples=samples, min_tokens=min_tokens)
        per_part.append((label, df, made))
    if faceted:
        combined = pd.concat([df.assign(hardware=hardware[p]) for p, df, _ in runs], ignore_index=True)
        by_machine: dict[str, list] = {}
        for p, _, s in runs:
            for h in set(hardware[p]):
                if s is not None:
                    by_machine.setdefault(h, []).append(s)
        samples_by = {h: pd.concat(v, ignore_index=True) for h, v in by_machine.items()}
        plot_sets = [("", figures.report_plots(combined, baseline=baseline, samples=samples_by, min_tokens=min_tokens))]
    else:
        plot_sets = [
            (label, figures.report_plots(df, baseline=baseline, samples=s, min_tokens=min_tokens, facet=None))
            for label, df, s in parts
            if not df.empty
        ]
    kinds = [("latency", "Latency"), ("peak_memory", "Peak memory"), ("speedup", f"Speed-up over {baseline}")]
    for metric, heading in kinds:
        shown = [
            (lbl, [t for t in made if isinstance(t, PivotTable) and t.metric == metric]) for lbl, _, made in per_part
        ]
        plots = [(lbl, [p for p in ps if p.metric == metric]) for lbl, ps in plot_sets]
        if not any(t for _, t in shown) and not any(p for _, p in plots):
            continue
        sec = page.add_section(heading, anchor=metric)
        for lbl, ps in plots:
            for svg, cap in _plots_svg(ps):
                sec.add_figure(svg, (f"{lbl}: " if lbl else "") + cap)
        for lbl, ts in shown:
            for t in ts:
                sec.add_table(t, (f"{lbl}: " if lbl else "") + tables.caption(t))
    for key, heading in (("crossover", "Crossover"), ("scaling", "Scaling exponents"), ("pareto", "Accuracy and cost")):
        shown = [
            (lbl, t)
            for lbl, _, made in per_part
            for t in made
            if not isinstance(t, PivotTable) and t.key.startswith(key)
        ]
        if shown:
            sec = page.add_section(heading, anchor=key)
            for lbl, t in shown:
                sec.add_table(t, (f"{lbl}: " if lbl else "") + tables.caption(t))
    singles = [(lbl, t) for lbl, df, _ in per_part for t in summary.single_metric_tables(df)]
    if singles:
        sec = page.add_section("Model and rank metrics", anchor="metrics")
        for lbl, t in singles:
            sec.add_table(t.frame.rename_axis("mechanism [model]"), (f"{lbl}: " if lbl else "") + t.title)
    problems = [(lbl, summary.problems(df)) for lbl, df, _ in per_part]
    if any(len(p) for _, p in problems):
        sec = page.add_section("Cases that did not run", anchor="problems")
        for lbl, p in problems:
            if len(p):
                sec.add_table(p, (f"{lbl}: " if lbl else "") + "Each distinct reason a case did not run")
    if history is not None:
        add_history(page, history)
    sec = page.add_section("Environment", anchor="environment")
    for p, df, _ in runs:
        sec.add_table(_environment(p, df), f"{p}: where and with what the run was measured")
    return page


def add_history(page: HtmlReport, result: Any) -> Section:
    """A "History" section from an `attnbench.history.HistoryResult`: what was searched, the table of change
    points (`attnbench.history_report.rows`), one figure per series with a step, and the history's notes."""
    from attnbench import figures, history_report

    n_steps, n_series = len(result.steps), len(result.series)
    text = (
        f"{n_series} series of {result.metric} over commits (one per case and machine); "
        f"{n_steps} change point{'s' if n_steps != 1 else ''} at alpha {result.alpha:g} (as `attnbench history` "
        "finds them: PELT on noise-scaled log values, each step kept only where a t test between its neighbouring "
        "segments holds)."
    )
    sec = page.add_section("History", text=text, anchor="history")
    if n_steps:
        frame = pd.DataFrame(history_report.rows(result)).set_index("case")
        sec.add_table(frame, "Change points: the medians before and after each step and the change after/before")
    for series, steps in history_report.flagged_series(result):
        caption = (
            f"{result.metric} of {series.name} on {series.hardware} per commit: runs with their rounds' range, "
            "segment medians (orange) and change points (dashed)"
        )
        figure = history_report.series_figure(result, series, steps)
        sec.add_figure(
            figure_svg(figures.Plot(history_report.plot_name(series), caption, figure, {}, result.metric)), caption
        )
    for note in result.notes:
        sec.add_text(note)
    return sec
