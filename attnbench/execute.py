"""Execute: make a process ready to measure, and measure one case into rows.

`prepare_process` readies this process (mechanisms and plugins, torch threads, precision settings) and
returns its fingerprint, env_id and cached peaks. `CaseExecutor` turns one case (one round of it) into
rows and raw samples: planned skips, predicted OOMs and prunes become `skipped` rows; the rest is
measured here or, given a worker pool (attnbench.isolation), in a worker process that calls this same
module. Measuring a case = resolve its inputs once (attnbench.workloads.inputs), verify its output,
build its timed workload once, run the suite's metrics (attnbench.metrics) in row order, check the timed
closure's output again (attnbench.verify.recheck), then (suite key `profile`) run the workload once more under
the profiler (attnbench.profiling).

A failing case never kills the sweep: exceptions become rows with status error / oom / timeout and a
one-line message; unavailable mechanisms become skipped rows.
Scheduling (rounds, workers, Ray) is attnbench.runner and attnbench.executors; this module measures.
"""

from __future__ import annotations

import atexit
import datetime as _dt
import gc
import os
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from attnbench import profiling, registry
from attnbench.errors import AttnbenchError, MechanismUnavailable
from attnbench.layers import PER_CASE_CACHES
from attnbench.measure import preemption
from attnbench.measure.env import env_id as make_env_id
from attnbench.measure.env import fingerprint, machine_id
from attnbench.measure.timing import CaseTimeout
from attnbench.metrics import accuracy, cost, latency, memory, rank
from attnbench.metrics.base import MetricContext, PartialRows
from attnbench.metrics.row import MetricRow
from attnbench.plan import Case
from attnbench.predict import prune_reason, too_slow_reason
from attnbench.results import SCHEMA_VERSION
from attnbench.rounds import History
from attnbench.suite import Suite
from attnbench.verify import Verdict, recheck, snapshot, verify_case
from attnbench.workloads.build import build_workload
from attnbench.workloads.inputs import CaseInputs

# the built-in metrics by suite name, in row order: those that run the timed workload first (latency before
# memory and cost: rates derive from its median), then those that do not
METRICS = {m.name: m for m in (latency.METRIC, memory.METRIC, cost.METRIC, rank.METRIC, accuracy.METRIC)}
PRIMARY_ROW_METRIC = {
    "latency": "latency",
    "memory": "peak_memory",
    "flops": "flops",
    "rank": "out_erank",
    "accuracy": "top1",
}
WORKER_MARGIN_S = 2.0  # the worker checks timeout_s between calls; the parent kills a call that hangs

Rows = list[dict[str, Any]]
Samples = dict[str, list[float]]


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def this_worker(pid: int | None = None) -> str:
    """The `worker` column: host/pid of the process that measured the row."""
    import socket

    return f"{socket.gethostname()}/pid{pid or os.getpid()}"


# -- the process -------------------------------------------------------------------------------------
def apply_precision_settings(suite: Any) -> None:
    """TF32 off unless the suite says `tf32: true` (docs/design.md, "Measurement"); the fingerprint records it."""
    torch.backends.cuda.matmul.allow_tf32 = suite.tf32
    torch.backends.cudnn.allow_tf32 = suite.tf32
    torch.set_float32_matmul_precision("high" if suite.tf32 else "highest")


def cached_peaks(device: str, fp: dict[str, Any]) -> dict[str, Any] | None:
    """The peaks `attnbench env --probe` measured for the environment `fp`, or None."""
    try:
        from attnbench.measure.peaks import load_peaks

        return load_peaks(device, fp=fp)
    except Exception:  # a corrupt cache must not stop a run; the rows just lack frac_*
        return None


@dataclass
class ProcessSetup:
    fingerprint: dict[str, Any]  # of this process, plus what the scheduler records about it (extra_fp)
    env_id: str  # of `fingerprint`
    peaks: dict[str, Any] | None  # cached peaks of this process's own fingerprint (before extra_fp)
    threads: int | None = None  # the torch threads set (None: left at torch's default, GPU)
    free_cores: float | None = None  # measured before the threads were chosen (CPU)
    message: str = ""  # what the user should hear about the choice (auto below the default, too many threads)
    warn: bool = False  # `message` is a warning (explicit threads above the free cores)


TORCH_DEFAULT_THREADS = torch.get_num_threads()  # torch's default, before any suite set it


def choose_threads(suite: Suite, threads: int | None, probe: bool) -> ProcessSetup:
    """The torch threads for a CPU suite: explicit (`threads`, else the suite's), or `auto` (None) = torch's
    default, at most the free cores; free cores are measured for `auto` or when `probe` (the run's driver), and
    an explicit count above them gives a warning. GPU: as given (auto = torch's default)."""
    threads = threads if threads is not None else suite.threads
    if suite.device != "cpu" or not (probe or threads is None):
        return ProcessSetup({}, "", None, threads)
    free = preemption.free_cores()
    usable = preemption.usable_cpus()
    if threads is not None:
        warning = preemption.threads_warning(threads, free, usable)
        return ProcessSetup({}, "", None, threads, free, warning or "", bool(warning))
    chosen = preemption.auto_threads(TORCH_DEFAULT_THREADS, free)
    message = ""
    if chosen < TORCH_DEFAULT_THREADS:
        message = (
            f"threads: auto -> {chosen} (torch's default {TORCH_DEFAULT_THREADS}; {free:.1f} of {usable} cores "
            "are free)"
        )
    return ProcessSetup({}, "", None, chosen, free, message)


