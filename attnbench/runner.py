"""Run a suite: plan -> execute -> write.

The plan (attnbench.plan) gives the cases; every case runs in `rounds` rounds, each round in a fresh
worker process where isolation is `process` (attnbench.isolation), visiting the cases `sweeps` times
in seeded shuffled orders (attnbench.rounds); attnbench.execute turns each visit into rows and raw
samples; `record` appends them durably (attnbench.results) as each visit finishes. `resume=True` skips
cases whose case_id already has rows in the output file, and rounds complete in its samples file. With an `executor`
(attnbench.executors: local worker pool, Ray) the executor schedules the cases and calls `record`.
"""

from __future__ import annotations

import datetime as _dt
import uuid
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from attnbench import contention, rounds
from attnbench.errors import AttnbenchError
from attnbench.execute import CaseExecutor, prepare_process, this_worker
from attnbench.isolation import WorkerPool
from attnbench.plan import Case, plan
from attnbench.results import ResultsWriter, done_case_ids
from attnbench.suite import Suite
from attnbench.userinput import slug


class Progress(Protocol):
    """Callbacks of a run, counted in visits (cases x rounds x sweeps; a case that ends early counts its
    remaining visits as done). An optional `round_start(index, rounds)` is called when a round begins, an
    optional `notice(text, warn)` before the first case with a line about the run's set-up (its threads)."""

    def start(self, total: int, resumed: int) -> None: ...
    def case_start(self, index: int, case: Case) -> None: ...
    def case_end(self, index: int, case: Case, status: str, rows: list[dict[str, Any]]) -> None: ...


@dataclass
class RunSummary:
    out: Path
    run_id: str
    total: int
    resumed: int
    statuses: Counter = field(default_factory=Counter)
    rounds: int = 1


@dataclass
class RunState:
    """A sweep in progress: the plan, the open writer, and what is measured so far (per case and round)."""

    cases: list[Case]
    writer: ResultsWriter
    done: set[str]  # cases with rows when the run started (--resume)
    prior: dict[str, dict[int, rounds.Sweeps]]  # case_id -> {round: its sweeps' repeats} of finished timing rounds
    rounds: int
    summary: RunSummary
    step: int  # visits (case, round, sweep) done, for progress
    ended: set[str] = field(default_factory=set)  # cases with rows: done before, finished, or failed earlier
    sweeps: int = 1
    current: dict[str, rounds.Sweeps] = field(default_factory=dict)  # case_id -> this round's sweeps so far
    visits: dict[str, list[contention.Visit]] = field(default_factory=dict)  # case_id -> its visits so far

    def pending(self, case: Case, round_index: int) -> bool:
        return case.case_id not in self.ended and round_index not in self.prior.get(case.case_id, {})

    def earlier(self, case: Case) -> rounds.History:
        """The case's finished earlier rounds (in round order) and this round's sweeps so far."""
        done = tuple(v for _, v in sorted(self.prior.get(case.case_id, {}).items()))
        return rounds.History(done, tuple(self.current.get(case.case_id, ())))


def default_out(suite: Suite, results_dir: str | Path = "results") -> Path:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return Path(results_dir) / f"{slug(suite.name)}-{stamp}.csv"  # the name never chooses a directory


def isolation_mode(suite: Suite) -> str:
    """`auto` = process on GPU (a fault there can poison the context) and wherever timed cases run in several
    rounds (each round a fresh process, attnbench.rounds); inprocess for a single-round CPU run."""
    if suite.isolation == "auto":
        several = suite.rounds > 1 and "latency" in suite.metrics
        return "process" if suite.device == "cuda" or several else "inprocess"
    return suite.isolation


