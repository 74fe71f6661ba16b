"""Execute cases, turn every outcome (measurement or fault) into rows, append them durably.

A failing case never kills the sweep: exceptions become rows with status error / oom / timeout
and a one-line message; unavailable mechanisms and unsupported shapes become skipped rows.
`resume=True` skips cases whose case_id already has rows in the output file.
"""

from __future__ import annotations

import datetime as _dt
import gc
import os
import traceback
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from attnbench import registry, rounds
from attnbench.errors import AttnbenchError, MechanismUnavailable
from attnbench.measure.env import env_id as make_env_id
from attnbench.measure.env import fingerprint, gpu_telemetry
from attnbench.measure.memory import peak_memory
from attnbench.measure.timing import CaseTimeout, RepeatPolicy, time_fn
from attnbench.plan import Case, plan
from attnbench.predict import too_slow_reason
from attnbench.registry import Shape
from attnbench.results import SCHEMA_VERSION, ResultsWriter, done_case_ids
from attnbench.suite import Suite
from attnbench.userinput import slug
from attnbench.workload import StaticRow, Workload, mixer_workload, op_workload

STAT_ORDER = ("median", "mean", "min", "p20", "p80", "std", "n")


class Progress(Protocol):
    """Callbacks of a run, counted in case-rounds (cases x rounds; a case that ends early counts its
    remaining rounds as done). An optional `round_start(index, rounds)` is called when a round begins."""

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
    prior: dict[str, dict[int, list[float]]]  # case_id -> {round: latency repeats} of finished timing rounds
    rounds: int
    summary: RunSummary
    step: int  # (case, round) steps done, for progress
    ended: set[str] = field(default_factory=set)  # cases with rows: done before, finished, or failed earlier

    def pending(self, case: Case, round_index: int) -> bool:
        return case.case_id not in self.ended and round_index not in self.prior.get(case.case_id, {})

    def earlier(self, case: Case) -> list[list[float]]:
        """The case's latency repeats of its finished earlier rounds, in round order."""
        return [v for _, v in sorted(self.prior.get(case.case_id, {}).items())]


def this_worker(pid: int | None = None) -> str:
    """The `worker` column: host/pid of the process that measured the row."""
    import socket

    return f"{socket.gethostname()}/pid{pid or os.getpid()}"


def default_out(suite: Suite, results_dir: str | Path = "results") -> Path:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return Path(results_dir) / f"{slug(suite.name)}-{stamp}.csv"  # the name never chooses a directory


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


PRIMARY_ROW_METRIC = {"latency": "latency", "memory": "peak_memory", "flops": "flops", "rank": "out_erank",
                      "accuracy": "top1"}  # fmt: skip


def primary_metric(suite: Suite) -> str:
    """The row metric a skipped/failed case's status row is filed under (latency when timed)."""
    for metric in ("latency", "rank", "accuracy", "memory", "flops"):
        if metric in suite.metrics:
            return PRIMARY_ROW_METRIC[metric]
    return PRIMARY_ROW_METRIC[suite.metrics[0]]


def apply_precision_settings(suite: Suite) -> None:
    """TF32 off unless the suite says `tf32: true` (DESIGN: measurement rules); the fingerprint records it."""
    torch.backends.cuda.matmul.allow_tf32 = suite.tf32
    torch.backends.cudnn.allow_tf32 = suite.tf32
    torch.set_float32_matmul_precision("high" if suite.tf32 else "highest")


def classify_exception(exc: BaseException) -> tuple[str, str]:
    """(status, one-line message) for an exception raised by a case."""
    if isinstance(exc, MechanismUnavailable):
        return "skipped", f"unavailable: {exc}"
    if isinstance(exc, CaseTimeout):
        return "timeout", str(exc)
    if isinstance(exc, AttnbenchError):  # a user-facing message: no class name in front of it
        return "error", (str(exc).strip().splitlines() or [""])[0][:500]
    text = f"{type(exc).__name__}: {exc}".strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    oom_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None), MemoryError) if t is not None)
    lowered = text.lower()
    if isinstance(exc, oom_types) or any(m in lowered for m in ("out of memory", "can't allocate memory",
                                                                 "cannot allocate memory")):  # fmt: skip
        return "oom", first[:300]
    return "error", first[:500]


