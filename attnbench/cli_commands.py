"""The CLI's commands: `cmd_<name>(args) -> exit code`, each parsing nothing itself (argparse did, in `cli`)
and printing through `cli_render`."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

from rich.table import Table as RichTable

from attnbench.cli_render import (
    RichProgress,
    console,
    err_console,
    esc,
    fit_tables,
    print_gate,
    print_report,
    print_table,
    print_tables,
)
from attnbench.errors import AttnbenchError


# -- commands ---------------------------------------------------------------------------------------
def cmd_run(args) -> int:
    from attnbench import results
    from attnbench.runner import default_out, run_suite
    from attnbench.suite import load_suite

    overrides = list(args.set or []) + ([f"rounds={args.rounds}"] if args.rounds is not None else [])
    overrides += ["profile=true"] if args.profile else []
    suite = load_suite(args.suite, overrides)
    if args.resume and not args.out:
        raise AttnbenchError("--resume needs --out FILE.csv naming the run to continue")
    out = results.check_out_path(args.out if args.out else default_out(suite))
    console.print(f"suite [bold]{esc(suite.name)}[/] on {suite.device} -> {esc(out)}")
    if args.dry_run:
        from attnbench.plan import plan

        cases = plan(suite)
        skipped = sum(c.skip is not None for c in cases)
        console.print(
            f"{len(cases)} cases ({skipped} skipped by the plan), {suite.rounds} rounds; nothing run (--dry-run)"
        )
        return 0
    if suite.rounds > 1 and suite.isolation == "inprocess" and "latency" in suite.metrics:
        console.print(
            f"[yellow]warning[/]: isolation: inprocess runs all {suite.rounds} rounds in this process: "
            "their spread misses between-process noise, so `gate` on this run can fail identical code; "
            "use isolation: auto or process"
        )
    from attnbench.executors import make_executor

    executor = make_executor(suite, executor=args.executor, workers=args.workers, address=args.address)
    t0 = time.perf_counter()
    with RichProgress(enabled=not args.no_progress) as progress:
        try:
            summary = run_suite(suite, out, resume=args.resume, progress=progress, debug=args.debug, executor=executor)
        except KeyboardInterrupt:
            err_console.print(
                f"interrupted: rows measured so far are in {esc(out)}; continue with --resume --out {esc(out)}"
            )
            return 130
    rounds = f" x {summary.rounds} rounds" if summary.rounds > 1 else ""
    console.print(f"{summary.total} cases{rounds} in {time.perf_counter() - t0:.1f} s; rows in {esc(out)}")
    df = results.load(out)
    print_report(df)
    if suite.profile and results.companion(out, "kernels.csv").exists():
        console.print(
            f"kernel profiles in {esc(results.companion(out, 'kernels.csv'))} and "
            f"{esc(results.companion(out, 'profiles'))}/ (attnbench report {esc(out)} --kernels)"
        )
    _check_verification(df)
    return 0


def _check_verification(df) -> None:
    """An AttnbenchError (exit 2) when some mechanism failed verification in every case: the rows are written."""
    from attnbench.summary import verification_failures, verification_hint

    failures = verification_failures(df)
    if failures:
        raise AttnbenchError(verification_hint(failures))


def cmd_list(args) -> int:
    from attnbench import registry
    from attnbench.suite import resolve_device

    if args.plugin:
        registry.load_plugins(args.plugin)
    device = resolve_device(args.device)
    names = registry.names(family=args.family)
    if args.family and not names:
        raise AttnbenchError(
            f"no mechanisms in family {args.family[:60]!r} (families: {', '.join(registry.families())})"
        )
    table = RichTable(title=f"mechanisms (availability on {esc(device)})", title_justify="left", header_style="bold")
    narrow = console.width < 100  # levels, dtypes and upstream are dropped rather than squeezed
    columns = (
        ("name", "family", "backend", "available / reason")
        if narrow
        else ("name", "family", "backend", "levels", "dtypes", "checked against", "available / reason")
    )
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
    table = RichTable(
        title="suite keys (a sweep axis takes a scalar or a list)", title_justify="left", header_style="bold"
    )
    for h in header:
        table.add_column(h, overflow="fold", style="cyan" if h == "key" else None, no_wrap=h == "key")
    for r in rows:
        table.add_row(*[esc(r[h], 400) for h in header])
    console.print(table)
    return 0


def _results_path(path: str) -> str:
    """FILE.csv for FILE.csv or one of its companion CSVs (a shell glob such as results/run-*.csv matches them)."""
    for kind in (".samples.csv", ".kernels.csv"):
        if path.endswith(kind):
            return path[: -len(kind)] + ".csv"
    return path


def _load_runs(paths: list[str]) -> list[tuple[str, object, object]]:
    """(path, rows, samples or None) of each results file named once (a samples file stands for its CSV)."""
    from attnbench import results

    runs, seen = [], set()
    for path in map(_results_path, paths):
        key = os.path.abspath(path)  # text only: a path's problems are for results.load to report
        if key in seen:
            continue
        seen.add(key)
        df = results.load(path)
        samples = results.load_samples(path) if results.companion(path, "samples.csv").exists() else None
        runs.append((path, df, samples))
    if all(df.empty for _, df, _ in runs):
        raise AttnbenchError(f"{', '.join(p for p, _, _ in runs)} has no rows yet")
    return runs


def shared_cases(runs: list[tuple[str, object, object]]) -> set[str]:
    """case_ids that have rows in more than one of `runs`."""
    from collections import Counter

    counts = Counter(case for _, df, _ in runs for case in set(df["case_id"]))
    return {case for case, n in counts.items() if n > 1}


def _report_parts(runs: list[tuple[str, object, object]], out) -> list[tuple[str, object, object]]:
    """What `report` shows: all files as one set of tables when no case is in two of them; else each file on
    its own (two measurements of one case are never merged or dropped), said on `out`."""
    import pandas as pd

    shared = shared_cases(runs)
    if len(runs) > 1 and shared:
        names = ", ".join(p for p, _, _ in runs)
        out.print(
            f"note: {len(shared)} case(s) have rows in more than one of {esc(names, 400)}: each file is "
            "reported on its own (`attnbench compare A B` puts two runs side by side)",
            soft_wrap=True,
        )
        return runs
    df = pd.concat([d for _, d, _ in runs], ignore_index=True) if len(runs) > 1 else runs[0][1]
    samples = [s for _, _, s in runs if s is not None]
    return [("", df, pd.concat(samples, ignore_index=True) if samples else None)]


def _captioned(table, prefix: str) -> str:
    """The caption of `table` in words, after `prefix: ` (the results file it comes from) where given."""
    from attnbench import tables

    return f"{prefix}: {tables.caption(table)}" if prefix else tables.caption(table)


def _titled(table, prefix: str):
    """`table` with `prefix: ` before its title (the results file it comes from)."""
    import dataclasses

    return dataclasses.replace(table, title=f"{prefix}: {table.title}") if prefix else table


def _only_mechanisms(runs: list[tuple[str, object, object]], spec: str) -> list[tuple[str, object, object]]:
    """report --mechanisms A,B: each run's rows (and samples) of those mechanisms only."""
    wanted = list(dict.fromkeys(m.strip() for m in spec.split(",") if m.strip()))
    if not wanted:
        raise AttnbenchError(
            "--mechanisms needs a comma-separated list of mechanism names, e.g. softmax_sdpa,rala_eager"
        )
    have = {m for _, df, _ in runs for m in df["mechanism"]}
    missing = [m for m in wanted if m not in have]
    if missing:
        raise AttnbenchError(
            f"--mechanisms: {', '.join(missing)[:200]} has no rows in these files; they have "
            f"{', '.join(sorted(have))[:400] or 'none'}"
        )
    out = []
    for path, df, samples in runs:
        keep = df[df["mechanism"].isin(wanted)]
        if samples is not None:
            samples = samples[samples["case_id"].isin(set(keep["case_id"]))]
        out.append((path, keep, samples))
    return out


