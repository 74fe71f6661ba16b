"""Command line: run | list | report | compare | gate | ab | env. rich output lives here and in report.

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
    single = ("params", "macs", "macs_with_attn", "flops", "flops_counted", "top1", "top5", "kv_rank", "kv_erank",
              "out_rank", "out_erank")  # fmt: skip
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
        self.round = ""
        if resumed:
            self.bar.console.print(f"resuming: {resumed} of {total} case-rounds already measured")

    def round_start(self, index: int, rounds: int) -> None:
        self.round = f"round {index + 1}/{rounds} " if rounds > 1 else ""

    def case_start(self, index: int, case) -> None:
        self.bar.update(self.task, description=escape(self.round + case.label()))

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

    overrides = list(args.set or []) + ([f"rounds={args.rounds}"] if args.rounds is not None else [])
    suite = load_suite(args.suite, overrides)
    out = Path(args.out) if args.out else default_out(suite)
    if args.resume and not args.out:
        raise AttnbenchError("--resume needs --out FILE.csv naming the run to continue")
    console.print(f"suite [bold]{escape(suite.name)}[/] on {suite.device} -> {escape(str(out))}")
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
            err_console.print(f"interrupted: rows measured so far are in {out}; continue with --resume --out {out}")
            return 130
    rounds = f" x {summary.rounds} rounds" if summary.rounds > 1 else ""
    console.print(f"{summary.total} cases{rounds} in {time.perf_counter() - t0:.1f} s; rows in {escape(str(out))}")
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
    frame, meta = compare.compare_runs(args.a, args.b, metric=args.metric, across_hardware=args.across_hardware)
    for t in compare.comparison_tables(frame, meta):
        t = export.as_table(t)
        console.print(render_table(t.title, t.frame, index_name=t.frame.index.name or ""))
    console.print(meta.summary())
    for note in meta.notes:
        console.print(f"note: {note}")
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
    table = RichTable(title=f"[bold]{escape(title)}[/]", title_justify="left", header_style="bold")
    if rows:
        for col in rows[0]:
            table.add_column(col, overflow="fold")
        for row in rows:
            style = colours.get(row.get("verdict", ""))
            table.add_row(*[escape(str(v)) for v in row.values()], style=style)
        out.print(table)
    for note in result.notes:
        out.print(f"note: {escape(note)}")
    if not result.has_verdict:
        err_console.print(f"attnbench: warning: {escape(result.summary())}; nothing was decided (exit 0)")
    out.print(escape(result.summary()))


def cmd_gate(args) -> int:
    from attnbench.gate import gate

    base, new = gate_sides(args)
    result = gate(base, new, threshold=args.threshold, alpha=args.alpha, metric=args.metric,
                  min_rounds=args.min_rounds, across_hardware=args.across_hardware)  # fmt: skip
    print_gate(result)
    return result.exit_code


def cmd_ab(args) -> int:
    from attnbench import ab
    from attnbench.gate import gate

    plan = ab.prepare(args.suite, baseline=args.baseline, candidate=args.candidate, rounds=args.rounds,
                      out_dir=args.out, overrides=args.set or [])  # fmt: skip
    console.print(f"A (baseline) = {escape(plan.sides['A'].describe())}")
    console.print(f"B (candidate) = {escape(plan.sides['B'].describe())}")
    console.print(f"{plan.rounds} rounds per side in the order {' '.join(plan.order)} -> {escape(str(plan.out_dir))}")
    try:
        files = ab.execute(plan, log=lambda line: console.print(escape(line)))
    finally:
        ab.cleanup(plan)
    result = gate(files["A"], files["B"], threshold=args.threshold, alpha=args.alpha, metric="latency")
    print_gate(result)
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


def _gate_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threshold", default="5%", help="slowdown that matters, e.g. 5%% or 0.05 (default 5%%)")
    p.add_argument("--alpha", type=float, default=0.05, help="family-wise significance level (Holm)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="attnbench", description="Benchmark attention mechanisms for vision models.")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = p.add_subparsers(dest="command", required=True)

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
    e.set_defaults(func=cmd_env)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if "gate" in argv and "--" in argv[argv.index("gate"):]:  # gate A1 A2 -- B1 B2: the sides' separator
        cut = argv.index("--", argv.index("gate"))
        argv[cut] = "--new"
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
