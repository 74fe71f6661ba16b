"""Contention: per-sample preemption on synthetic clock readings, free cores from /proc/stat, `threads: auto`,
bounded retries, the case's `preempted`/`retries` rows and `contended` note, how gate, compare, tables and plots
treat a contended case, and one real run beside CPU-bound processes the test starts and stops."""

from __future__ import annotations

import math
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

import attnbench
from attnbench import analysis, contention, export, results, summary, tables
from attnbench.compare import compare_runs
from attnbench.contention import Visit, annotate, case_marks, is_contended
from attnbench.execute import choose_threads
from attnbench.gate import gate
from attnbench.measure import preemption
from attnbench.measure.preemption import CpuSample, preempted
from attnbench.measure.timing import Timings
from attnbench.metrics import latency
from attnbench.runner import Runner
from attnbench.suite import load_suite

MS = 1e-3
SUITE = {"name": "c", "mechanisms": ["softmax_sdpa"], "resolution": [4], "device": "cpu"}


# -- per sample ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "sample, expected",
    [
        # one thread computes for the whole call, the second (idle) thread sleeps: the process used half of 2 x wall
        (CpuSample(wall=2 * MS, thread_cpu=2 * MS, process_cpu=2 * MS, nivcsw=0, threads=2, worker_wait=0.0), False),
        # the calling thread was switched out for 6 of 8 ms
        (CpuSample(wall=8 * MS, thread_cpu=2 * MS, process_cpu=6 * MS, nivcsw=2, threads=2, worker_wait=0.0), True),
        # the main thread spins at the barrier (its CPU time is full) while the worker waits 4 ms for a core
        (CpuSample(wall=8 * MS, thread_cpu=8 * MS, process_cpu=12 * MS, nivcsw=1, threads=2, worker_wait=4 * MS), True),
        # the same without schedstat: the spinning main thread hides it (documented limit)
        (CpuSample(wall=8 * MS, thread_cpu=8 * MS, process_cpu=12 * MS, nivcsw=1, threads=2), False),
        # a long call with one short involuntary switch: 0.5 ms lost of 20 ms
        (CpuSample(wall=20 * MS, thread_cpu=19.5 * MS, process_cpu=19.5 * MS, nivcsw=1, threads=1), False),
        # off the CPU without an involuntary switch: it blocked by itself (I/O, a lock), not preempted
        (CpuSample(wall=8 * MS, thread_cpu=2 * MS, process_cpu=2 * MS, nivcsw=0, threads=1), False),
        # a worker waking from sleep waits a few microseconds: a wake-up, not a preemption
        (
            CpuSample(
                wall=0.05 * MS, thread_cpu=0.05 * MS, process_cpu=0.1 * MS, nivcsw=0, threads=2, worker_wait=3e-5
            ),
            False,
        ),
        # with one thread there are no workers whose wait could delay the call
        (
            CpuSample(wall=1 * MS, thread_cpu=1 * MS, process_cpu=1 * MS, nivcsw=0, threads=1, worker_wait=0.9 * MS),
            False,
        ),
    ],
)
def test_preemption_of_synthetic_samples(sample, expected):
    assert preempted(sample) is expected


def test_margin_is_the_boundary():
    lost_just_under = CpuSample(
        wall=1.0, thread_cpu=1.0 - preemption.MARGIN + 1e-6, process_cpu=1.0, nivcsw=1, threads=1
    )
    lost_just_over = CpuSample(
        wall=1.0, thread_cpu=1.0 - preemption.MARGIN - 1e-6, process_cpu=1.0, nivcsw=1, threads=1
    )
    assert not preempted(lost_just_under) and preempted(lost_just_over)


def test_time_fn_flags_every_cpu_repeat():
    from attnbench.measure.timing import RepeatPolicy, time_fn

    out = time_fn(lambda: sum(range(2000)), warmup=1, policy=RepeatPolicy(min=7, max=7, min_time_s=0))
    assert len(out) == len(out.preempted) == 7 and all(isinstance(f, bool) for f in out.preempted)
    assert out.scaled(1e3) == pytest.approx([t * 1e3 for t in out]) and out.scaled(1e3).preempted == out.preempted