def prepare_process(
    suite: Suite,
    *,
    threads: int | None = None,
    load_plugins: bool = False,
    extra_fp: dict[str, Any] | None = None,
    probe: bool = False,
) -> ProcessSetup:
    """Ready this process to measure `suite`'s cases: built-in mechanisms and the suite's plugins registered
    (`load_plugins`: a fresh worker), torch threads (`threads`, default the suite's; `choose_threads`), precision
    settings. Returns its fingerprint (updated with `extra_fp`), env_id, cached peaks and the threads chosen."""
    if load_plugins:
        from attnbench.loading import load_mechanisms  # a fresh worker: this entry point's one load

        load_mechanisms()
        registry.load_plugins(suite.plugins, base_dir=Path(suite.path).parent if suite.path else None)
    choice = choose_threads(suite, threads, probe)
    threads = choice.threads
    if threads is not None:
        torch.set_num_threads(threads)
    apply_precision_settings(suite)
    fp = fingerprint(suite.device, threads)
    if choice.free_cores is not None:
        fp["free_cores"] = round(choice.free_cores, 2)  # volatile: recorded, not part of env_id
    peaks = cached_peaks(suite.device, fp)
    if extra_fp:
        fp.update(extra_fp)
    fp["machine_id"] = machine_id(fp)
    return ProcessSetup(fp, make_env_id(fp), peaks, threads, choice.free_cores, choice.message, choice.warn)


def collect_garbage() -> None:
    """Free what a case left in reference cycles, then freeze the survivors (gc.freeze): they are the process's
    long-lived objects (torch, the mechanisms, lazily imported modules), which a full collection would
    otherwise walk again after every case, at a cost (a tenth of a second or more on a small CPU) far above
    a small case's timing. What a later case leaves behind is still collected. At exit they are unfrozen
    (registered below), so the interpreter's shutdown frees them as usual (extension modules check for leaks
    then)."""
    gc.collect()
    gc.freeze()


atexit.register(gc.unfreeze)


# -- one case ----------------------------------------------------------------------------------------
def primary_metric(suite: Suite) -> str:
    """The row metric a skipped/failed case's status row is filed under (latency when timed)."""
    for metric in ("latency", "rank", "accuracy", "memory", "flops"):
        if metric in suite.metrics:
            return PRIMARY_ROW_METRIC[metric]
    return PRIMARY_ROW_METRIC[suite.metrics[0]]


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
    if isinstance(exc, oom_types) or any(
        m in lowered for m in ("out of memory", "can't allocate memory", "cannot allocate memory")
    ):
        return "oom", first[:300]
    return "error", first[:500]


def oom_key(case: Case) -> tuple:
    """A batch ladder: cases that differ only in batch (an OOM at batch b predicts one above b)."""
    return (
        case.mechanism,
        case.level,
        case.variant,
        case.pass_,
        case.dtype,
        case.height,
        case.width,
        case.heads,
        case.dim,
        case.hardware,
    )


