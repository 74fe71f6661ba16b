"""Command line: run | list | suite-keys | report | compare | gate | ab | env. rich output lives here only.

User errors (AttnbenchError) print one line and exit non-zero (2) without a traceback;
`--debug` shows tracebacks.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table as RichTable

from attnbench.errors import AttnbenchError

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


def fit_tables(title: str, header: list[str], rows: list[list[str]], *, keep: int = 1, width: int | None = None,
               styles: list[str | None] | None = None, index_style: str | None = "cyan") -> list[RichTable]:
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
        shown = (esc(title) if g == 0 else f"{esc(title)} (continued)")
        table = RichTable(title=f"[bold]{shown}[/]", title_justify="left", header_style="bold",
                          min_width=min(len(title), width))  # fmt: skip
        for i in range(keep):
            table.add_column(heads[i], style=index_style if i == 0 else None, overflow="fold",
                             max_width=max(12, width - sum(need[j] for j in cols) - 2 * keep - 1))  # fmt: skip
        for i in cols:
            table.add_column(heads[i], justify="right", no_wrap=True, min_width=need[i] - 3)
        for r, row in enumerate(cells):
            table.add_row(*[row[i] for i in range(keep)], *[row[i] for i in cols],
                          style=styles[r] if styles else None)  # fmt: skip
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


def print_report(df, out: Console = console) -> None:
    from attnbench import summary

    for t in summary.summary_tables(df):
        print_tables(render_tables(t.title, t.frame), out)
    single = ("params", "macs", "macs_with_attn", "flops", "flops_counted", "top1", "top5", "kv_rank", "kv_erank",
              "out_rank", "out_erank")  # fmt: skip
    model_or_rank = df[df["level"].eq("model") | df["metric"].isin(("kv_erank", "out_erank"))]
    for t in summary.metric_tables(model_or_rank, single):
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

    def round_start(self, index: int, rounds: int) -> None:
        self.round = f"round {index + 1}/{rounds} " if rounds > 1 else ""

    def case_start(self, index: int, case) -> None:
        self.bar.update(self.task, description=esc(self.round + case.label(), 80))

    def case_end(self, index: int, case, status: str, rows: list[dict[str, Any]]) -> None:
        self.bar.update(self.task, completed=index)
        if status not in ("ok", "skipped"):
            msg = rows[0].get("message", "") if rows else ""
            self.bar.console.print(f"[yellow]{esc(status)}[/]: {esc(case.label())}: {esc(msg, 400)}")


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

    overrides = list(args.set or []) + ([f"rounds={args.rounds}"] if args.rounds is not None else [])
    suite = load_suite(args.suite, overrides)
    if args.resume and not args.out:
        raise AttnbenchError("--resume needs --out FILE.csv naming the run to continue")
    out = results.check_out_path(args.out if args.out else default_out(suite))
    console.print(f"suite [bold]{esc(suite.name)}[/] on {suite.device} -> {esc(out)}")
    if args.dry_run:
        from attnbench.plan import plan

        cases = plan(suite)
        skipped = sum(c.skip is not None for c in cases)
        console.print(f"{len(cases)} cases ({skipped} skipped by the plan), {suite.rounds} rounds; "
                      "nothing run (--dry-run)")  # fmt: skip
        return 0
    _warn_if_busy(suite.device)
    if suite.rounds > 1 and suite.isolation == "inprocess" and "latency" in suite.metrics:
        console.print(f"[yellow]warning[/]: isolation: inprocess runs all {suite.rounds} rounds in this process: "
                      "their spread misses between-process noise, so `gate` on this run can fail identical code; "
                      "use isolation: auto or process")  # fmt: skip
    from attnbench.executors import make_executor

    executor = make_executor(suite, executor=args.executor, workers=args.workers, address=args.address)
    t0 = time.perf_counter()
    with RichProgress(enabled=not args.no_progress) as progress:
        try:
            summary = run_suite(suite, out, resume=args.resume, progress=progress, debug=args.debug,
                                executor=executor)  # fmt: skip
        except KeyboardInterrupt:
            err_console.print(f"interrupted: rows measured so far are in {esc(out)}; continue with --resume --out "
                              f"{esc(out)}")  # fmt: skip
            return 130
    rounds = f" x {summary.rounds} rounds" if summary.rounds > 1 else ""
    console.print(f"{summary.total} cases{rounds} in {time.perf_counter() - t0:.1f} s; rows in {esc(out)}")
    print_report(results.load(out))
    return 0


def cmd_list(args) -> int:
    from attnbench import registry
    from attnbench.suite import resolve_device

    if args.plugin:
        registry.load_plugins(args.plugin)
    device = resolve_device(args.device)
    names = registry.names(family=args.family)
    if args.family and not names:
        raise AttnbenchError(f"no mechanisms in family {args.family[:60]!r} (families: "
                             f"{', '.join(registry.families())})")  # fmt: skip
    table = RichTable(title=f"mechanisms (availability on {esc(device)})", title_justify="left", header_style="bold")
    narrow = console.width < 100  # levels, dtypes and upstream are dropped rather than squeezed
    columns = ("name", "family", "backend", "available / reason") if narrow else (
        "name", "family", "backend", "levels", "dtypes", "checked against", "available / reason")
    for col in columns:
        table.add_column(col, overflow="fold", no_wrap=col not in ("available / reason", "checked against"))
    n_ok = 0
    for name in names:
        mech = registry.get(name)
        ok, reason = mech.available(device)
        n_ok += ok
        cells = [esc(name), esc(mech.family), esc(mech.backend)]
        if not narrow:
            cells += [esc(",".join(mech.levels)), esc(",".join(mech.dtypes)), esc(getattr(mech, "upstream", "") or "")]
        table.add_row(*cells, "[green]yes[/]" if ok else f"[red]no[/]: {esc(reason, 400)}")
    console.print(table)
    console.print(f"{n_ok} of {len(names)} available on {esc(device)}")
    return 0


def cmd_suite_keys(args) -> int:
    """The key reference generated from the suite schema (attnbench/suite_schema.py)."""
    from attnbench.suite_schema import key_reference

    rows = key_reference()
    header = ["key", "type", "default", "allowed", "meaning"]
    if args.format == "md":
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
        lines += ["| " + " | ".join(r[h].replace("|", "\\|") for h in header) + " |" for r in rows]
        print("\n".join(lines))
        return 0
    table = RichTable(title="suite keys (a sweep axis takes a scalar or a list)", title_justify="left",
                      header_style="bold")  # fmt: skip
    for h in header:
        table.add_column(h, overflow="fold", style="cyan" if h == "key" else None, no_wrap=h == "key")
    for r in rows:
        table.add_row(*[esc(r[h], 400) for h in header])
    console.print(table)
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
    from attnbench import export, tables

    if args.crossover and args.crossover[0] == args.crossover[1]:
        raise AttnbenchError(f"--crossover needs two different mechanisms, got {args.crossover[0][:60]!r} twice")
    if args.min_tokens is not None and args.min_tokens < 0:
        raise AttnbenchError(f"--min-tokens must be >= 0, got {args.min_tokens}")
    df, samples = _load_many(args.files)
    crossover = tuple(args.crossover) if args.crossover else None
    extra = tables.report_tables(df, baseline=args.baseline, crossover=crossover, samples=samples,
                                 min_tokens=args.min_tokens)  # fmt: skip
    if args.format == "term":
        from attnbench.analysis import PivotTable

        print_report(df)  # latency/memory pivots with status cells, model metrics, problems
        for t in extra:
            if isinstance(t, PivotTable) and t.metric in ("latency", "peak_memory"):
                continue  # already shown by print_report
            t = tables.as_table(t)
            print_tables(render_tables(t.title, t.frame, index_name=t.frame.index.name or ""))
    elif args.format == "md":
        print("\n\n".join(export.to_markdown(t) for t in extra))
    elif args.format == "latex":
        print("\n\n".join(export.to_latex(t) for t in extra))
    else:
        sys.stdout.write(export.to_csv(extra))
    if args.plot:
        try:
            Path(args.plot).mkdir(parents=True, exist_ok=True)
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            raise AttnbenchError(f"cannot create the plot folder {args.plot[:200]!r}: {reason}; choose another --plot"
                                 ) from None  # fmt: skip
        paths = export.write_plots(df, args.plot, baseline=args.baseline, samples=samples, min_tokens=args.min_tokens)
        err_console.print(f"wrote {len(paths)} plot files to {esc(args.plot)}")
        for path in paths:
            err_console.print(f"  {esc(path)}")
    return 0


def cmd_compare(args) -> int:
    from attnbench import compare, results, tables

    for path in (args.a, args.b):
        metrics = set(results.load(path)["metric"])
        if args.metric not in metrics:
            raise AttnbenchError(f"{path} has no {args.metric[:60]!r} rows (it has: {', '.join(sorted(metrics))}); "
                                 "check --metric")  # fmt: skip
    frame, meta = compare.compare_runs(args.a, args.b, metric=args.metric, across_hardware=args.across_hardware)
    for t in compare.comparison_tables(frame, meta):
        t = tables.as_table(t)
        print_tables(render_tables(t.title, t.frame, index_name=t.frame.index.name or ""))
    console.print(esc(meta.summary(), 2000))
    for note in meta.notes:
        console.print(f"note: {esc(note, 2000)}")
    return 0


def gate_sides(args) -> tuple[list[str], list[str]]:
    """BASELINE NEW, or A1 A2 ... -- B1 B2 ... (several files per side), or --baseline/--new lists."""
    files = list(args.files or [])
    base, new = list(args.baseline or []), list(args.new or [])
    if new and not base:  # `A1 A2 -- B1 B2` arrives as files=[A1, A2], new=[B1, B2] (see main)
        base, files = files, []
    elif base and not new:
        new, files = files, []
    if files:
        if len(files) != 2 or base or new:
            raise AttnbenchError("gate takes BASELINE NEW, or several files per side as A1 A2 -- B1 B2")
        base, new = [files[0]], [files[1]]
    if not base or not new:
        raise AttnbenchError("gate needs files on both sides: BASELINE NEW, or A1 A2 -- B1 B2")
    return base, new


def print_gate(result, out: Console = console) -> None:
    from attnbench.gate import format_rows

    rows = format_rows(result)
    colours = {"regression": "red", "improvement": "green", "too_few_rounds": "yellow"}
    title = (f"gate: {result.metric}, threshold {result.threshold:.1%}, alpha {result.alpha:g} "
             "(Welch t on log round medians, Holm-corrected)")  # fmt: skip
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


def cmd_gate(args) -> int:
    from attnbench.gate import gate

    base, new = gate_sides(args)
    result = gate(base, new, threshold=args.threshold, alpha=args.alpha, metric=args.metric,
                  min_rounds=args.min_rounds, across_hardware=args.across_hardware,
                  absolute=args.absolute)  # fmt: skip
    print_gate(result)
    return result.exit_code


def cmd_ab(args) -> int:
    from attnbench import ab
    from attnbench.gate import gate

    plan = ab.prepare(args.suite, baseline=args.baseline, candidate=args.candidate, rounds=args.rounds,
                      out_dir=args.out, overrides=args.set or [])  # fmt: skip
    console.print(f"A (baseline) = {esc(plan.sides['A'].describe(), 400)}")
    console.print(f"B (candidate) = {esc(plan.sides['B'].describe(), 400)}")
    console.print(f"{plan.rounds} rounds per side in the order {' '.join(plan.order)} -> {esc(plan.out_dir, 400)}")
    try:
        files = ab.execute(plan, log=lambda line: console.print(esc(line, 400)))
    finally:
        ab.cleanup(plan)
    result = gate(files["A"], files["B"], threshold=args.threshold, alpha=args.alpha, metric="latency",
                  absolute=args.absolute)  # fmt: skip
    print_gate(result)
    return result.exit_code


def cmd_env(args) -> int:
    from attnbench.measure.env import env_id, fingerprint
    from attnbench.suite import resolve_device

    device = resolve_device(args.device)
    if device not in ("cpu", "cuda"):
        raise AttnbenchError(f"--device must be auto, cpu or cuda, got {device[:40]!r}")
    from types import SimpleNamespace

    from attnbench.runner import apply_precision_settings

    apply_precision_settings(SimpleNamespace(tf32=False))  # as every run does (tf32: false): the same env_id
    fp = fingerprint(device)
    console.print_json(json.dumps({"env_id": env_id(fp), **fp}, default=str))
    if args.probe:
        from attnbench.measure import peaks

        console.print(f"probing {esc(device)} peaks (copy bandwidth, dense matmul per dtype)...")
        result = peaks.get_or_probe(device, quick=args.quick, refresh=True)
        cached = peaks.cache_path(result["fingerprint"])
        table = RichTable(title=f"[bold]measured peaks on {esc(device)}[/] (cached: {esc(cached)})",
                          title_justify="left", header_style="bold")  # fmt: skip
        rows = peaks.table_rows(result)
        for col in rows[0]:
            table.add_column(col, overflow="fold")
        for row in rows:
            cells = ["" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v)) for v in row.values()]
            table.add_row(*[esc(c) for c in cells])
        console.print(table)
        console.print("runs on this environment now add frac_bandwidth / frac_flops rows")
    if args.stability is not None:
        from attnbench.measure.stability import probe

        if args.stability <= 0:
            raise AttnbenchError(f"--stability takes a positive number of seconds, got {args.stability:g}")
        console.print(f"timing a tiny op on the CPU for {args.stability:g} s, in windows...")
        result = probe(args.stability)
        console.print(esc(result.summary()))
        if not result.steady:
            console.print("timing on this machine moves between levels now: expect wide spreads and a gate that "
                          "needs more rounds (README, 'Calibration on this machine')")  # fmt: skip
    return 0


def _gate_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threshold", default="5%", help="slowdown that matters, e.g. 5%% or 0.05 (default 5%%)")
    p.add_argument("--alpha", type=float, default=0.05, help="family-wise significance level (Holm)")
    p.add_argument("--absolute", action="store_true",
                   help="judge changes as measured, without removing the run-wide shift (median over >= 8 cases)")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is the usage line plus one `attnbench: error: ...` line (exit 2)."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        sys.stderr.write(f"attnbench: error: {self.prog}: {message}; see {self.prog} --help\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="attnbench", description="Benchmark attention mechanisms for vision models.")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    r = sub.add_parser("run", help="run a suite: sweep, live progress, summary; rows appended to a CSV")
    r.add_argument("suite", help="suite YAML file (see suites/)")
    r.add_argument("--out", help="results CSV (default results/<suite>-<UTC timestamp>.csv)")
    r.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a suite key (value is YAML)")
    r.add_argument("--rounds", type=int, metavar="N",
                   help="measure timed cases in N rounds, each in a fresh worker process (suite key rounds, default 5)")
    r.add_argument("--resume", action="store_true", help="skip cases that already have rows in --out")
    r.add_argument("--workers", metavar="N|auto",
                   help="run cases on N isolated local workers, one per device (auto: one per visible GPU; "
                        "on CPU the cores are split between them)")
    r.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="ray: every (case ladder, round) is a Ray task (pip install 'attnbench[distributed]')")
    r.add_argument("--address", metavar="ADDR",
                   help="Ray cluster to join (e.g. head-node:6379 or auto); default: start a local Ray instance")
    r.add_argument("--no-progress", action="store_true", help="no live progress bar")
    r.add_argument("--dry-run", action="store_true", help="validate the suite and plan its cases; run nothing")
    r.set_defaults(func=cmd_run, needs_mechanisms=True)

    ls = sub.add_parser("list", help="list mechanisms with availability and the reason when unavailable")
    ls.add_argument("--family", help="only this family (softmax, rala, linear, ...)")
    ls.add_argument("--device", default="auto", help="device to check availability on (auto, cpu, cuda)")
    ls.add_argument("--plugin", action="append", help="also load this plugin module or .py file")
    ls.set_defaults(func=cmd_list, needs_mechanisms=True)

    keys = sub.add_parser("suite-keys", help="every suite key: type, default, allowed values, meaning")
    keys.add_argument("--format", choices=("term", "md"), default="term", help="terminal table or Markdown")
    keys.set_defaults(func=cmd_suite_keys)

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
    cmp_.add_argument("--across-hardware", action="store_true",
                      help="pair cases although the env files say A and B ran on different hardware")
    cmp_.set_defaults(func=cmd_compare)

    g = sub.add_parser("gate", help="fail (exit 1) when NEW is significantly slower than BASELINE",
                       usage="attnbench gate BASELINE NEW | A1 [A2 ...] -- B1 [B2 ...] [options]")
    g.add_argument("files", nargs="*", metavar="FILE",
                   help="results CSVs (with their .samples.csv) or pytest-benchmark JSONs (--benchmark-save-data); "
                        "BASELINE NEW, or several per side separated by --: each file's rounds count")
    g.add_argument("--baseline", nargs="+", metavar="FILE", help="baseline files (instead of the positional form)")
    g.add_argument("--new", nargs="+", metavar="FILE", help="new files (instead of the positional form)")
    _gate_options(g)
    g.add_argument("--metric", default="latency", help="metric to compare (default latency)")
    g.add_argument("--min-rounds", type=int, default=3,
                   help="rounds per side below which a case gets no verdict (default 3)")
    g.add_argument("--across-hardware", action="store_true",
                   help="gate although the env files say the sides ran on different hardware")
    g.set_defaults(func=cmd_gate)

    ab_ = sub.add_parser("ab", help="interleaved A/B on this machine: two trees, rounds A B B A ..., gate verdict")
    ab_.add_argument("suite", help="suite YAML file (both sides run it)")
    ab_.add_argument("--baseline", required=True, metavar="DIR|REV",
                     help="a checkout directory, or a git revision (checked out into a temporary worktree)")
    ab_.add_argument("--candidate", metavar="DIR|REV", help="the tree to test (default: this checkout)")
    ab_.add_argument("--rounds", type=int, default=6, help="rounds per side (default 6), in the order A B B A ...")
    ab_.add_argument("--out", metavar="DIR", help="folder for the per-round CSVs (default results/ab-<UTC>)")
    ab_.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a suite key on both sides")
    _gate_options(ab_)
    ab_.set_defaults(func=cmd_ab)

    e = sub.add_parser("env", help="print the environment fingerprint recorded with every row")
    e.add_argument("--device", default="auto")
    e.add_argument("--probe", action="store_true", help="measure copy bandwidth and matmul peaks (cached per env)")
    e.add_argument("--quick", action="store_true", help="smaller, faster probe")
    e.add_argument("--stability", type=float, nargs="?", const=8.0, metavar="SECONDS",
                   help="time a tiny op in 0.25 s windows (default 8 s) and say how steady timing is right now")
    e.set_defaults(func=cmd_env)
    return p


def _one_line_warnings(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings (e.g. a skipped bad line of a results file) as one `attnbench: warning: ...` line on stderr."""
    text = " ".join(str(message).split())
    try:
        (file or sys.stderr).write(f"attnbench: warning: {text[:2000]}\n")
    except (OSError, ValueError):
        pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if "gate" in argv and "--" in argv[argv.index("gate"):]:  # gate A1 A2 -- B1 B2: the sides' separator
        cut = argv.index("--", argv.index("gate"))
        argv[cut] = "--new"
    args = parser.parse_args(argv)
    previous = warnings.showwarning
    warnings.showwarning = _one_line_warnings
    try:
        if getattr(args, "needs_mechanisms", False):
            from attnbench.loading import load_mechanisms

            load_mechanisms()  # the program's one load of the built-in and installed mechanisms
        return int(args.func(args) or 0)
    except AttnbenchError as exc:
        if args.debug:
            raise
        message = " ".join(str(exc).split())
        err_console.print(f"attnbench: error: {message}", markup=False, highlight=False, soft_wrap=True)
        return exc.exit_code
    except BrokenPipeError:
        return 1
    except Exception as exc:  # a bug, not a user error: one line and exit 1 (--debug shows the traceback)
        if args.debug:
            raise
        detail = " ".join(str(exc).split())[:300]
        err_console.print(f"attnbench: internal error ({type(exc).__name__}: {detail}); this is a bug: rerun "
                          "with --debug and report the traceback", markup=False, highlight=False, soft_wrap=True)
        return 1
    finally:
        warnings.showwarning = previous


if __name__ == "__main__":
    sys.exit(main())