class Runner:
    """One run of a suite into `out`. `case_executor` (attnbench.execute.CaseExecutor) measures, and holds the
    run's env_id, peaks and OOM ladder; `pool` is the round's worker (isolation: process)."""

    def __init__(
        self,
        suite: Suite,
        out: str | Path,
        *,
        resume: bool = False,
        progress: Progress | None = None,
        debug: bool = False,
        executor: Any = None,
    ):
        self.suite = suite
        self.out = Path(out)
        self.resume = resume
        self.progress = progress
        self.executor = executor  # None: this process (and its round workers) runs the sweep
        self.run_id = uuid.uuid4().hex[:10]
        self.case_executor = CaseExecutor(suite, self.run_id, debug=debug)
        self.pool: WorkerPool | None = None
        self.threads: int | None = None  # the torch threads of this run's measuring processes (open_run)

    @property
    def env_id(self) -> str:
        return self.case_executor.env_id

    def notice(self, text: str, *, warn: bool = False) -> None:
        """A line for the user about the run's set-up: through the progress display's `notice(text, warn)` where it
        has one; else a warning (RuntimeWarning) when `warn`."""
        if self.progress is not None and hasattr(self.progress, "notice"):
            self.progress.notice(text, warn)
        elif warn:
            warnings.warn(text, RuntimeWarning, stacklevel=3)

    # -- the sweep ---------------------------------------------------------------------------------
    def run(self) -> RunSummary:
        if self.executor is not None:  # --workers / --executor: attnbench.executors drives the sweep
            return self.executor.run(self)
        suite = self.suite
        if suite.hardware:
            raise AttnbenchError(
                f"the suite names hardware kinds ({', '.join(suite.hardware)}): run it with "
                "--executor ray on a cluster that has them"
            )
        state = self.open_run()
        n_rounds = state.rounds
        unit_list = rounds.units(state.cases)
        try:
            for round_index in range(n_rounds):
                final = round_index == n_rounds - 1
                if self.progress and hasattr(self.progress, "round_start"):
                    self.progress.round_start(round_index, n_rounds)
                if isolation_mode(suite) == "process":  # a fresh worker process for every round
                    self.pool = WorkerPool(suite, self.run_id, self.env_id, suite.memory_limit_gb, threads=self.threads)
                try:
                    for sweep in range(state.sweeps):
                        last = final and sweep == state.sweeps - 1
                        for case in rounds.round_order(
                            unit_list, round_index, suite.order_seed, n_rounds, sweep, state.sweeps
                        ):
                            if not state.pending(case, round_index):
                                continue
                            if self.progress:
                                self.progress.case_start(state.step, case)
                            if self.pool is not None:
                                self.pool.worker = ""  # set when the case reaches the worker (not planned skips)
                            rows, samples = self.case_executor.run(
                                case, prior=state.earlier(case), time_only=not last, pool=self.pool
                            )
                            worker = (self.pool.worker if self.pool is not None else "") or this_worker()
                            self.record(
                                state, case, round_index, rows, samples, worker=worker, concurrent=1, sweep=sweep
                            )
                finally:
                    if self.pool is not None:
                        self.pool.close()
                        self.pool = None
        finally:
            state.writer.close()
        return state.summary

    def record(
        self,
        state: RunState,
        case: Case,
        round_index: int,
        rows: list[dict[str, Any]],
        samples: dict[str, list[float]],
        *,
        worker: str,
        concurrent: int | None,
        sweep: int = 0,
    ) -> str:
        """Write one visit's samples (case, round, sweep), then (last visit or failure) its rows; returns the
        status. A task that failed as a whole records its cases at sweep 0."""
        n_rounds = state.rounds
        final = round_index == n_rounds - 1 and sweep == state.sweeps - 1
        for metric, values in samples.items():  # samples first: rows mark the case done
            state.writer.write_samples(case.case_id, metric, values, round=round_index, sweep=sweep)
        if samples.get("latency"):
            state.visits.setdefault(case.case_id, []).append(contention.Visit.of(round_index, sweep, samples))
        if not final and not rows:  # a timing-only visit went well: keep its repeats
            state.current.setdefault(case.case_id, []).append(samples.get("latency", []))
            if sweep == state.sweeps - 1:  # the round is complete
                state.prior.setdefault(case.case_id, {})[round_index] = state.current.pop(case.case_id)
            status = "ok"
        else:
            state.current.pop(case.case_id, None)
            visits = state.visits.pop(case.case_id, [])
            if final:  # its `preempted` and `retries` rows, and `contended` in its latency notes
                rows = contention.annotate(rows, visits)
            if not final and rows and rows[0]["status"] != "skipped":
                where = f"round {round_index + 1}/{n_rounds}"
                where += f", sweep {sweep + 1}/{state.sweeps}" if state.sweeps > 1 else ""
                for row in rows:
                    if row.get("message"):
                        row["message"] = f"{where}: {row['message']}"
            for row in rows:
                row["worker"], row["concurrent"] = worker, concurrent
            state.writer.write_rows(rows)
            state.ended.add(case.case_id)
            status = rows[0]["status"] if rows else "error"
            state.summary.statuses[status] += 1
            state.step += (n_rounds - round_index) * state.sweeps - sweep - 1  # its later visits will not run
        state.step += 1
        if self.progress:  # index = visits accounted for so far
            self.progress.case_end(state.step, case, status, rows)
        return status

    def open_run(self) -> RunState:
        """Everything before the first case: this process readied (threads, precision, fingerprint, peaks), the
        plan, resume checks, the writer, env and suite files, what a resumed run already has (cases with rows,
        rounds in the samples file), progress start."""
        suite = self.suite
        setup = prepare_process(suite, probe=True)  # free cores measured; `threads: auto` chosen here, once
        self.threads = setup.threads
        if setup.warn or (setup.message and self.executor is None):  # executors give their slots threads
            self.notice(setup.message, warn=setup.warn)
        cases = plan(suite)
        if self.out.is_dir():
            raise AttnbenchError(f"--out {self.out} is a directory; give a file name ending in .csv")
        done = done_case_ids(self.out) if self.resume else set()
        if not self.resume and self.out.exists() and self.out.stat().st_size > 0:
            raise AttnbenchError(f"{self.out} already exists; pass --resume to continue it or choose another --out")
        if self.resume:
            check_resume_matches(self.out, suite)
        writer = ResultsWriter(self.out)
        self.case_executor.env_id, self.case_executor.peaks = setup.env_id, setup.peaks
        writer.write_env(setup.env_id, setup.fingerprint)
        writer.write_suite(suite.to_yaml())
        n_rounds, n_sweeps = rounds.visits(suite)
        several = n_rounds > 1 or n_sweeps > 1
        prior = rounds.prior_from_samples(self.out, n_sweeps) if self.resume and several else {}
        prior = {k: {r: v for r, v in by.items() if r < n_rounds - 1} for k, by in prior.items() if k not in done}
        visits = resumed_visits(self.out, n_sweeps, prior) if prior else {}
        summary = RunSummary(
            self.out, self.run_id, len(cases), resumed=sum(c.case_id in done for c in cases), rounds=n_rounds
        )
        total_steps = len(cases) * n_rounds * n_sweeps
        steps_done = (sum(c.case_id in done for c in cases) * n_rounds + sum(len(v) for v in prior.values())) * n_sweeps
        if self.progress:
            self.progress.start(total_steps, steps_done)
        return RunState(
            cases, writer, done, prior, n_rounds, summary, steps_done, ended=set(done), sweeps=n_sweeps, visits=visits
        )