# -- free cores and threads ----------------------------------------------------------------------------------
STAT = "cpu  {u} 0 {s} {i} {w} 0 0 {st} 0 0\ncpu0 1 0 1 1 0 0 0 0 0 0\ncpu1 1 0 1 1 0 0 0 0 0 0\nintr 1\n"


def test_free_cores_from_a_pair_of_proc_stat_readings(tmp_path):
    before = preemption.parse_proc_stat(STAT.format(u=1000, s=100, i=5000, w=0, st=0))
    # 200 jiffies over 2 CPUs: 90 busy (user/system/steal) and 110 idle or waiting on I/O -> 1.1 cores free
    after = preemption.parse_proc_stat(STAT.format(u=1060, s=110, i=5100, w=10, st=20))
    assert before == (5000, 6100, 2) and after[2] == 2
    assert preemption.free_between(before, after) == pytest.approx(1.1)
    assert preemption.free_between(before, after, usable=1) == 1.0  # at most the CPUs this process may use
    assert preemption.free_between(before, before) is None
    assert preemption.parse_proc_stat("cpu  1 2\n") is None and preemption.parse_proc_stat("intr 5\n") is None

    stat = tmp_path / "stat"
    stat.write_text(STAT.format(u=0, s=0, i=0, w=0, st=0))
    readings = iter([STAT.format(u=150, s=0, i=50, w=0, st=0)])  # 3/4 of 2 CPUs busy during the window

    def window(seconds):
        stat.write_text(next(readings))

    assert preemption.free_cores(stat_path=str(stat), sleep=window) == pytest.approx(min(0.5, preemption.usable_cpus()))


def test_free_cores_fall_back_to_the_load_average(tmp_path, monkeypatch):
    monkeypatch.setattr(preemption.os, "getloadavg", lambda: (0.5, 0.0, 0.0))
    monkeypatch.setattr(preemption, "usable_cpus", lambda: 2)
    assert preemption.free_cores(stat_path=str(tmp_path / "missing"), sleep=lambda s: None) == pytest.approx(1.5)


def test_auto_threads_and_the_warning():
    assert preemption.auto_threads(2, 1.9) == 2 and preemption.auto_threads(2, 1.2) == 1
    assert preemption.auto_threads(2, 0.0) == 1 and preemption.auto_threads(4, 2.6) == 3
    assert preemption.threads_warning(2, 1.8, 2) is None
    assert preemption.threads_warning(2, 0.4, 2) == (
        "threads: 2 but only 0.4 of 2 cores are free (other work uses the rest): calls will wait for cores and be "
        "flagged contended; use threads: auto or fewer threads, or a quiet machine"
    )


def test_threads_auto_takes_the_free_cores_and_an_explicit_count_above_them_warns_once(tmp_path, monkeypatch):
    from attnbench import execute

    monkeypatch.setattr(preemption, "free_cores", lambda: 0.7)
    monkeypatch.setattr(preemption, "usable_cpus", lambda: 2)
    monkeypatch.setattr(execute, "TORCH_DEFAULT_THREADS", 2)
    auto = choose_threads(load_suite(SUITE), None, probe=True)
    assert auto.threads == 1 and auto.free_cores == 0.7 and not auto.warn and "auto -> 1" in auto.message
    monkeypatch.setattr(preemption, "free_cores", lambda: 3.0)
    assert choose_threads(load_suite(SUITE), None, probe=False).threads == 2  # never above torch's default
    assert choose_threads(load_suite(SUITE, {"device": "cuda"}), None, probe=True).free_cores is None

    monkeypatch.setattr(preemption, "free_cores", lambda: 0.7)
    seen = []
    progress = SimpleNamespace(start=lambda *a: None, notice=lambda text, warn: seen.append((text, warn)))
    runner = Runner(load_suite(SUITE, {"threads": 2}), tmp_path / "r.csv", progress=progress)
    state = runner.open_run()
    state.writer.close()
    assert runner.threads == 2 and len(seen) == 1 and seen[0][1] and "threads: 2 but only 0.7 of 2" in seen[0][0]
    assert json_env(tmp_path / "r.csv")["free_cores"] == 0.7