def _latex_label(label: str | None, prefix: str, table, several: bool) -> str | None:
    """report --label KEY: KEY for a report of one table, else KEY-<file stem>-<table key>."""
    from attnbench import tables

    if not label:
        return None
    if not several:
        return label
    stem = f"{Path(prefix).stem}-" if prefix else ""
    return f"{label}-{stem}{tables.table_key(table)}"


def cmd_report(args) -> int:
    from attnbench import export, tables

    if args.kernels:
        return _report_kernels(args)
    if args.top is not None:
        raise AttnbenchError("--top N chooses how many kernels --kernels shows; add --kernels")
    if args.crossover and args.crossover[0] == args.crossover[1]:
        raise AttnbenchError(f"--crossover needs two different mechanisms, got {args.crossover[0][:60]!r} twice")
    if args.min_tokens is not None and args.min_tokens < 0:
        raise AttnbenchError(f"--min-tokens must be >= 0, got {args.min_tokens}")
    if args.label and args.format != "latex":
        raise AttnbenchError("--label sets the LaTeX \\label of each table; add --format latex")
    if args.html and not str(args.html).endswith((".html", ".htm")):
        raise AttnbenchError(f"--html names the page to write, ending in .html; got {str(args.html)[:200]!r}")
    if args.html:
        _check_folder(Path(args.html).parent, "--html path")
    if args.history and not args.html:
        raise AttnbenchError("--history adds a section to the HTML page; add --html OUT.html")
    history = None
    if args.history:
        from attnbench.history import history as find_history

        history = find_history(args.history)
    runs = _load_runs(args.files)
    if args.mechanisms is not None:
        runs = _only_mechanisms(runs, args.mechanisms)
    parts = _report_parts(runs, console if args.format == "term" else err_console)
    crossover = tuple(args.crossover) if args.crossover else None
    made = [
        (
            label,
            df,
            samples,
            folder,
            tables.report_tables(
                df, baseline=args.baseline, crossover=crossover, samples=samples, min_tokens=args.min_tokens
            ),
        )
        for (label, df, samples), folder in zip(parts, _plot_folders(parts))
        if not df.empty
    ]
    several = sum(len(extra) for *_, extra in made) > 1
    if args.title and args.format == "md":
        print(f"# {args.title}\n")
    elif args.title and args.format == "term":
        console.rule(f"[bold]{esc(args.title, 400)}[/]", align="left")
    tidy_parts = []
    for label, df, samples, folder, extra in made:
        if args.format == "term":
            from attnbench.analysis import PivotTable

            if label:
                console.rule(f"[bold]{esc(label, 400)}[/]", align="left")
            print_report(df)  # latency/memory pivots with status cells, model metrics, problems
            for t in extra:
                if isinstance(t, PivotTable) and t.metric in ("latency", "peak_memory"):
                    continue  # already shown by print_report
                print_table(tables.as_table(t))
        elif args.format == "md":
            print("\n\n".join(export.to_markdown(t, _captioned(t, label)) for t in extra))
        elif args.format == "latex":
            texts = []
            for t in extra:
                caption = _captioned(t, label)
                caption = f"{args.title}: {caption}" if args.title else caption
                texts.append(export.to_latex(t, caption=caption, label=_latex_label(args.label, label, t, several)))
            print("\n\n".join(texts))
        else:
            tidy = export.tidy(extra)
            tidy_parts.append(tidy.assign(file=label)[["file", *tidy.columns]] if label else tidy)
        if args.plot:
            _plot(args, df, samples, Path(args.plot) / folder if label else Path(args.plot))
    if args.format == "csv":
        import pandas as pd

        sys.stdout.write(pd.concat(tidy_parts, ignore_index=True).to_csv(index=False) if tidy_parts else "")
    if args.html:
        from attnbench.html_report import report_html

        page = report_html(
            parts,
            runs,
            baseline=args.baseline,
            crossover=crossover,
            min_tokens=args.min_tokens,
            title=args.title or "",
            history=history,
        )
        path = page.write(args.html)
        err_console.print(f"wrote {esc(path)} ({path.stat().st_size / 1024:.0f} KiB, self-contained)")
    return 0


