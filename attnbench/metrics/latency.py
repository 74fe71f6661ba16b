"""latency (ms: median, mean, min, p20, p80, std, n), throughput (items/s), tokens_per_s; on a GPU also
host_overhead (ms: the host's time to issue a call beyond the device's time to run it, of the last visit's
repeats) and its clocks, power and temperature, read right after the timed repeats.

Warm-up: `warmup` calls and `warmup_s` seconds. GPU: the L2 flush before every repeat at op and mixer level
(`flush_l2`; a model's working set is far larger than L2 anyway); `cuda_graphs` times unrolled graph replays
(attnbench.measure.timing).

With several rounds (attnbench.rounds) the statistics are of the round values (the round's median, or with
several sweeps its fastest sweep median), the last round's included.

Every visit's repeats carry their preempted flags (attnbench.measure.preemption; on a GPU all of a visit's
repeats are flagged when nvidia-smi shows a throttle reason before or after them); a visit whose repeats were
mostly preempted is timed again, up to the suite's `retries` times, and the least preempted attempt is kept
(`timed_visit`). The samples of a visit: `latency` (ms), `preempted` (1/0 per repeat, where measured) and
`retries` (one count); attnbench.contention turns them into the case's `preempted` and `retries` rows and
its `contended` note. A compiled case (attnbench.metrics.compile_cost) also leaves `compile_s` (its first call,
before the warm-up) and `recompiles` (graphs compiled during the kept attempt's timed repeats).
"""

from __future__ import annotations

import time

from attnbench import rounds
from attnbench.measure import preemption
from attnbench.measure.compiler import FirstCall
from attnbench.measure.env import gpu_telemetry, gpu_throttle_reasons
from attnbench.measure.timing import CaseTimeout, RepeatPolicy, Timings, time_fn
from attnbench.metrics import compile_cost
from attnbench.metrics.base import Metric, MetricContext
from attnbench.metrics.row import MetricRow
from attnbench.plan import Case
from attnbench.suite import Suite
from attnbench.workloads.closure import Workload

STAT_ORDER = ("median", "mean", "min", "p20", "p80", "std", "n")
FLUSHED_LEVELS = ("op", "mixer")  # GPU levels whose repeats start with a cold L2 (suite key flush_l2)


def time_repeats(work: Workload, case: Case, suite: Suite, timeout_s: float | None = None) -> Timings:
    """Latency repeats of one attempt at a visit (a round, or one sweep of it) in ms, with their preempted flags:
    warm-up outside; the suite's repeat policy, its share per sweep (attnbench.rounds.sweep_policy)."""
    policy = RepeatPolicy(suite.repeats.min, suite.repeats.max, suite.repeats.min_time_s, suite.repeats.target_ci)
    policy = rounds.sweep_policy(policy, suite.sweeps)
    cuda = case.device == "cuda"
    before = gpu_throttle_reasons() if cuda else None
    secs = time_fn(
        work.fn,
        device=case.device,
        warmup=suite.warmup,
        warmup_s=suite.warmup_s,
        policy=policy,
        timeout_s=suite.timeout_s if timeout_s is None else timeout_s,
        flush_l2=suite.flush_l2 and case.level in FLUSHED_LEVELS,
        cuda_graph=suite.cuda_graphs,
        compiles=compile_cost.graph_counter(case),
    )
    ms = secs.scaled(1e3)
    if cuda:
        hot = preemption.throttled(before, gpu_throttle_reasons())
        ms.preempted = [] if hot is None else [hot] * len(ms)
    return ms


def timed_visit(attempt, retries: int, timeout_s: float) -> tuple[Timings, int]:
    """(the kept attempt, retries made): `attempt(timeout_s)` times the visit once; while its repeats are mostly
    preempted it is timed again, at most `retries` times and only while the attempts so far plus one more fit
    in half of `timeout_s` (a retry never turns a case into a timeout). Kept: the least preempted attempt (the
    first of equals)."""
    start = time.perf_counter()
    best = None
    made = 0
    while True:
        began = time.perf_counter()
        took = attempt(timeout_s - (began - start))
        if best is None or preemption.fraction(took.preempted) < preemption.fraction(best.preempted):
            best = took
        spent = time.perf_counter() - start
        last = time.perf_counter() - began
        if not preemption.mostly_preempted(took.preempted) or made >= retries or spent + last > timeout_s / 2:
            return best, made
        made += 1


def visit_samples(work: Workload, case: Case, suite: Suite, first: FirstCall | None = None) -> dict[str, list[float]]:
    """One visit's samples for FILE.samples.csv: latency (ms), preempted (1/0 per repeat, where measured),
    retries (the number of re-timings); a compiled case's compile_s and recompiles. `first`: the visit's timed
    first call when the caller made it (else made here, for a compiled case); the timeout covers it."""
    return _visit(work, case, suite, first)[0]


def _visit(
    work: Workload, case: Case, suite: Suite, first: FirstCall | None = None
) -> tuple[dict[str, list[float]], Timings]:
    """(one visit's samples, its kept attempt)."""
    if first is None:
        first = compile_cost.first_visit_call(work.fn, case)
    budget = suite.timeout_s - (first.seconds if first is not None else 0.0)
    if budget <= 0:
        raise CaseTimeout(
            f"the first call (compilation) took {first.seconds:.1f} s, past timeout_s={suite.timeout_s:g}"
        )
    kept, made = timed_visit(lambda left: time_repeats(work, case, suite, left), suite.retries, budget)
    samples: dict[str, list[float]] = {"latency": list(kept)}
    if kept.preempted:
        samples["preempted"] = [float(f) for f in kept.preempted]
    samples["retries"] = [float(made)]
    samples.update(compile_cost.visit_samples(first, kept.recompiles))
    return samples, kept


def latency_rows(ctx: MetricContext) -> list[MetricRow]:
    work = ctx.work
    first = compile_cost.first_visit_call(work.fn, ctx.case)
    samples, kept = _visit(work, ctx.case, ctx.suite, first)
    ctx.samples.update(samples)
    stats, note = rounds.latency_summary(ctx.samples["latency"], ctx.prior)
    note = compile_cost.latency_note(ctx.case, ctx.samples, note)
    rows = [
        MetricRow("latency", stats[stat], "count" if stat == "n" else "ms", note=note, stat=stat) for stat in STAT_ORDER
    ]
    median_s = ctx.median_s = stats["median"] / 1e3
    rows.append(MetricRow("throughput", work.items / median_s, "items/s", stat="median"))
    rows.append(MetricRow("tokens_per_s", work.tokens / median_s, "tokens/s", stat="median"))
    if kept.host_overhead is not None:
        unroll = f"; graph replays of {kept.unroll} calls" if kept.unroll > 1 else ""
        note = f"last visit: median issue time per call minus median device time, at least 0{unroll}"
        rows.append(MetricRow("host_overhead", kept.host_overhead, "ms", note=note, stat="median"))
    if median_s and ctx.case.device == "cuda":  # clocks/power/temperature right after the timed repeats
        for metric, (value, unit) in gpu_telemetry().items():
            rows.append(MetricRow(metric, value, unit, note="nvidia-smi, read after the timed repeats"))
    return rows + compile_cost.rows(ctx.case, first, ctx.samples)


METRIC = Metric("latency", latency_rows, uses_workload=True)