def resumed_visits(out: Path, sweeps: int, prior: dict[str, dict[int, rounds.Sweeps]]) -> dict[str, list]:
    """The visits of the rounds a resumed run keeps (`prior`), with their preempted flags and retries."""
    flags = rounds.prior_from_samples(out, sweeps, "preempted")
    retries = rounds.prior_from_samples(out, sweeps, "retries")
    return {
        case_id: contention.visits_from_samples(by_round, flags.get(case_id, {}), retries.get(case_id, {}))
        for case_id, by_round in prior.items()
    }


RESUME_FREE_KEYS = {"timeout_s", "isolation", "memory_limit_gb", "profile"}  # may change between a run and its resume


def check_resume_matches(out: Path, suite: Suite) -> None:
    """--resume continues the same suite: refuse one whose resolved settings differ (rows would mix)."""
    import yaml

    from attnbench.results import companion

    stored_path = companion(out, "suite.yaml")
    if not stored_path.exists():
        return
    try:
        stored = yaml.safe_load(stored_path.read_text()) or {}
    except (yaml.YAMLError, OSError, UnicodeDecodeError):
        return  # unreadable: the rows' case_ids still make the resume exact per case
    current = suite.resolved
    diff = sorted(
        k for k in set(stored) | set(current) if k not in RESUME_FREE_KEYS and stored.get(k) != current.get(k)
    )
    if diff:
        raise AttnbenchError(
            f"--resume: {out} was run with different settings ({', '.join(diff)}); "
            "resume with the same suite and --set values, or choose another --out"
        )


def run_suite(
    suite: Suite,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    progress: Progress | None = None,
    debug: bool = False,
    executor: Any = None,
) -> RunSummary:
    """Run every case of `suite`, appending rows to `out` (default results/<suite>-<UTC>.csv); `executor`
    (attnbench.executors) runs the cases on a local worker pool or a Ray cluster instead of this process."""
    return Runner(
        suite, out or default_out(suite), resume=resume, progress=progress, debug=debug, executor=executor
    ).run()
