"""Command line: run | list | report | compare | gate | env. rich output lives here and in report.

User errors (AttnbenchError) print one line and exit non-zero (2) without a traceback;
`--debug` shows tracebacks.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table as RichTable

from attnbench.errors import AttnbenchError

console = Console()
err_console = Console(stderr=True)


# -- rendering --------------------------------------------------------------------------------------
def render_table(title: str, frame, index_name: str = "mechanism") -> RichTable:
    table = RichTable(title=f"[bold]{title}[/]", title_justify="left", header_style="bold", min_width=len(title))
    widest = max([len(str(i)) for i in frame.index] + [len(index_name)])
    table.add_column(index_name, style="cyan", no_wrap=True, min_width=min(widest, 40))
    for col in frame.columns:
        table.add_column(escape(str(col)), justify="right")
    for idx, row in frame.iterrows():  # cells are data, not rich markup ("[ravlt_t@224]" must survive)
        table.add_row(escape(str(idx)), *[escape(str(v)) for v in row.tolist()])
    return table


def print_report(df, out: Console = console) -> None:
    from attnbench import report

    for t in report.summary_tables(df):
        out.print(render_table(t.title, t.frame))
    single = ("params", "macs", "flops", "flops_counted", "top1", "top5", "kv_rank", "kv_erank", "out_rank",
              "out_erank")  # fmt: skip
    model_or_rank = df[df["level"].eq("model") | df["metric"].isin(("kv_erank", "out_erank"))]
    for t in report.metric_tables(model_or_rank, single):
        out.print(render_table(t.title, t.frame, index_name="mechanism [model]"))
    probs = report.problems(df)
    if len(probs):
        table = RichTable(title="cases that did not run", title_justify="left", header_style="bold")
        for col in probs.columns:
            table.add_column(col, overflow="fold")
        for _, row in probs.iterrows():
            table.add_row(*[escape(str(v)) for v in row.tolist()])
        out.print(table)
    counts = report.status_counts(df)
    out.print("cases: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))


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
        if resumed:
            self.bar.console.print(f"resuming: {resumed} of {total} cases already have rows")

    def case_start(self, index: int, case) -> None:
        self.bar.update(self.task, description=case.label())

    def case_end(self, index: int, case, status: str, rows: list[dict[str, Any]]) -> None:
        self.bar.advance(self.task)
        if status not in ("ok", "skipped"):
            msg = rows[0].get("message", "") if rows else ""
            self.bar.console.print(f"[yellow]{status}[/]: {case.label()}: {escape(msg)}")


# -- commands ---------------------------------------------------------------------------------------
def _warn_if_busy(device: str) -> None:
    """CPU timings on a loaded machine are dominated by contention (OpenMP threads wait for cores)."""
    import os

    try:
        load = os.getloadavg()[0]
    except OSError:
        return
    cores = os.cpu_count() or 1
    if device == "cpu" and load > 0.5 * cores:
        # stdout, with the run's other information: stderr carries only errors
        console.print(f"[yellow]warning[/]: load average {load:.1f} on {cores} cores: CPU timings will include "
                      "contention (recorded as load_average_1m in the env file)")  # fmt: skip


def cmd_run(args) -> int:
    from attnbench import results
    from attnbench.runner import default_out, run_suite
    from attnbench.suite import load_suite

    suite = load_suite(args.suite, args.set or [])
    out = Path(args.out) if args.out else default_out(suite)
    if args.resume and not args.out:
        raise AttnbenchError("--resume needs --out FILE.csv naming the run to continue")
    console.print(f"suite [bold]{suite.name}[/] on {suite.device} -> {out}")
    _warn_if_busy(suite.device)
    t0 = time.perf_counter()
    with RichProgress(enabled=not args.no_progress) as progress:
        try:
            summary = run_suite(suite, out, resume=args.resume, progress=progress, debug=args.debug)
        except KeyboardInterrupt:
            err_console.print(f"interrupted: rows measured so far are in {out}; continue with --resume --out {out}")
            return 130
    console.print(f"{summary.total} cases in {time.perf_counter() - t0:.1f} s; rows in {out}")
    print_report(results.load(out))
    return 0


def cmd_list(args) -> int:
    from attnbench import registry
    from attnbench.suite import resolve_device

    registry.load_builtin()
    if args.plugin:
        registry.load_plugins(args.plugin)
    device = resolve_device(args.device)
    names = registry.names(family=args.family)
    if args.family and not names:
        raise AttnbenchError(f"no mechanisms in family {args.family!r} (families: {', '.join(registry.families())})")
    table = RichTable(title=f"mechanisms (availability on {device})", title_justify="left", header_style="bold")
    for col in ("name", "family", "backend", "levels", "dtypes", "checked against", "available / reason"):
        table.add_column(col, overflow="fold")
    n_ok = 0
    for name in names:
        mech = registry.get(name)
        ok, reason = mech.available(device)
        n_ok += ok
        table.add_row(name, mech.family, mech.backend, ",".join(mech.levels), ",".join(mech.dtypes),
                      escape(getattr(mech, "upstream", "") or ""),
                      "[green]yes[/]" if ok else f"[red]no[/]: {escape(reason)}")  # fmt: skip
    console.print(table)
    console.print(f"{n_ok} of {len(names)} available on {device}")
    return 0


def _load_many(paths: list[str]):
    import pandas as pd

    from attnbench import results

    frames, samples = [], []
    # a shell glob such as results/run-*.csv also matches the companion samples file: map it back
    paths = list(dict.fromkeys(p[: -len(".samples.csv")] + ".csv" if p.endswith(".samples.csv") else p
                               for p in paths))  # fmt: skip
    for path in paths:
        frames.append(results.load(path))
        if results.companion(path, "samples.csv").exists():
            samples.append(results.load_samples(path))
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    if df.empty:
        raise AttnbenchError(f"{', '.join(paths)} has no rows yet")
    return df, (pd.concat(samples, ignore_index=True) if samples else None)


def cmd_report(args) -> int:
    from attnbench import export

    df, samples = _load_many(args.files)
    crossover = tuple(args.crossover) if args.crossover else None
    extra = export.report_tables(df, baseline=args.baseline, crossover=crossover, samples=samples,
                                 min_tokens=args.min_tokens)  # fmt: skip
    if args.format == "term":
        from attnbench.analysis import PivotTable

        print_report(df)  # latency/memory pivots with status cells, model metrics, problems
        for t in extra:
            if isinstance(t, PivotTable) and t.metric in ("latency", "peak_memory"):
                continue  # already shown by print_report
            t = export.as_table(t)
            console.print(render_table(t.title, t.frame, index_name=t.frame.index.name or ""))
    elif args.format == "md":
        print("\n\n".join(export.to_markdown(t) for t in extra))
    elif args.format == "latex":
        print("\n\n".join(export.to_latex(t) for t in extra))
    else:
        sys.stdout.write(export.to_csv(extra))
    if args.plot:
        try:
            Path(args.plot).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AttnbenchError(f"cannot create the plot folder {args.plot}: {exc.strerror or exc}") from None
        paths = export.write_plots(df, args.plot, baseline=args.baseline, samples=samples, min_tokens=args.min_tokens)
        err_console.print(f"wrote {len(paths)} plot files to {args.plot}")
        for path in paths:
            err_console.print(f"  {path}")
    return 0


def cmd_compare(args) -> int:
    from attnbench import compare, export, results

    for path in (args.a, args.b):
        metrics = set(results.load(path)["metric"])
        if args.metric not in metrics:
            raise AttnbenchError(f"{path} has no {args.metric!r} rows (it has: {', '.join(sorted(metrics))}); "
                                 "check --metric")  # fmt: skip
    frame, meta = compare.compare_runs(args.a, args.b, metric=args.metric)
    for t in compare.comparison_tables(frame, meta):
        t = export.as_table(t)
        console.print(render_table(t.title, t.frame, index_name=t.frame.index.name or ""))
    console.print(meta.summary())
    for note in meta.notes:
        console.print(f"note: {note}")
    return 0


def cmd_gate(args) -> int:
    from attnbench.gate import format_rows, gate

    result = gate(args.baseline, args.new, threshold=args.threshold, alpha=args.alpha, metric=args.metric)
    rows = format_rows(result)
    colours = {"regression": "red", "improvement": "green", "too_few_samples": "yellow"}
    table = RichTable(title=f"[bold]gate: {args.metric}, threshold {result.threshold:.1%}, alpha {result.alpha:g} "
                      "(Mann-Whitney U, Holm-corrected)[/]", title_justify="left", header_style="bold")  # fmt: skip
    if rows:
        for col in rows[0]:
            table.add_column(col, overflow="fold")
        for row in rows:
            style = colours.get(row.get("verdict", ""))
            table.add_row(*[escape(str(v)) for v in row.values()], style=style)
        console.print(table)
    for note in result.notes:
        console.print(f"note: {note}")
    console.print(result.summary())
    return result.exit_code


def cmd_env(args) -> int:
    from attnbench.measure.env import env_id, fingerprint
    from attnbench.suite import resolve_device

    device = resolve_device(args.device)
    fp = fingerprint(device)
    console.print_json(json.dumps({"env_id": env_id(fp), **fp}, default=str))
    if args.probe:
        from attnbench.measure import peaks

        console.print(f"probing {device} peaks (copy bandwidth, dense matmul per dtype)...")
        result = peaks.get_or_probe(device, quick=args.quick, refresh=True)
        cached = peaks.cache_path(result["fingerprint"])
        table = RichTable(title=f"[bold]measured peaks on {device}[/] (cached: {cached})",
                          title_justify="left", header_style="bold")  # fmt: skip
        rows = peaks.table_rows(result)
        for col in rows[0]:
            table.add_column(col, overflow="fold")
        for row in rows:
            cells = ["" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v)) for v in row.values()]
            table.add_row(*[escape(c) for c in cells])
        console.print(table)
        console.print("runs on this environment now add frac_bandwidth / frac_flops rows")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="attnbench", description="Benchmark attention mechanisms for vision models.")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run a suite: sweep, live progress, summary; rows appended to a CSV")
    r.add_argument("suite", help="suite YAML file (see suites/)")
    r.add_argument("--out", help="results CSV (default results/<suite>-<UTC timestamp>.csv)")
    r.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a suite key (value is YAML)")
    r.add_argument("--resume", action="store_true", help="skip cases that already have rows in --out")
    r.add_argument("--no-progress", action="store_true", help="no live progress bar")
    r.set_defaults(func=cmd_run)

    ls = sub.add_parser("list", help="list mechanisms with availability and the reason when unavailable")
    ls.add_argument("--family", help="only this family (softmax, rala, linear, ...)")
    ls.add_argument("--device", default="auto", help="device to check availability on (auto, cpu, cuda)")
    ls.add_argument("--plugin", action="append", help="also load this plugin module or .py file")
    ls.set_defaults(func=cmd_list)

    rep = sub.add_parser("report", help="tables from saved results CSVs")
    rep.add_argument("files", nargs="+", help="results CSV files")
    rep.add_argument("--format", choices=("term", "md", "latex", "csv"), default="term",
                     help="terminal tables (default), Markdown, LaTeX (booktabs) or tidy CSV on stdout")
    rep.add_argument("--plot", metavar="DIR", help="also write PNG and PDF plots (latency/memory/speedup vs tokens)")
    rep.add_argument("--baseline", metavar="MECH", help="add speedup tables vs this mechanism")
    rep.add_argument("--crossover", nargs=2, metavar=("A", "B"), help="token count where A and B cross")
    rep.add_argument("--min-tokens", type=int, help="fit scaling exponents only at or above this token count")
    rep.set_defaults(func=cmd_report)

    cmp_ = sub.add_parser("compare", help="align two runs (two GPUs, two commits) and show ratios B/A")
    cmp_.add_argument("a", help="results CSV of run A")
    cmp_.add_argument("b", help="results CSV of run B")
    cmp_.add_argument("--metric", default="latency")
    cmp_.set_defaults(func=cmd_compare)

    g = sub.add_parser("gate", help="fail (exit 1) when NEW is significantly slower than BASELINE")
    g.add_argument("baseline",
                   help="results CSV (with its .samples.csv) or pytest-benchmark JSON (--benchmark-save-data)")
    g.add_argument("new", help="the same kind of file for the new run")
    g.add_argument("--threshold", default="5%", help="slowdown that matters, e.g. 5%% or 0.05 (default 5%%)")
    g.add_argument("--alpha", type=float, default=0.05, help="family-wise significance level (Holm)")
    g.add_argument("--metric", default="latency", help="metric to compare (default latency)")
    g.set_defaults(func=cmd_gate)

    e = sub.add_parser("env", help="print the environment fingerprint recorded with every row")
    e.add_argument("--device", default="auto")
    e.add_argument("--probe", action="store_true", help="measure copy bandwidth and matmul peaks (cached per env)")
    e.add_argument("--quick", action="store_true", help="smaller, faster probe")
    e.set_defaults(func=cmd_env)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except AttnbenchError as exc:
        if args.debug:
            raise
        err_console.print(f"attnbench: error: {exc}", markup=False, highlight=False, soft_wrap=True)
        return exc.exit_code
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
