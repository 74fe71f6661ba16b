"""Calibrate `attnbench gate` on this machine: false-positive rate on A/A pairs, power on A/B pairs.

A benchmark, not a unit test: it runs the shipped smoke suite (plus the `test_slowable` plugin mechanism,
tests/plugins/slowable.py) many times with `python -m attnbench run` exactly as a user would, each run
with the default rounds, then gates pairs of runs with the default gate options:
  - A/A: two runs of identical code (slowdown 0);
  - A/B: a run against one where test_slowable does 10 %, 20 % or 30 % more real work (extra SDPA calls,
    no sleeping), every other mechanism unchanged.
Per pair i the runs go A_i, B10_i, A'_i, B20_i, B30_i; the pairs are (A_i, A'_i), (A_i, B10_i),
(A'_i, B20_i), (A'_i, B30_i), so every pair is measured minutes apart like two runs of a CI job.
A pair "fails" when the gate exits 1; for A/B it is "caught" when test_slowable is among the regressions,
and "other named" when any other mechanism is. Writes one row per pair kind to --table (CSV) and prints a
Markdown table of the same figures. Only latency is measured (`metrics: [latency]`, `verify: false`), which
is what the gate reads; the timing procedure is the suite's own.

    python scripts/gate_calibration.py --pairs 20 --table results/gate-calibration-cpu-YYYYMMDD.csv
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from attnbench.gate import gate  # noqa: E402

SLOWED = "test_slowable"


def run_suite(suite: Path, out: Path, slowdown: float, extra: list[str]) -> float:
    """One `attnbench run` in a fresh process; returns its wall time in seconds."""
    plugin = REPO / "tests" / "plugins" / "slowable.py"
    cmd = [
        sys.executable,
        "-m",
        "attnbench",
        "run",
        str(suite),
        "--out",
        str(out),
        "--no-progress",
        "--set",
        f"plugins=[{plugin}]",
        "--set",
        f"mechanisms=[softmax_eager, softmax_sdpa, softmax_flash, rala_eager, {SLOWED}]",
        "--set",
        "metrics=[latency]",
        "--set",
        "verify=false",
        "--set",
        "device=cpu",
    ]
    for assignment in extra:
        cmd += ["--set", assignment]
    env = dict(os.environ, ATTNBENCH_TEST_SLOWDOWN=str(slowdown), PYTHONPATH=str(REPO))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"run failed ({out.name}): {proc.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - t0


def judge(a: Path, b: Path) -> dict:
    result = gate(a, b)
    named = {c.name.split(" ")[0] for c in result.regressions}
    return {
        "failed": result.exit_code == 1,
        "caught": SLOWED in named,
        "other": bool(named - {SLOWED}),
        "named": sorted(named),
        "slowed_change": _median_change(result),
    }


def _median_change(result) -> float | None:
    changes = sorted(c.change for c in result.cases if c.name.startswith(SLOWED))
    return changes[len(changes) // 2] if changes else None


def summarize(
    outcomes: dict[str, list[dict]],
    walls: list[float],
    loads: list[float],
    noise: list[float],
    work: Path,
    table: str | None,
) -> None:
    rows = []
    for kind, found in outcomes.items():
        n = len(found)
        changes = sorted(o["slowed_change"] for o in found if o["slowed_change"] is not None)
        rows.append(
            {
                "pairs": kind,
                "n": n,
                "gate_failed": sum(o["failed"] for o in found),
                "slowed_caught": sum(o["caught"] for o in found) if kind != "A/A" else "",
                "other_named": sum(o["other"] for o in found),
                "median_measured_change_of_slowed": f"{changes[len(changes) // 2]:+.1%}" if changes else "",
            }
        )
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")
    from attnbench.measure.env import fingerprint

    fp = fingerprint("cpu")
    machine = (
        f"{fp.get('cpu_model') or platform.machine()}, {os.cpu_count()} cores, "
        f"{fp.get('memory_bytes', 0) / 2**30:.0f} GiB, torch {fp.get('versions', {}).get('torch')}"
    )
    median_wall = sorted(walls)[len(walls) // 2] if walls else float("nan")
    loads = loads or [float("nan")]
    host = f"{sorted(noise)[len(noise) // 2]:.3f}" if noise else "nan"  # median over pairs
    print(
        f"\nmachine: {machine}; date {stamp}; runs: {len(walls)}, median wall {median_wall:.1f} s per run; "
        f"load average before a run: max {max(loads):.2f}; host timing noise (log-sd of 0.25 s window medians of "
        f"a tiny op, median over pairs; attnbench env --stability): {host}; work folder {work}"
    )
    print("| pairs | n | gate failed | test_slowable caught | another mechanism named | measured change |")
    print("|:--|--:|--:|--:|--:|--:|")
    for r in rows:
        print(
            f"| {r['pairs']} | {r['n']} | {r['gate_failed']} | {r['slowed_caught']} | {r['other_named']} | "
            f"{r['median_measured_change_of_slowed']} |"
        )
    if table:
        with open(table, "w", newline="") as fh:
            writer = csv.DictWriter(
                fh, fieldnames=[*rows[0], "machine", "date", "median_run_wall_s", "max_load_1m", "host_log_sd"]
            )
            writer.writeheader()
            for r in rows:
                writer.writerow(
                    r
                    | {
                        "machine": machine,
                        "date": stamp,
                        "median_run_wall_s": f"{median_wall:.1f}",
                        "max_load_1m": f"{max(loads):.2f}",
                        "host_log_sd": host,
                    }
                )
        print(f"wrote {table}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=20)
    p.add_argument("--slowdowns", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    p.add_argument("--suite", default=str(REPO / "suites" / "smoke.yaml"))
    p.add_argument("--work", help="folder for the runs (default: a temporary folder, kept)")
    p.add_argument("--table", help="write the summary CSV here (e.g. results/gate-calibration-cpu-YYYYMMDD.csv)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra suite override")
    p.add_argument("--stop-after-s", type=float, help="start no new pair after this many seconds (table says n)")
    p.add_argument(
        "--rejudge",
        action="store_true",
        help="measure nothing: gate the runs already in --work again (e.g. after a change to the gate)",
    )
    args = p.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="gate-calibration-"))
    work.mkdir(parents=True, exist_ok=True)
    suite = Path(args.suite).resolve()
    log = work / "pairs.jsonl"
    outcomes: dict[str, list[dict]] = {"A/A": [], **{f"A/B +{s:.0%}": [] for s in args.slowdowns}}
    walls: list[float] = []
    loads: list[float] = []
    noise: list[float] = []  # host timing noise before each pair (attnbench env --stability)
    t_start = time.perf_counter()
    for i in range(args.pairs):
        runs: dict[str, Path] = {}
        if not args.rejudge:
            from attnbench.measure.stability import probe

            noise.append(probe(4.0).log_sd)
        sequence = [("A", 0.0), (f"B{args.slowdowns[0]}", args.slowdowns[0]), ("A2", 0.0)]
        sequence += [(f"B{s}", s) for s in args.slowdowns[1:]]
        for label, slowdown in sequence:
            out = work / f"p{i:02d}-{label}.csv"
            runs[label] = out
            if args.rejudge:
                continue
            loads.append(os.getloadavg()[0])  # other work on the machine spoils timings: recorded
            walls.append(run_suite(suite, out, slowdown, args.set))
        if args.rejudge:
            if not all(path.exists() for path in runs.values()):
                break
            wall_log = work / "walls.json"
            if wall_log.exists() and not walls:
                saved = json.loads(wall_log.read_text())
                walls[:], loads[:], noise[:] = saved["walls"], saved["loads"], saved.get("noise", [])
            elif not walls:  # a run without walls.json: time between consecutive result files
                stamps = sorted(p.stat().st_mtime for p in work.glob("p*-*.csv") if ".samples" not in p.name)
                walls[:] = [b - a for a, b in zip(stamps, stamps[1:])]
        pairs = [("A/A", runs["A"], runs["A2"])]
        for k, s in enumerate(args.slowdowns):
            pairs.append((f"A/B +{s:.0%}", runs["A"] if k == 0 else runs["A2"], runs[f"B{s}"]))
        for kind, a, b in pairs:
            verdict = judge(a, b) | {"pair": i, "kind": kind, "host_log_sd": noise[-1] if noise else None}
            outcomes[kind].append(verdict)
            if not args.rejudge:
                with open(log, "a") as fh:
                    fh.write(json.dumps(verdict) + "\n")
        if not args.rejudge:
            (work / "walls.json").write_text(json.dumps({"walls": walls, "loads": loads, "noise": noise}))
        done = {k: sum(o["failed"] for o in v) for k, v in outcomes.items()}
        print(f"pair {i + 1}/{args.pairs} ({time.perf_counter() - t_start:.0f} s): failed so far {done}", flush=True)
        if args.table:  # a table after every pair: an interrupted calibration still leaves its figures
            summarize(outcomes, walls, loads, noise, work, args.table)
        if args.stop_after_s and time.perf_counter() - t_start > args.stop_after_s and i + 1 < args.pairs:
            print(f"stopping after {i + 1} pairs: --stop-after-s {args.stop_after_s:g} reached", flush=True)
            break

    summarize(outcomes, walls, loads, noise, work, args.table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