def test_ab_gives_both_sides_one_thread_count(tmp_path, monkeypatch):
    from attnbench import ab, execute

    monkeypatch.setattr(preemption, "free_cores", lambda: 1.2)
    monkeypatch.setattr(execute, "TORCH_DEFAULT_THREADS", 2)
    suite = tmp_path / "s.yaml"
    suite.write_text("name: s\nmechanisms: [softmax_sdpa]\nresolution: 4\ndevice: cpu\n")
    assert ab.shared_threads(suite, []) == 1 and ab.shared_threads(suite, ["threads=2"]) is None
    assert ab.shared_threads(suite, ["device=cuda"]) is None
    suite.write_text("name: s\nmechanisms: [softmax_sdpa]\nresolution: 4\ndevice: cpu\nthreads: 2\n")
    assert ab.shared_threads(suite, []) is None


def json_env(path: Path) -> dict:
    import json

    return next(iter(json.loads(results.companion(path, "env.json").read_text()).values()))


# -- retries and the case's rows -----------------------------------------------------------------------------
def scripted(attempts: list[list[bool]]):
    """A fake timing of one visit: each call returns the next attempt's flags (10 ms repeats)."""
    calls = []

    def attempt(budget):
        flags = attempts[len(calls)]
        calls.append(budget)
        return Timings([10.0] * len(flags), flags)

    return attempt, calls


def test_a_mostly_preempted_visit_is_timed_again_until_clean():
    attempt, calls = scripted([[True] * 4, [True, True, True, False], [False] * 4, [True] * 4])
    kept, made = latency.timed_visit(attempt, retries=2, timeout_s=60)
    assert (made, len(calls), kept.preempted) == (2, 3, [False] * 4)


def test_retries_are_bounded_and_keep_the_least_preempted_attempt():
    attempt, calls = scripted([[True] * 4, [True, True, True, False], [True] * 4])
    kept, made = latency.timed_visit(attempt, retries=2, timeout_s=60)
    assert (made, len(calls), kept.preempted) == (2, 3, [True, True, True, False])
    attempt, calls = scripted([[True] * 4])
    assert latency.timed_visit(attempt, retries=0, timeout_s=60)[1] == 0 and len(calls) == 1
    half_rule, calls = scripted([[True] * 4] * 3)
    assert latency.timed_visit(half_rule, retries=2, timeout_s=0.0)[1] == 0  # no time left for a retry


def latency_rows(note: str = "") -> list[dict]:
    base = {"case_id": "c1", "metric": "latency", "unit": "ms", "status": "ok", "note": note, "started_at": "t"}
    return [dict(base, stat=s, value=1.0) for s in ("median", "p20")] + [
        dict(base, metric="throughput", stat="median", value=1000.0, unit="items/s", note="")
    ]


def visit_samples(monkeypatch, attempts: list[list[bool]]) -> dict:
    attempt, _ = scripted(attempts)
    monkeypatch.setattr(latency, "time_repeats", lambda work, case, suite, budget: attempt(budget))
    case = SimpleNamespace(mechanism="rala_eager", level="op", device="cpu")  # not compiled: no first call
    return latency.visit_samples(SimpleNamespace(fn=None), case, load_suite(SUITE))


def test_retried_visit_is_recorded_clean_and_counted(monkeypatch):
    samples = visit_samples(monkeypatch, [[True] * 5, [True] * 5, [False] * 5])
    assert samples == {"latency": [10.0] * 5, "preempted": [0.0] * 5, "retries": [2.0]}
    rows = annotate(latency_rows("over 1 round"), [Visit.of(0, 0, samples)])
    assert [r["metric"] for r in rows] == ["latency", "latency", "preempted", "retries", "throughput"]
    assert rows[2]["value"] == 0.0 and rows[3]["value"] == 2.0 and rows[3]["unit"] == "count"
    assert not any(is_contended(r["note"]) for r in rows)