class Runner:
    def __init__(self, suite: Suite, out: str | Path, *, resume: bool = False, progress: Progress | None = None,
                 debug: bool = False, in_worker: bool = False, executor: Any = None):  # fmt: skip
        self.suite = suite
        self.out = Path(out)
        self.resume = resume
        self.progress = progress
        self.debug = debug
        self.in_worker = in_worker
        self.executor = executor  # None: this process (and its round workers) runs the sweep
        self.run_id = uuid.uuid4().hex[:10]
        self.env_id = ""
        self._oom_at: dict[tuple, int] = {}
        self.pool = None
        self.peaks: dict[str, Any] | None = None  # measured peaks (env --probe), for frac_* rows

    # -- the sweep ---------------------------------------------------------------------------------
    def run(self) -> RunSummary:
        if self.executor is not None:  # --workers / --executor: attnbench.executors drives the sweep
            return self.executor.run(self)
        suite = self.suite
        if suite.hardware:
            raise AttnbenchError(f"the suite names hardware kinds ({', '.join(suite.hardware)}): run it with "
                                 "--executor ray on a cluster that has them")  # fmt: skip
        state = self.open_run()
        n_rounds = state.rounds
        unit_list = rounds.units(state.cases)
        try:
            for round_index in range(n_rounds):
                final = round_index == n_rounds - 1
                if self.progress and hasattr(self.progress, "round_start"):
                    self.progress.round_start(round_index, n_rounds)
                if isolation_mode(suite) == "process":  # a fresh worker process for every round
                    from attnbench.isolation import WorkerPool

                    self.pool = WorkerPool(suite, self.run_id, self.env_id, suite.memory_limit_gb)
                try:
                    for case in rounds.round_order(unit_list, round_index, suite.order_seed, n_rounds):
                        if not state.pending(case, round_index):
                            continue
                        if self.progress:
                            self.progress.case_start(state.step, case)
                        if self.pool is not None:
                            self.pool.worker = ""  # set when the case reaches the worker (not for planned skips)
                        rows, samples = self.run_case(case, prior=state.earlier(case), time_only=not final)
                        worker = (self.pool.worker if self.pool is not None else "") or this_worker()
                        self.record(state, case, round_index, rows, samples, worker=worker, concurrent=1)
                finally:
                    if self.pool is not None:
                        self.pool.close()
                        self.pool = None
        finally:
            state.writer.close()
        return state.summary

    def record(self, state: RunState, case: Case, round_index: int, rows: list[dict[str, Any]],
               samples: dict[str, list[float]], *, worker: str, concurrent: int | None) -> str:  # fmt: skip
        """Write one (case, round)'s samples, then (last round or failure) its rows; returns the status."""
        n_rounds, final = state.rounds, round_index == state.rounds - 1
        for metric, values in samples.items():  # samples first: rows mark the case done
            state.writer.write_samples(case.case_id, metric, values, round=round_index)
        if not final and not rows:  # a timing-only round went well: keep its repeats
            state.prior.setdefault(case.case_id, {})[round_index] = samples.get("latency", [])
            status = "ok"
        else:
            if not final and n_rounds > 1 and rows and rows[0]["status"] != "skipped":
                for row in rows:
                    if row.get("message"):
                        row["message"] = f"round {round_index + 1}/{n_rounds}: {row['message']}"
            for row in rows:
                row["worker"], row["concurrent"] = worker, concurrent
            state.writer.write_rows(rows)
            state.ended.add(case.case_id)
            status = rows[0]["status"] if rows else "error"
            state.summary.statuses[status] += 1
            state.step += n_rounds - round_index - 1  # its later rounds will not run
        state.step += 1
        if self.progress:  # index = case-rounds accounted for so far
            self.progress.case_end(state.step, case, status, rows)
        return status

    def open_run(self) -> RunState:
        """Everything before the first case: plan, resume checks, the writer, env and suite files, what a
        resumed run already has (cases with rows, rounds in the samples file), progress start."""
        suite = self.suite
        if suite.threads is not None:
            torch.set_num_threads(suite.threads)
        apply_precision_settings(suite)
        cases = plan(suite)
        if self.out.is_dir():
            raise AttnbenchError(f"--out {self.out} is a directory; give a file name ending in .csv")
        done = done_case_ids(self.out) if self.resume else set()
        if not self.resume and self.out.exists() and self.out.stat().st_size > 0:
            raise AttnbenchError(f"{self.out} already exists; pass --resume to continue it or choose another --out")
        if self.resume:
            check_resume_matches(self.out, suite)
        writer = ResultsWriter(self.out)
        fp = fingerprint(suite.device, suite.threads)
        self.env_id = make_env_id(fp)
        writer.write_env(self.env_id, fp)
        self.peaks = _cached_peaks(suite.device, fp)
        writer.write_suite(suite.to_yaml())
        timed = "latency" in suite.metrics
        n_rounds = suite.rounds if timed else 1
        prior = rounds.prior_from_samples(self.out) if self.resume and n_rounds > 1 else {}
        prior = {k: {r: v for r, v in by.items() if r < n_rounds - 1} for k, by in prior.items() if k not in done}
        summary = RunSummary(self.out, self.run_id, len(cases), resumed=sum(c.case_id in done for c in cases),
                             rounds=n_rounds)  # fmt: skip
        total_steps = len(cases) * n_rounds
        steps_done = sum(c.case_id in done for c in cases) * n_rounds + sum(len(v) for v in prior.values())
        if self.progress:
            self.progress.start(total_steps, steps_done)
        return RunState(cases, writer, done, prior, n_rounds, summary, steps_done, ended=set(done))

    # -- one case ----------------------------------------------------------------------------------
    def _row(self, case: Case, started: str, metric: str, value: float | None, unit: str, stat: str = "value",
             status: str = "ok", message: str = "", note: str = "",
             source: str = "measured") -> dict[str, Any]:  # fmt: skip
        row = case.row_fields()
        row.update(schema_version=SCHEMA_VERSION, run_id=self.run_id, metric=metric, value=value, unit=unit,
                   stat=stat, status=status, message=message, source=source, note=note, env_id=self.env_id,
                   started_at=started)  # fmt: skip
        return row

    def status_row(self, case: Case, started: str, status: str, message: str) -> dict[str, Any]:
        return self._row(case, started, primary_metric(self.suite), None, "", status=status, message=message)

    def _oom_key(self, case: Case) -> tuple:
        return (case.mechanism, case.level, case.variant, case.pass_, case.dtype, case.height, case.width,
                case.heads, case.dim, case.hardware)  # fmt: skip

    def run_case(self, case: Case, *, prior: list[list[float]] | None = None, time_only: bool = False,
                 pool: Any = None) -> tuple[list[dict[str, Any]], dict[str, list[float]]]:  # fmt: skip
        """Rows of one case in one round: planned skips, predicted OOMs and prunes here; the rest measured
        in-process or in the worker. time_only (rounds before the last): latency samples and no rows when
        all went well; `prior`: the latency repeats of the case's earlier rounds (see attnbench.rounds)."""
        started = _now()
        if case.skip:
            return [self.status_row(case, started, "skipped", case.skip)], {}
        oom_batch = self._oom_at.get(self._oom_key(case))
        if oom_batch is not None and case.batch > oom_batch:
            message = f"oom_predicted: batch {oom_batch} ran out of memory"
            return [self.status_row(case, started, "skipped", message)], {}
        pruned = prune_reason(case, self.suite) or too_slow_reason(case, self.suite, self.peaks)
        if pruned:
            return [self.status_row(case, started, "skipped", pruned)], {}
        pool = pool if pool is not None else self.pool
        if pool is not None:
            try:
                tag, payload = pool.run((case, prior, time_only), self.suite.timeout_s,
                                             self.suite.timeout_s * 1.1 + WORKER_MARGIN_S)  # fmt: skip
            except RuntimeError as exc:  # the worker could not start (e.g. memory_limit_gb too small)
                tag, payload = "crash", str(exc)
            if tag == "done":
                rows, samples = payload
            else:
                rows, samples = [self.status_row(case, started, tag, payload)], {}
        else:
            rows, samples = self.measure_case(case, started, prior=prior, time_only=time_only)
        if rows and rows[0]["status"] == "oom":
            key = self._oom_key(case)
            self._oom_at[key] = min(case.batch, self._oom_at.get(key, case.batch))
        return rows, samples

    def measure_case(
        self, case: Case, started: str | None = None, *, prior: list[list[float]] | None = None,
        time_only: bool = False,
    ) -> tuple[list[dict[str, Any]], dict[str, list[float]]]:
        """Measure one case; any exception becomes a status row (the sweep goes on)."""
        started = started or _now()
        try:
            if time_only:
                rows, samples = [], {"latency": self._time(self.build_workload(case), case)}
            else:
                rows, samples = self._measure(case, started, prior or [])
        except Exception as exc:  # a failing case becomes rows; the sweep goes on
            if self.debug:
                traceback.print_exc()
            status, message = classify_exception(exc)
            if isinstance(exc, _Partial):
                rows = [self.status_row(case, started, "skipped", message)]
                rows += [self._row(case, started, r.metric, r.value, r.unit, note=r.note, source=r.source)
                         for r in exc.rows]  # fmt: skip
                return rows, {}
            rows, samples = [self.status_row(case, started, status, message)], {}
        finally:
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        return rows, samples

    def build_workload(self, case: Case) -> Workload:
        mech = registry.get(case.mechanism)
        common = dict(batch=case.batch, dtype=case.dtype, device=case.device, pass_=case.pass_)
        if case.level == "op":
            return op_workload(mech, heads=case.heads, height=case.height, width=case.width,
                               head_dim=case.head_dim, options=case.options_dict, **common)  # fmt: skip
        if case.level == "mixer":
            return mixer_workload(mech, heads=case.heads, height=case.height, width=case.width, dim=case.dim,
                                  options=case.options_dict, **common)  # fmt: skip
        from attnbench.models.workload import build_model_workload

        return build_model_workload(case.variant, case.mechanism, height=case.height, width=case.width,
                                    options=case.options_dict, **common)  # fmt: skip

    def _time(self, work: Workload, case: Case) -> list[float]:
        """Latency repeats of one round in ms (warm-up outside; repeat policy of the suite)."""
        suite = self.suite
        policy = RepeatPolicy(suite.repeats.min, suite.repeats.max, suite.repeats.min_time_s, suite.repeats.target_ci)
        secs = time_fn(work.fn, device=case.device, warmup=suite.warmup, policy=policy, timeout_s=suite.timeout_s,
                       flush_l2=suite.flush_l2 and case.level == "op", cuda_graph=suite.cuda_graphs)  # fmt: skip
        return [s * 1e3 for s in secs]

    def _measure(self, case: Case, started: str,
                 prior: list[list[float]]) -> tuple[list[dict[str, Any]], dict[str, list[float]]]:  # fmt: skip
        suite = self.suite
        rows: list[dict[str, Any]] = []
        samples: dict[str, list[float]] = {}

        def add(metric, value, unit, stat="value", note="", source="measured"):
            rows.append(self._row(case, started, metric, value, unit, stat=stat, note=note, source=source))

        static: list[StaticRow] = []
        if "rank" in suite.metrics:
            static += self._rank_rows(case)
        if "accuracy" in suite.metrics:
            static += self._accuracy_rows(case)
        elif case.level == "model":  # the paper's accuracy beside the costs (source=reported, cited)
            from attnbench.models.reported import reported_rows

            static += reported_rows(case.variant)
        timing = {"latency", "memory", "flops"} & set(suite.metrics)
        median_s = None
        if timing and suite.verify and case.level in ("op", "mixer"):
            verdict = self._verify(case)
            if verdict is not None:
                status = "ok" if verdict.ok else "error"
                message = "" if verdict.ok else verdict.message()
                rows.append(self._row(case, started, "rel_err", verdict.rel_err, "", status=status, message=message,
                                      note=f"output {verdict.note}; tolerance {verdict.tolerance:.3g}"))  # fmt: skip
                if verdict.grad_rel_err is not None:
                    rows.append(self._row(case, started, "grad_rel_err", verdict.grad_rel_err, "", status=status,
                                          message=message, note=f"grads {verdict.note}"))  # fmt: skip
                if not verdict.ok:  # a wrong result's timing means nothing: report the error, skip timing
                    return [self.status_row(case, started, "error", message)] + rows, samples
        if timing:
            work = self.build_workload(case)
            static = list(work.static) + static
            if "latency" in suite.metrics:
                samples["latency"] = self._time(work, case)
                stats, note = rounds.latency_summary(samples["latency"], prior)
                for stat in STAT_ORDER:
                    add("latency", stats[stat], "count" if stat == "n" else "ms", stat=stat, note=note)
                median_s = stats["median"] / 1e3
                add("throughput", work.items / median_s, "items/s", stat="median")
                add("tokens_per_s", work.tokens / median_s, "tokens/s", stat="median")
            if median_s and case.device == "cuda":  # clocks/power/temperature right after the timed repeats
                for metric, (value, unit) in gpu_telemetry().items():
                    add(metric, value, unit, note="nvidia-smi, read after the timed repeats")
            if "memory" in suite.metrics:
                peak, note = peak_memory(work.fn, case.device)
                add("peak_memory", float(peak), "B", note=note)
            if "flops" in suite.metrics and case.level in ("op", "mixer"):
                self._cost_rows(case, work, median_s, add)
            del work
        for s in static:
            add(s.metric, s.value, s.unit, note=s.note, source=s.source)
            if s.metric == "flops" and median_s and s.source == "measured":
                add("achieved_tflops", s.value / median_s / 1e12, "TFLOP/s", stat="median", note=s.note)
        if not rows:
            raise AttnbenchError(f"no metric produced rows for metrics {list(suite.metrics)}")
        return rows, samples

    def _verify(self, case: Case):
        from attnbench import verify

        mech = registry.get(case.mechanism)
        common = dict(batch=case.batch, heads=case.heads, height=case.height, width=case.width, dtype=case.dtype,
                      device=case.device, pass_=case.pass_)  # fmt: skip
        if case.level == "op":
            return verify.verify_op(mech, head_dim=case.head_dim, options=case.options_dict, **common)
        return verify.verify_mixer(mech, dim=case.dim, options=case.options_dict, **common)

    def _cost_rows(self, case: Case, work: Workload, median_s: float | None, add) -> None:
        mech = registry.get(case.mechanism)
        shape = Shape(case.batch, case.heads, case.height, case.width, case.head_dim, case.dim)
        try:
            flops = float(_with_options(mech.flops, case.options_dict)(shape, level=case.level, pass_=case.pass_))
        except NotImplementedError:
            flops = None
        if flops is not None:
            add("flops", flops, "FLOP", note="analytic")
            if median_s:
                add("achieved_tflops", flops / median_s / 1e12, "TFLOP/s", stat="median", note="analytic")
                self._fraction_rows(add, case, achieved_tflops=flops / median_s / 1e12)
        if case.pass_ == "fwd":
            try:
                nbytes = float(_with_options(mech.bytes, case.options_dict)(shape, level=case.level, dtype=case.dtype))
            except NotImplementedError:
                nbytes = None
            if nbytes is not None:
                add("bytes", nbytes, "B", note="analytic minimum traffic")
                if median_s:
                    add("achieved_gbps", nbytes / median_s / 1e9, "GB/s", stat="median", note="analytic bytes")
                    self._fraction_rows(add, case, achieved_gbps=nbytes / median_s / 1e9)
        counted = _count_flops(work.fn) if mech.flop_counter_safe else None
        if counted is not None:
            add("flops_counted", float(counted), "FLOP", note="flopcountermode")

    def _fraction_rows(self, add, case: Case, **achieved: float) -> None:
        """frac_bandwidth / frac_flops against the peaks measured by `attnbench env --probe`."""
        if not self.peaks:
            return
        from attnbench.measure.peaks import fractions

        key = self.peaks.get("key", "")
        for metric, value in fractions(self.peaks, dtype=case.dtype, **achieved).items():
            what = "copy bandwidth" if metric == "frac_bandwidth" else f"{case.dtype} matmul peak"
            add(metric, value, "fraction", stat="median", note=f"vs measured {what} (peaks {key})")

    def _rank_rows(self, case: Case) -> list[StaticRow]:
        from attnbench.measure.rank import rank_rows

        mech = registry.get(case.mechanism)
        weights = case.options_dict.get("weights", "random")
        return rank_rows(mech, level=case.level, batch=case.batch, heads=case.heads, height=case.height,
                         width=case.width, dim=case.dim, dtype=case.dtype, device=case.device,
                         options={k: v for k, v in case.options_dict.items() if k != "weights"},
                         weights=weights)  # fmt: skip

    def _accuracy_rows(self, case: Case) -> list[StaticRow]:
        from attnbench.models.reported import reported_rows

        rows = list(reported_rows(case.variant))
        spec = self.suite.checkpoints.get(case.variant)
        if self.suite.data is None or not spec or not spec.get("path"):
            missing = "data:" if self.suite.data is None else f"checkpoints.{case.variant}.path"
            raise _Partial(rows, f"no measured accuracy: set `{missing}` in the suite to evaluate")
        from attnbench.models.imagenet import accuracy_rows

        try:
            rows += accuracy_rows(case.variant, data=self.suite.data, checkpoint=spec["path"],
                                  ema=spec.get("ema", False),
                                  image_size=case.height, batch_size=case.batch, device=case.device,
                                  dtype=case.dtype, num_workers=min(4, os.cpu_count() or 1))  # fmt: skip
        except AttnbenchError as exc:
            raise _Partial(rows, str(exc)) from None
        return rows


