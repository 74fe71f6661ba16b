"""Command line: the parser and `main` for run | list | suite-keys | report | compare | gate | ab | history | env.

The commands are in `cli_commands`, their rich output in `cli_render`. User errors (AttnbenchError)
print one line and exit non-zero (2) without a traceback; `--debug` shows tracebacks.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from attnbench.cli_commands import (
    cmd_ab,
    cmd_compare,
    cmd_env,
    cmd_gate,
    cmd_history,
    cmd_list,
    cmd_report,
    cmd_run,
    cmd_suite_keys,
)
from attnbench.cli_render import err_console
from attnbench.errors import AttnbenchError


def _gate_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threshold", default="5%", help="slowdown that matters, e.g. 5%% or 0.05 (default 5%%)")
    p.add_argument("--alpha", type=float, default=0.05, help="family-wise significance level (Holm)")
    p.add_argument(
        "--absolute",
        action="store_true",
        help="judge changes as measured, without removing the run-wide shift (median over >= 8 cases)",
    )
    p.add_argument(
        "--format",
        choices=("term", "json", "md"),
        default="term",
        help="terminal table (default); json: the verdict and every case as one JSON object "
        "(docs/gate.schema.json); md: a Markdown summary for a pull request or $GITHUB_STEP_SUMMARY",
    )


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is the usage line plus one `attnbench: error: ...` line (exit 2)."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        sys.stderr.write(f"attnbench: error: {self.prog}: {message}; see {self.prog} --help\n")
        raise SystemExit(2)


DEBUG_HELP = "show tracebacks for errors"


def _common_options() -> argparse.ArgumentParser:
    """Options every subcommand also takes after its name (`attnbench run S --debug` = `attnbench --debug run S`):
    their default is SUPPRESS, so a subcommand that is not given one keeps the value parsed before its name."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    return common


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="attnbench", description="Benchmark attention mechanisms for vision models.")
    p.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    common = _common_options()
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def command(name: str, **kwargs) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kwargs)

    r = command("run", help="run a suite: sweep, live progress, summary; rows appended to a CSV")
    r.add_argument("suite", help="suite YAML file (see suites/)")
    r.add_argument("--out", help="results CSV (default results/<suite>-<UTC timestamp>.csv)")
    r.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a suite key (value is YAML)")
    r.add_argument(
        "--rounds",
        type=int,
        metavar="N",
        help="measure timed cases in N rounds, each in a fresh worker process (suite key rounds, default 5)",
    )
    r.add_argument("--resume", action="store_true", help="skip cases that already have rows in --out")
    r.add_argument(
        "--profile",
        action="store_true",
        help="after its timing, profile each timed case: FILE.kernels.csv and FILE.profiles/<case_id>.json "
        "(suite key profile: true)",
    )
    r.add_argument(
        "--workers",
        metavar="N|auto",
        help="run cases on N isolated local workers, one per device (auto: one per visible GPU; "
        "on CPU the cores are split between them)",
    )
    r.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="ray: every (case ladder, round) is a Ray task (pip install 'attnbench[distributed]')",
    )
    r.add_argument(
        "--address",
        metavar="ADDR",
        help="Ray cluster to join (e.g. head-node:6379 or auto); default: start a local Ray instance",
    )
    r.add_argument("--no-progress", action="store_true", help="no live progress bar")
    r.add_argument("--dry-run", action="store_true", help="validate the suite and plan its cases; run nothing")
    r.set_defaults(func=cmd_run, needs_mechanisms=True)

    ls = command("list", help="list mechanisms with availability and the reason when unavailable")
    ls.add_argument("--family", help="only this family (softmax, rala, linear, ...)")
    ls.add_argument("--device", default="auto", help="device to check availability on (auto, cpu, cuda)")
    ls.add_argument("--plugin", action="append", help="also load this plugin module or .py file")
    ls.set_defaults(func=cmd_list, needs_mechanisms=True)

    keys = command("suite-keys", help="every suite key: type, default, allowed values, meaning")
    keys.add_argument("--format", choices=("term", "md"), default="term", help="terminal table or Markdown")
    keys.set_defaults(func=cmd_suite_keys)

    rep = command("report", help="tables from saved results CSVs")
    rep.add_argument("files", nargs="+", help="results CSV files")
    rep.add_argument(
        "--format",
        choices=("term", "md", "latex", "csv"),
        default="term",
        help="terminal tables (default), Markdown, LaTeX (booktabs) or tidy CSV on stdout",
    )
    rep.add_argument("--plot", metavar="DIR", help="also write PNG and PDF plots (latency/memory/speedup vs tokens)")
    rep.add_argument(
        "--html",
        metavar="OUT.html",
        help="also write one self-contained HTML page: the tables, figures (inline SVG) and each run's environment",
    )
    rep.add_argument(
        "--history",
        nargs="+",
        metavar="PATH",
        help="with --html: a History section with the change points of these runs over commits (files or folders, "
        "as `attnbench history` reads them)",
    )
    rep.add_argument("--mechanisms", metavar="A,B,...", help="only these mechanisms (comma-separated)")
    rep.add_argument("--title", help="the report's title: Markdown heading, LaTeX caption prefix, HTML page title")
    rep.add_argument(
        "--label", metavar="KEY", help="with --format latex: \\label{KEY} (one table) or KEY-<table> (several)"
    )
    rep.add_argument("--baseline", metavar="MECH", help="add speedup tables vs this mechanism")
    rep.add_argument("--crossover", nargs=2, metavar=("A", "B"), help="token count where A and B cross")
    rep.add_argument("--min-tokens", type=int, help="fit scaling exponents only at or above this token count")
    rep.add_argument(
        "--kernels",
        action="store_true",
        help="instead of the tables: the top ops or kernels of each case, from FILE.kernels.csv (run --profile)",
    )
    rep.add_argument("--top", type=int, metavar="N", help="with --kernels: the N largest per case (default 10)")
    rep.set_defaults(func=cmd_report)

    cmp_ = command("compare", help="align two runs (two GPUs, two commits) and show ratios B/A")
    cmp_.add_argument("a", help="results CSV of run A")
    cmp_.add_argument("b", help="results CSV of run B")
    cmp_.add_argument("--metric", default="latency")
    cmp_.add_argument(
        "--across-hardware",
        action="store_true",
        help="pair cases although the env files say A and B ran on different hardware",
    )
    cmp_.set_defaults(func=cmd_compare)

    g = command(
        "gate",
        help="fail (exit 1) when NEW is significantly slower than BASELINE",
        usage="attnbench gate BASELINE NEW | A1 [A2 ...] -- B1 [B2 ...] [options]",
    )
    g.add_argument(
        "files",
        nargs="*",
        metavar="FILE",
        help="results CSVs (with their .samples.csv) or pytest-benchmark JSONs (--benchmark-save-data); "
        "BASELINE NEW, or several per side separated by --: each file's rounds count",
    )
    g.add_argument("--baseline", nargs="+", metavar="FILE", help="baseline files (instead of the positional form)")
    g.add_argument("--new", nargs="+", metavar="FILE", help="new files (instead of the positional form)")
    _gate_options(g)
    g.add_argument("--metric", default="latency", help="metric to compare (default latency)")
    g.add_argument(
        "--min-rounds", type=int, default=3, help="rounds per side below which a case gets no verdict (default 3)"
    )
    g.add_argument(
        "--across-hardware",
        action="store_true",
        help="gate although the env files say the sides ran on different hardware",
    )
    g.set_defaults(func=cmd_gate)

    ab_ = command("ab", help="interleaved A/B on this machine: two trees, rounds A B B A ..., gate verdict")
    ab_.add_argument("suite", help="suite YAML file (both sides run it)")
    ab_.add_argument(
        "--baseline",
        required=True,
        metavar="DIR|REV",
        help="a checkout directory, or a git revision (checked out into a temporary worktree)",
    )
    ab_.add_argument("--candidate", metavar="DIR|REV", help="the tree to test (default: this checkout)")
    ab_.add_argument("--rounds", type=int, default=6, help="rounds per side (default 6), in the order A B B A ...")
    ab_.add_argument("--out", metavar="DIR", help="folder for the per-round CSVs (default results/ab-<UTC>)")
    ab_.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a suite key on both sides")
    _gate_options(ab_)
    ab_.set_defaults(func=cmd_ab)

    h = command("history", help="each case's results over commits, per machine, and the steps (change points) in them")
    h.add_argument(
        "paths",
        nargs="+",
        metavar="FILE_OR_DIR",
        help="results CSVs, or folders searched for them (with FILE.env.json)",
    )
    h.add_argument("--case", metavar="PATTERN", help="only cases whose id or name matches this glob, e.g. '*rala*'")
    h.add_argument("--metric", default="latency", help="metric to follow (default latency)")
    h.add_argument(
        "--alpha",
        type=float,
        default=0.05,
        help="per series, the chance that a flat series shows a step; also 1 - the intervals' confidence",
    )
    h.add_argument(
        "--across-hardware", action="store_true", help="one series per case, mixing runs from different machines"
    )
    h.add_argument(
        "--format",
        choices=("term", "md", "csv", "json"),
        default="term",
        help="terminal table (default), Markdown, CSV (one row per step) or JSON on stdout",
    )
    h.add_argument("--plot", metavar="DIR", help="also write one PNG per series with a step into DIR")
    h.add_argument(
        "--repo", metavar="DIR", default=".", help="git checkout whose history orders the commits (default: here)"
    )
    h.set_defaults(func=cmd_history)

    e = command("env", help="print the environment fingerprint recorded with every row")
    e.add_argument("--device", default="auto")
    e.add_argument("--probe", action="store_true", help="measure copy bandwidth and matmul peaks (cached per env)")
    e.add_argument("--quick", action="store_true", help="smaller, faster probe")
    e.add_argument(
        "--stability",
        type=float,
        nargs="?",
        const=8.0,
        metavar="SECONDS",
        help="time a tiny op in 0.25 s windows (default 8 s) and say how steady timing is right now",
    )
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
    if "gate" in argv and "--" in argv[argv.index("gate") :]:  # gate A1 A2 -- B1 B2: the sides' separator
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
        err_console.print(
            f"attnbench: internal error ({type(exc).__name__}: {detail}); this is a bug: rerun "
            "with --debug and report the traceback",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        return 1
    finally:
        warnings.showwarning = previous


if __name__ == "__main__":
    sys.exit(main())