def test_always_preempted_visit_is_contended(monkeypatch):
    samples = visit_samples(monkeypatch, [[True] * 5] * 3)
    rows = annotate(latency_rows("over 1 round"), [Visit.of(0, 0, samples)])
    assert {r["note"] for r in rows if r["metric"] == "latency"} == {
        "over 1 round; contended: 100% of repeats preempted"
    }
    assert rows[2]["metric"] == "preempted" and rows[2]["value"] == 1.0 and rows[3]["value"] == 2.0
    assert rows[4]["note"] == ""  # throughput keeps its note; the case is marked through its latency rows


def test_round_values_decide_with_rounds_and_sweeps():
    clean, hit = (0.0,) * 4, (1.0,) * 4
    fast, slow = (1.0,) * 4, (9.0,) * 4
    # round 0: its fastest sweep is clean (the slow preempted sweep is not its value); round 1: the only sweep is hit
    visits = [Visit(0, 0, fast, clean), Visit(0, 1, slow, hit), Visit(1, 0, slow, hit, retries=2)]
    marks = case_marks(visits)
    assert (marks.contended_rounds, marks.rounds, marks.retries) == (1, 2, 2)
    assert (
        marks.preempted == pytest.approx(8 / 12) and marks.note() == "contended: 1 of 2 round values mostly preempted"
    )
    assert not case_marks([Visit(0, 0, slow, hit), Visit(0, 1, fast, clean), Visit(1, 0, fast, clean)]).contended
    assert case_marks([Visit(0, 0, fast)]) is None  # nothing measured (a GPU without nvidia-smi): no rows added
    assert annotate(latency_rows(), [Visit(0, 0, fast)]) == latency_rows()


def test_a_resumed_case_gets_its_finished_rounds_flags_back():
    latency = {0: [[1.0, 2.0], [3.0, 4.0]], 1: [[5.0, 6.0], [7.0, 8.0]]}
    flags = {0: [[1.0, 1.0], [0.0, 0.0]]}  # round 1 written by an attnbench without flags
    retries = {0: [[2.0], [0.0]]}
    visits = contention.visits_from_samples(latency, flags, retries)
    assert [(v.round, v.sweep, v.preempted, v.retries) for v in visits] == [
        (0, 0, (1.0, 1.0), 2),
        (0, 1, (0.0, 0.0), 0),
        (1, 0, (), 0),
        (1, 1, (), 0),
    ]
    assert case_marks(visits).contended_rounds == 1  # round 0's value is its fastest sweep, which was preempted


def test_gpu_visit_is_flagged_by_throttle_reasons(monkeypatch):
    monkeypatch.setattr(latency, "time_fn", lambda fn, **kw: Timings([0.001] * 3))
    case, suite = SimpleNamespace(mechanism="rala_eager", device="cuda", level="op"), load_suite(SUITE)
    for before, after, flags in ((0x1, 0x4, [False] * 3), (0x1, 0x40, [True] * 3), (None, None, [])):
        readings = iter([before, after])
        monkeypatch.setattr(latency, "gpu_throttle_reasons", lambda readings=readings: next(readings))
        out = latency.time_repeats(SimpleNamespace(fn=None), case, suite)
        assert out == pytest.approx([1.0] * 3) and out.preempted == flags
    assert preemption.throttled(0x20, None) and not preemption.throttled(0x1 | 0x2 | 0x4 | 0x10, 0x100)


# -- where users read it ---------------------------------------------------------------------------------------
def write_rounds(path: Path, medians: dict[str, list[float]], contended: set[str]) -> Path:
    """A results CSV with median rows (the contended cases' notes marked) and FILE.samples.csv of round values."""
    writer = results.ResultsWriter(path)
    for i, (case_id, rounds) in enumerate(medians.items()):
        row = {c: "" for c in results.COLUMNS} | {
            **{"schema_version": 2, "run_id": "r", "case_id": case_id, "suite": "s", "mechanism": f"m{i}"},
            **{"level": "op", "pass": "fwd", "device": "cpu", "dtype": "fp32", "batch": 1, "height": 7, "width": 7},
            **{"metric": "latency", "unit": "ms", "stat": "median", "status": "ok", "source": "measured"},
            "value": float(np.median(rounds)),
            "note": "over 5 round medians"
            + ("; contended: 5 of 5 round values mostly preempted" if case_id in contended else ""),
        }
        writer.write_rows([row])
        for r, value in enumerate(rounds):
            writer.write_samples(case_id, "latency", [value] * 3, round=r)
    writer.close()
    return path