class CaseExecutor:
    """Measures cases in this process for one run (`run_id`), rows marked with `env_id`."""

    def __init__(
        self, suite: Suite, run_id: str, env_id: str = "", *, peaks: dict[str, Any] | None = None, debug: bool = False
    ):
        self.suite = suite
        self.run_id = run_id
        self.env_id = env_id
        self.peaks = peaks  # measured peaks (env --probe), for frac_* rows and the time prediction
        self.debug = debug
        self.oom_at: dict[tuple, int] = {}  # oom_key -> smallest batch that ran out of memory

    def row(self, case: Case, started: str, r: MetricRow, *, status: str = "ok", message: str = "") -> dict[str, Any]:
        row = case.row_fields()
        row.update(
            schema_version=SCHEMA_VERSION,
            run_id=self.run_id,
            metric=r.metric,
            value=r.value,
            unit=r.unit,
            stat=r.stat,
            status=status,
            message=message,
            source=r.source,
            note=r.note,
            env_id=self.env_id,
            started_at=started,
        )
        return row

    def status_row(self, case: Case, started: str, status: str, message: str) -> dict[str, Any]:
        return self.row(case, started, MetricRow(primary_metric(self.suite), None, ""), status=status, message=message)

    def note_oom(self, case: Case, rows: Rows) -> None:
        if rows and rows[0]["status"] == "oom":
            key = oom_key(case)
            self.oom_at[key] = min(case.batch, self.oom_at.get(key, case.batch))

    def run(
        self, case: Case, *, prior: History | None = None, time_only: bool = False, pool: Any = None
    ) -> tuple[Rows, Samples]:
        """Rows of one case in one visit (a round, or one sweep of it): planned skips, predicted OOMs and prunes
        here; the rest measured in-process or in `pool`'s worker. time_only (visits before the last): latency
        samples and no rows when all went well; `prior`: the case's earlier rounds and this round's earlier
        sweeps (attnbench.rounds.History)."""
        started = now()
        if case.skip:
            return [self.status_row(case, started, "skipped", case.skip)], {}
        oom_batch = self.oom_at.get(oom_key(case))
        if oom_batch is not None and case.batch > oom_batch:
            message = f"oom_predicted: batch {oom_batch} ran out of memory"
            return [self.status_row(case, started, "skipped", message)], {}
        pruned = prune_reason(case, self.suite) or too_slow_reason(case, self.suite, self.peaks)
        if pruned:
            return [self.status_row(case, started, "skipped", pruned)], {}
        if pool is not None:
            timeout = self.suite.timeout_s
            try:
                tag, payload = pool.run((case, prior, time_only), timeout, timeout * 1.1 + WORKER_MARGIN_S)
            except RuntimeError as exc:  # the worker could not start (e.g. memory_limit_gb too small)
                tag, payload = "crash", str(exc)
            if tag == "done":
                rows, samples = payload
            else:
                rows, samples = [self.status_row(case, started, tag, payload)], {}
        else:
            rows, samples = self.measure(case, started, prior=prior, time_only=time_only)
        self.note_oom(case, rows)
        return rows, samples

    def measure(
        self, case: Case, started: str | None = None, *, prior: History | None = None, time_only: bool = False
    ) -> tuple[Rows, Samples]:
        """Measure one case in this process; any exception becomes a status row (the sweep goes on)."""
        started = started or now()
        try:
            inputs = CaseInputs.of(case)
            if time_only:
                rows, samples = [], latency.visit_samples(build_workload(inputs), case, self.suite)
            else:
                rows, samples = self._measure(case, inputs, started, prior or History())
        except Exception as exc:  # a failing case becomes rows; the sweep goes on
            if self.debug:
                traceback.print_exc()
            status, message = classify_exception(exc)
            if isinstance(exc, PartialRows):
                rows = [self.status_row(case, started, "skipped", message)]
                return rows + [self.row(case, started, r) for r in exc.rows], {}
            rows, samples = [self.status_row(case, started, status, message)], {}
        finally:
            for clear in PER_CASE_CACHES:
                clear()
            collect_garbage()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        return rows, samples

    def _measure(self, case: Case, inputs: CaseInputs, started: str, prior: History) -> tuple[Rows, Samples]:
        suite = self.suite
        ctx = MetricContext(case, inputs, suite, self.peaks, prior)
        chosen = [m for name, m in METRICS.items() if name in suite.metrics]
        timed = [m for m in chosen if m.uses_workload]
        later: list[MetricRow] = []  # rows of metrics that do not run the workload: computed first, written last
        for metric in chosen:
            if not metric.uses_workload:
                later += metric.rows(ctx)
        if "accuracy" not in suite.metrics:  # the paper's accuracy beside the costs (source=reported, cited)
            later += accuracy.reported_beside_costs(case)
        rows: Rows = []
        verdict = None
        if timed and suite.verify:
            verdict = verify_case(inputs)
            if verdict is not None:
                rows += self._verify_rows(case, started, verdict)
                if not verdict.ok:  # a wrong result's timing means nothing: report the error, skip timing
                    return [self.status_row(case, started, "error", verdict.message())] + rows, ctx.samples
        static: list[MetricRow] = []
        profiled = None  # the suite's `profile: true`: the workload once more under the profiler (attnbench.profiling)
        if timed:
            ctx.work = build_workload(inputs)  # built once, for every metric that runs it
            recorded = snapshot(ctx.work.fn()) if verdict is not None else None  # verified again after timing
            checked = list(rows)
            for metric in timed:
                rows += [self.row(case, started, r) for r in metric.rows(ctx)]
            failed = recheck(recorded, ctx.work.fn(), verdict) if recorded is not None else None
            if failed:
                return [self.status_row(case, started, "error", failed)] + checked, {}
            if suite.profile:
                profiled = profiling.profile_workload(ctx.work.fn, case.device)
            static = list(ctx.work.static)
            ctx.work = None
        rows += [self.row(case, started, r) for r in cost.with_rates(static + later, ctx.median_s)]
        if not rows:
            raise AttnbenchError(f"no metric produced rows for metrics {list(suite.metrics)}")
        profiling.attach(rows, profiled)
        return rows, ctx.samples

    def _verify_rows(self, case: Case, started: str, verdict: Verdict) -> Rows:
        status = "ok" if verdict.ok else "error"
        message = "" if verdict.ok else verdict.message()
        note = f"output {verdict.note}; tolerance {verdict.tolerance:.3g}"
        rows = [
            self.row(
                case, started, MetricRow("rel_err", verdict.rel_err, "", note=note), status=status, message=message
            )
        ]
        if verdict.grad_rel_err is not None:
            grad = MetricRow("grad_rel_err", verdict.grad_rel_err, "", note=f"grads {verdict.note}")
            rows.append(self.row(case, started, grad, status=status, message=message))
        return rows