KERNELS_TOP = 10  # report --kernels: lines per case without --top


def _report_kernels(args) -> int:
    """report --kernels: the top ops or kernels of each case of each file, from FILE.kernels.csv."""
    import pandas as pd

    from attnbench import export, profiling, results

    given = {"--plot": args.plot, "--baseline": args.baseline, "--crossover": args.crossover, "--html": args.html}
    others = [flag for flag, value in {**given, "--min-tokens": args.min_tokens}.items() if value is not None]
    if others:
        raise AttnbenchError(f"--kernels shows the kernel tables only; drop {', '.join(others)} (or run report twice)")
    top = KERNELS_TOP if args.top is None else args.top
    if top < 1:
        raise AttnbenchError(f"--top must be at least 1, got {top}")
    paths = list(dict.fromkeys(_results_path(p) for p in args.files))
    files = [(p, results.load_kernels(p)) for p in paths]
    tidy = []
    for path, kernels in files:
        rows = results.load(path) if Path(path).exists() else pd.DataFrame(columns=results.COLUMNS)
        label = path if len(files) > 1 else ""
        if args.format == "csv":
            lines = profiling.top_kernels(kernels, rows, top)
            tidy.append(lines.assign(file=path)[["file", *lines.columns]] if label else lines)
            continue
        folder = str(results.companion(path, "profiles"))
        shown = [_titled(t, label) for t in profiling.kernel_tables(kernels, rows, top, folder)]
        if not shown:
            err_console.print(f"note: {esc(path)} has no profiled cases yet")
        for t in shown:
            if args.format == "term":
                print_table(t)
            else:
                print(export.to_markdown(t) if args.format == "md" else export.to_latex(t))
    if args.format == "csv":
        sys.stdout.write(pd.concat(tidy, ignore_index=True).to_csv(index=False) if tidy else "")
    return 0