def test_gate_and_compare_call_a_contended_case_unsteady(tmp_path):
    rng = np.random.default_rng(0)
    base = {f"c{i}": list(1.0 + 0.01 * rng.standard_normal(5)) for i in range(3)}
    new = dict(base, c1=[v * 2 for v in base["c1"]], c2=[v * 2 for v in base["c2"]])  # c1 contended, c2 regressed
    a = write_rounds(tmp_path / "a.csv", base, set())
    b = write_rounds(tmp_path / "b.csv", new, {"c1"})
    result = gate(a, b)
    verdicts = {c.key: c.verdict for c in result.cases}
    assert verdicts == {"c0": "unchanged", "c1": "unsteady", "c2": "regression"}
    assert result.exit_code == 1 and [c.key for c in result.regressions] == ["c2"]
    assert "1 unsteady (contended, not judged)" in result.summary()
    assert any("1 of 3 cases are unsteady" in n and "quiet machine" in n for n in result.notes)
    only = gate(a, write_rounds(tmp_path / "c.csv", dict(base, c1=[v * 2 for v in base["c1"]]), {"c1"}))
    assert only.exit_code == 0 and not only.regressions and {c.verdict for c in only.cases} == {"unchanged", "unsteady"}

    frame, meta = compare_runs(a, b)
    assert frame.set_index("mechanism")["unsteady"].to_dict() == {"m0": False, "m1": True, "m2": False}
    assert meta.n_unsteady == 1 and "1 unsteady" in meta.summary()
    assert meta.geomean_ratio == pytest.approx(math.sqrt(frame["ratio"][0] * frame["ratio"][2]))
    cases = contention_table(frame, meta)
    assert cases.loc["m1 op fwd fp32 b1 7x7", "status"] == "unsteady" and cases["status"].tolist().count("") == 2


def contention_table(frame, meta):
    from attnbench.compare import comparison_tables

    table = comparison_tables(frame, meta)[0].frame
    return table.rename(index=lambda s: " ".join(str(s).split()))


@pytest.fixture
def marked_run(tmp_path) -> pd.DataFrame:
    """Two mechanisms at two grids; softmax_sdpa at 14x14 contended."""
    rows = []
    for mech in ("rala_eager", "softmax_sdpa"):
        for side in (7, 14):
            note = "contended: 90% of repeats preempted" if (mech, side) == ("softmax_sdpa", 14) else ""
            base = {c: "" for c in results.COLUMNS} | {
                **{"schema_version": 2, "run_id": "r", "case_id": f"{mech}{side}", "suite": "s", "mechanism": mech},
                **{"level": "op", "pass": "fwd", "device": "cpu", "dtype": "fp32", "batch": 1, "heads": 1, "dim": 64},
                **{"height": side, "width": side, "tokens": side * side, "head_dim": 64, "family": "f"},
                **{"metric": "latency", "unit": "ms", "status": "ok", "source": "measured", "note": note},
            }
            rows += [
                dict(base, stat=s, value=side * (2.0 if mech == "rala_eager" else 1.0) * f)
                for s, f in (("median", 1), ("p20", 0.9), ("p80", 1.1))
            ]
    writer = results.ResultsWriter(tmp_path / "m.csv")
    writer.write_rows(rows)
    writer.close()
    return results.load(tmp_path / "m.csv")