class _Partial(AttnbenchError):
    """Some rows could be produced (e.g. reported accuracy) but the measurement could not."""

    def __init__(self, rows: list[StaticRow], message: str):
        super().__init__(message)
        self.rows = rows


def _with_options(cost_fn, options: dict[str, Any]):
    """`cost_fn` with the case's options it accepts bound as keywords (performer features, gate=False)."""
    import functools

    return functools.partial(cost_fn, **registry.accepted_options(cost_fn, options))


RESUME_FREE_KEYS = {"timeout_s", "isolation", "memory_limit_gb"}  # may change between a run and its resume


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
    diff = sorted(k for k in set(stored) | set(current)
                  if k not in RESUME_FREE_KEYS and stored.get(k) != current.get(k))  # fmt: skip
    if diff:
        raise AttnbenchError(f"--resume: {out} was run with different settings ({', '.join(diff)}); "
                             "resume with the same suite and --set values, or choose another --out")  # fmt: skip


def _cached_peaks(device: str, fp: dict[str, Any]) -> dict[str, Any] | None:
    try:
        from attnbench.measure.peaks import load_peaks

        return load_peaks(device, fp=fp)
    except Exception:  # a corrupt cache must not stop a run; the rows just lack frac_*
        return None


WORKER_MARGIN_S = 2.0  # the worker checks timeout_s between calls; the parent kills a call that hangs
PRUNE_FRACTION = 0.9