def _plot_folders(parts: list[tuple[str, object, object]]) -> list[str]:
    """The --plot subfolder of each file reported on its own: its stem, led by its position where stems repeat."""
    stems = [Path(p).stem for p, _, _ in parts]
    return [stem if stems.count(stem) == 1 else f"{i + 1}-{stem}" for i, stem in enumerate(stems)]


def _check_folder(folder: Path, what: str) -> None:
    """Create `folder` (for a file or plots to come), or say which option to change."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise AttnbenchError(
            f"cannot create the folder {str(folder)[:200]!r}: {reason}; choose another {what}"
        ) from None


def _plot(args, df, samples, folder: Path) -> None:
    from attnbench import export

    _check_folder(folder, "--plot")
    paths = export.write_plots(df, folder, baseline=args.baseline, samples=samples, min_tokens=args.min_tokens)
    err_console.print(f"wrote {len(paths)} plot files to {esc(folder)}")
    for path in paths:
        err_console.print(f"  {esc(path)}")


def cmd_compare(args) -> int:
    from attnbench import compare, results, tables

    for path in (args.a, args.b):
        metrics = set(results.load(path)["metric"])
        if args.metric not in metrics:
            raise AttnbenchError(
                f"{path} has no {args.metric[:60]!r} rows (it has: {', '.join(sorted(metrics))}); check --metric"
            )
    frame, meta = compare.compare_runs(args.a, args.b, metric=args.metric, across_hardware=args.across_hardware)
    for t in compare.comparison_tables(frame, meta):
        print_table(tables.as_table(t))
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


def cmd_gate(args) -> int:
    from attnbench.gate import gate

    base, new = gate_sides(args)
    result = gate(
        base,
        new,
        threshold=args.threshold,
        alpha=args.alpha,
        metric=args.metric,
        min_rounds=args.min_rounds,
        across_hardware=args.across_hardware,
        absolute=args.absolute,
    )
    _print_gate(result, args.format)
    return result.exit_code


def _print_gate(result, fmt: str) -> None:
    """The gate's result on stdout: terminal tables, or JSON / Markdown (attnbench.gate_report); without a
    verdict a warning on stderr too."""
    if fmt == "term":
        print_gate(result)
        return
    from attnbench import gate_report

    if fmt == "json":
        print(json.dumps(gate_report.to_json(result), indent=2, allow_nan=False))
    else:
        sys.stdout.write(gate_report.to_markdown(result))
    if not result.has_verdict:
        err_console.print(
            f"attnbench: warning: {esc(result.summary(), 2000)}; nothing was decided (exit 0)", soft_wrap=True
        )


def cmd_ab(args) -> int:
    from attnbench import ab
    from attnbench.gate import gate

    plan = ab.prepare(
        args.suite,
        baseline=args.baseline,
        candidate=args.candidate,
        rounds=args.rounds,
        out_dir=args.out,
        overrides=args.set or [],
    )
    log = console if args.format == "term" else err_console  # json/md: stdout holds the result only
    log.print(f"A (baseline) = {esc(plan.sides['A'].describe(), 400)}")
    log.print(f"B (candidate) = {esc(plan.sides['B'].describe(), 400)}")
    log.print(f"{plan.rounds} rounds per side in the order {' '.join(plan.order)} -> {esc(plan.out_dir, 400)}")
    for note in plan.notes:
        log.print(esc(note, 400))
    try:
        files = ab.execute(plan, log=lambda line: log.print(esc(line, 400)))
    finally:
        ab.cleanup(plan)
    result = gate(
        files["A"], files["B"], threshold=args.threshold, alpha=args.alpha, metric="latency", absolute=args.absolute
    )
    _print_gate(result, args.format)
    return result.exit_code


def cmd_history(args) -> int:
    from attnbench import history_report
    from attnbench.history import history

    result = history(
        args.paths,
        metric=args.metric,
        case=args.case,
        alpha=args.alpha,
        across_hardware=args.across_hardware,
        repo=args.repo,
    )
    rows = history_report.rows(result)
    if args.format == "json":
        print(json.dumps(history_report.to_json(result), indent=2, allow_nan=False))
    elif args.format == "md":
        sys.stdout.write(history_report.to_markdown(result))
    elif args.format == "csv":
        import pandas as pd

        sys.stdout.write(pd.DataFrame(rows, columns=history_report.header(result)).to_csv(index=False))
    else:
        if rows:
            shown = ("case_id", "before", "after", "direction") if console.width >= 160 else ()
            header = [h for h in rows[0] if h in shown or h not in ("case_id", "before", "after", "direction")]
            cells = [[r[h] for h in header] for r in rows]
            styles = ["red" if r["direction"] == "slower" else "green" for r in rows]
            title = f"history: steps in {result.metric} (PELT, t test per step at alpha / (n - 1))"
            print_tables(fit_tables(title, header, cells, styles=styles, index_style=None, width=console.width))
        for note in result.notes:
            console.print(f"note: {esc(note, 2000)}", soft_wrap=True)
        console.print(esc(result.summary(), 2000), soft_wrap=True)
    if args.plot:
        paths = history_report.write_plots(result, args.plot)
        err_console.print(f"wrote {len(paths)} plot files to {esc(args.plot)}")
    return 0


def cmd_env(args) -> int:
    from attnbench.measure.env import env_id, fingerprint, machine_id
    from attnbench.suite import resolve_device

    device = resolve_device(args.device)
    if device not in ("cpu", "cuda"):
        raise AttnbenchError(f"--device must be auto, cpu or cuda, got {device[:40]!r}")
    if args.stability is not None and not (math.isfinite(args.stability) and args.stability > 0):
        raise AttnbenchError(f"--stability takes a positive number of seconds, got {args.stability:g}")
    from types import SimpleNamespace

    from attnbench.execute import apply_precision_settings

    apply_precision_settings(SimpleNamespace(tf32=False))  # as every run does (tf32: false): the same env_id
    fp = fingerprint(device)
    console.print_json(json.dumps({"env_id": env_id(fp), "machine_id": machine_id(fp), **fp}, default=str))
    if args.probe:
        from attnbench.measure import peaks

        console.print(f"probing {esc(device)} peaks (copy bandwidth, dense matmul per dtype)...")
        result = peaks.get_or_probe(device, quick=args.quick, refresh=True)
        cached = peaks.cache_path(result["fingerprint"])
        table = RichTable(
            title=f"[bold]measured peaks on {esc(device)}[/] (cached: {esc(cached)})",
            title_justify="left",
            header_style="bold",
        )
        rows = peaks.table_rows(result)
        for col in rows[0]:
            table.add_column(col, overflow="fold")
        for row in rows:
            cells = ["" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v)) for v in row.values()]
            table.add_row(*[esc(c) for c in cells])
        console.print(table)
        console.print("later runs on this environment add frac_bandwidth / frac_flops rows")
    if args.stability is not None:
        from attnbench.measure.stability import probe

        console.print(f"timing a tiny op on the CPU for {args.stability:g} s, in windows...")
        result = probe(args.stability)
        console.print(esc(result.summary()))
        if not result.steady:
            console.print(
                "timing on this machine moves between levels at the moment: expect wide spreads and a gate that "
                "needs more rounds (docs/methodology.md, the gate's calibration)"
            )
    return 0
