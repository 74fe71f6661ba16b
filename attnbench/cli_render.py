"""Terminal output of the CLI (rich): escaping user text, tables that fit the width, the run summary, live
progress and the gate's verdict table. The only module besides `cli_commands` that prints."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table as RichTable

console = Console()
err_console = Console(stderr=True)
MAX_SHOWN = 160  # characters of one user-supplied string on screen; longer ones are cut in the middle


# -- rendering --------------------------------------------------------------------------------------
def esc(value: Any, limit: int = MAX_SHOWN) -> str:
    """User or file text made safe for rich: control characters shown as escapes, cut to `limit`
    characters (a 100k-character name would stall the layout), then markup-escaped ("a[/]b" stays text).
    Every string rich renders that did not come from this module's own literals goes through here."""
    text = str(value)
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        text = "".join(c if 32 <= ord(c) != 127 else repr(c)[1:-1] for c in text)
    if len(text) > limit:
        half = (limit - 1) // 2
        text = f"{text[:half]}…{text[-half:]}"
    return escape(text)


def fit_tables(
    title: str,
    header: list[str],
    rows: list[list[str]],
    *,
    keep: int = 1,
    width: int | None = None,
    styles: list[str | None] | None = None,
    index_style: str | None = "cyan",
) -> list[RichTable]:
    """Tables of `rows` (plain strings) that fit `width` without cutting a number: the first `keep` columns
    are repeated in every table and may wrap; the other columns keep their full width, and when they do not
    all fit, they are stacked into further tables (title "(continued)")."""
    width = width or console.width
    cells = [[esc(c, 10_000) for c in r] for r in rows]
    heads = [esc(h) for h in header]
    need = [max([len(h)] + [len(r[i]) for r in cells]) + 3 for i, h in enumerate(heads)]
    lead = sum(min(n, 28) for n in need[:keep]) + 1
    groups: list[list[int]] = []
    for i in range(keep, len(heads)):
        if not groups or lead + sum(need[j] for j in groups[-1]) + need[i] > width:
            groups.append([])
        groups[-1].append(i)
    tables = []
    for g, cols in enumerate(groups or [[]]):
        shown = esc(title) if g == 0 else f"{esc(title)} (continued)"
        table = RichTable(
            title=f"[bold]{shown}[/]", title_justify="left", header_style="bold", min_width=min(len(title), width)
        )
        for i in range(keep):
            table.add_column(
                heads[i],
                style=index_style if i == 0 else None,
                overflow="fold",
                max_width=max(12, width - sum(need[j] for j in cols) - 2 * keep - 1),
            )
        for i in cols:
            table.add_column(heads[i], justify="right", no_wrap=True, min_width=need[i] - 3)
        for r, row in enumerate(cells):
            table.add_row(*[row[i] for i in range(keep)], *[row[i] for i in cols], style=styles[r] if styles else None)
        tables.append(table)
    return tables


def render_table(title: str, frame, index_name: str = "mechanism") -> RichTable:
    """One table of a pivot (first of `render_tables`; kept for callers that print one)."""
    return render_tables(title, frame, index_name)[0]


def render_tables(title: str, frame, index_name: str = "mechanism") -> list[RichTable]:
    rows = [[str(idx), *[str(v) for v in row.tolist()]] for idx, row in frame.iterrows()]
    return fit_tables(title, [index_name, *[str(c) for c in frame.columns]], rows)


def print_tables(tables: list[RichTable], out: Console | None = None) -> None:
    for table in tables:
        (out or console).print(table)


def print_table(table, out: Console | None = None, index_name: str | None = None) -> None:
    """A `Table` (attnbench.tables) with its notes (a legend) under it."""
    name = index_name if index_name is not None else (table.frame.index.name or "")
    print_tables(render_tables(table.title, table.frame, index_name=name), out)
    for note in table.notes:
        (out or console).print(esc(note, 2000))


def print_report(df, out: Console = console) -> None:
    from attnbench import summary

    for t in summary.summary_tables(df):
        print_table(t, out, index_name="mechanism")
    for t in summary.single_metric_tables(df):
        print_tables(render_tables(t.title, t.frame, index_name="mechanism [model]"), out)
    probs = summary.problems(df)
    if len(probs):
        table = RichTable(title="cases that did not run", title_justify="left", header_style="bold")
        for col in probs.columns:
            table.add_column(esc(col), overflow="fold")
        for _, row in probs.iterrows():
            table.add_row(*[esc(v, 400) for v in row.tolist()])
        out.print(table)
    counts = summary.status_counts(df)
    out.print("cases: " + ", ".join(f"{esc(k)} {v}" for k, v in sorted(counts.items())))
    contended = summary.contended_line(df)
    if contended:
        out.print(f"[yellow]{esc(contended, 2000)}[/]")


class RichProgress:
    """Live progress: done/total, current case, elapsed and ETA."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
            disable=not enabled,
        )
        self.task = None

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        self.bar.__exit__(*exc)

    def start(self, total: int, resumed: int) -> None:
        self.task = self.bar.add_task("starting", total=total, completed=resumed)
        self.round = ""
        if resumed:
            self.bar.console.print(f"resuming: {resumed} of {total} case-rounds already measured")

    def notice(self, text: str, warn: bool = False) -> None:
        self.bar.console.print(f"[yellow]warning[/]: {esc(text, 400)}" if warn else esc(text, 400))

    def round_start(self, index: int, rounds: int) -> None:
        self.round = f"round {index + 1}/{rounds} " if rounds > 1 else ""

    def case_start(self, index: int, case) -> None:
        self.bar.update(self.task, description=esc(self.round + case.label(), 80))

    def case_end(self, index: int, case, status: str, rows: list[dict[str, Any]]) -> None:
        self.bar.update(self.task, completed=index)
        if status not in ("ok", "skipped"):
            msg = rows[0].get("message", "") if rows else ""
            self.bar.console.print(f"[yellow]{esc(status)}[/]: {esc(case.label())}: {esc(msg, 400)}")
        elif status == "ok":  # a case whose profile failed keeps its rows; the message says why it has no profile
            from attnbench.profiling import PROFILE_FAILED

            failed = [m for r in rows for m in str(r.get("message") or "").split("; ") if m.startswith(PROFILE_FAILED)]
            if failed:
                self.bar.console.print(f"[yellow]note[/]: {esc(case.label())}: {esc(failed[0], 400)}")


def print_gate(result, out: Console = console) -> None:
    from attnbench.gate import format_rows

    rows = format_rows(result)
    colours = {"regression": "red", "improvement": "green", "too_few_rounds": "yellow", "unsteady": "yellow"}
    title = (
        f"gate: {result.metric}, threshold {result.threshold:.1%}, alpha {result.alpha:g} "
        "(Welch t on log round medians, Holm-corrected)"
    )
    if rows:
        header = list(rows[0])
        if out.width < 120 and "id" in header:  # the case id is the least readable column: dropped when narrow
            header.remove("id")
        cells = [[str(row[c]) for c in header] for row in rows]
        styles = [colours.get(row.get("verdict", "")) for row in rows]
        print_tables(fit_tables(title, header, cells, styles=styles, index_style=None, width=out.width), out)
    for note in result.notes:
        out.print(f"note: {esc(note, 2000)}")
    if not result.has_verdict:
        err_console.print(f"attnbench: warning: {esc(result.summary(), 2000)}; nothing was decided (exit 0)")
    out.print(esc(result.summary(), 2000))