def isolation_mode(suite: Suite) -> str:
    """`auto` = process on GPU (a fault there can poison the context) and wherever timed cases run in several
    rounds (each round a fresh process, attnbench.rounds); inprocess for a single-round CPU run."""
    if suite.isolation == "auto":
        several = suite.rounds > 1 and "latency" in suite.metrics
        return "process" if suite.device == "cuda" or several else "inprocess"
    return suite.isolation


def available_memory(suite: Suite) -> int | None:
    """Bytes a case may use: GPU total memory, or CPU available memory (capped by memory_limit_gb)."""
    if suite.device == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info()[1])
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable"):
                avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    if suite.memory_limit_gb:
        limit = int(suite.memory_limit_gb * 2**30)
        avail = min(avail, limit) if avail else limit
    return avail


def predicted_bytes(case: Case) -> float | None:
    """Analytic memory need: minimum traffic (inputs + outputs), x3 for fwd_bwd (grads and saved
    activations), plus the mechanism's `workspace_bytes` (e.g. materialised N x N scores) if declared."""
    if case.level == "model":
        return None
    mech = registry.get(case.mechanism)
    shape = Shape(case.batch, case.heads, case.height, case.width, case.head_dim, case.dim)
    try:
        need = float(_with_options(mech.bytes, case.options_dict)(shape, level=case.level, dtype=case.dtype))
    except NotImplementedError:
        return None
    if case.pass_ == "fwd_bwd":
        need *= 3
    workspace = getattr(mech, "workspace_bytes", None)
    if workspace is not None:
        need += float(workspace(shape, level=case.level, dtype=case.dtype, pass_=case.pass_))
    return need