def test_tables_mark_a_contended_cell_with_a_legend(marked_run):
    pivot = analysis.pivot_tables(marked_run, "latency")[0]
    cells = tables.format_pivot(pivot)
    assert cells.frame.loc["softmax_sdpa", "14x14"].endswith(contention.MARK)
    assert contention.MARK not in cells.frame.loc["softmax_sdpa", "7x7"] + cells.frame.loc["rala_eager", "14x14"]
    assert cells.notes == (contention.LEGEND,)
    md = export.to_markdown(pivot)
    assert f"14 ±10% {contention.MARK} |" in md and f"_{contention.LEGEND}_" in md
    tex = export.to_latex(pivot)
    assert r"14 $\pm$10\% \dag{}" in tex and r"\par\footnotesize \dag{} contended" in tex
    tidy = export.tidy([pivot]).set_index(["mechanism", "column"])["contended"]
    assert tidy[("softmax_sdpa", "14x14")] and tidy.sum() == 1
    speedups = tables.format_pivot(analysis.speedup_tables(marked_run, "rala_eager")[0])
    assert speedups.frame.loc["softmax_sdpa", "14x14"].endswith(contention.MARK) and speedups.notes
    quiet = tables.format_pivot(analysis.pivot_tables(marked_run[marked_run.note == ""], "latency")[0])
    assert quiet.notes == ()

    run_table = summary.summary_tables(marked_run)[0]
    assert run_table.frame.loc["softmax_sdpa", "14x14"].endswith(contention.MARK) and run_table.notes
    assert summary.contended_line(marked_run).startswith("1 case contended")


def test_plots_draw_contended_points_hollow(marked_run, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    figures = []
    monkeypatch.setattr(export, "_save", lambda fig, out_dir, stem, formats: figures.append((stem, fig)) or [])
    export.write_plots(marked_run, tmp_path, baseline="rala_eager")
    for stem, fig in figures:
        ax = fig.axes[0]
        hollow = [ln for ln in ax.lines if ln.get_markerfacecolor() in ("white", (1.0, 1.0, 1.0, 1.0))]
        points = [(x, y) for ln in hollow for x, y in zip(ln.get_xdata(), ln.get_ydata())]
        assert [x for x, _ in points] == [196.0], stem  # the 14x14 softmax_sdpa point only
        assert export.HOLLOW_LABEL in ax.get_legend_handles_labels()[1]
    assert {s for s, _ in figures} == {
        "latency-op-fwd-fp32-cpu-b1-h1-d64",
        "speedup-vs-rala_eager-op-fwd-fp32-cpu-b1-h1-d64",
    }


# -- for real ----------------------------------------------------------------------------------------------------
TINY_RUN = {
    "name": "hogs",
    "mechanisms": ["linear_elu"],
    "resolution": [7],
    "device": "cpu",
    "metrics": ["latency"],
    "verify": False,
    "warmup": 2,
    "repeats": {"min": 20, "max": 400, "min_time_s": 0.1},
}


def _latency(df: pd.DataFrame) -> tuple[float, str, float]:
    lat = df[(df.metric == "latency") & (df.stat == "median")].iloc[0]
    frac = df.loc[df.metric == "preempted", "value"].iloc[0]
    return float(lat["value"]), str(lat["note"]), float(frac)


@pytest.mark.slow
def test_a_run_beside_cpu_hogs_is_flagged_or_still_right_and_a_quiet_one_is_not_flagged():
    """Quiet (threads: auto, which leaves cores other tests use): not contended. Beside three busy-looping
    processes with 2 explicit threads: one warning naming the numbers, and the row flagged contended or its
    median still within 3x of the quiet one."""
    quiet, note, frac = _latency(attnbench.run(TINY_RUN, rounds=1))
    assert not is_contended(note) and frac < preemption.MOSTLY, (note, frac)
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(3)]
    try:
        time.sleep(0.3)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            busy, note, frac = _latency(attnbench.run(dict(TINY_RUN, threads=2), rounds=1))
    finally:
        for proc in hogs:
            proc.kill()
        for proc in hogs:
            proc.wait()
    told = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(told) == 1 and told[0].startswith("threads: 2 but only"), told
    print(f"quiet {quiet:.3f} ms; beside hogs {busy:.3f} ms, {frac:.0%} preempted, note {note!r}")
    assert is_contended(note) or busy <= 3 * quiet, (busy, quiet, note, frac)