def prune_reason(case: Case, suite: Suite) -> str | None:
    try:
        need = predicted_bytes(case)
    except Exception:  # a plugin's cost function failing: no prediction (the case itself reports the failure)
        need = None
    if need is None:
        return None
    avail = available_memory(suite)
    if avail and need > PRUNE_FRACTION * avail:
        return (f"pruned: predicted {need / 2**30:.1f} GiB > {PRUNE_FRACTION:.0%} of {avail / 2**30:.1f} GiB "
                "available")  # fmt: skip
    return None


def _count_flops(fn) -> float | None:
    try:
        from attnbench.measure.flops import count_flops
    except ImportError:
        return None
    try:
        return count_flops(fn)
    except Exception:  # counting is best effort: an op FlopCounterMode cannot trace is simply not counted
        return None


def run_suite(suite: Suite, out: str | Path | None = None, *, resume: bool = False,
              progress: Progress | None = None, debug: bool = False, executor: Any = None) -> RunSummary:  # fmt: skip
    """Run every case of `suite`, appending rows to `out` (default results/<suite>-<UTC>.csv); `executor`
    (attnbench.executors) runs the cases on a local worker pool or a Ray cluster instead of this process."""
    return Runner(suite, out or default_out(suite), resume=resume, progress=progress, debug=debug,
                  executor=executor).run()  # fmt: skip
