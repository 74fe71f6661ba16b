"""latency (ms: median, mean, min, p20, p80, std, n), throughput (items/s), tokens_per_s; on a GPU also its
clocks, power and temperature, read right after the timed repeats.

With several rounds (attnbench.rounds) the statistics are of the round values (the round's median, or with
several sweeps its fastest sweep median), the last round's included.
"""

from __future__ import annotations

from attnbench import rounds
from attnbench.measure.env import gpu_telemetry
from attnbench.measure.timing import RepeatPolicy, time_fn
from attnbench.metrics.base import Metric, MetricContext
from attnbench.metrics.row import MetricRow
from attnbench.plan import Case
from attnbench.suite import Suite
from attnbench.workloads.closure import Workload

STAT_ORDER = ("median", "mean", "min", "p20", "p80", "std", "n")


def time_repeats(work: Workload, case: Case, suite: Suite) -> list[float]:
    """Latency repeats of one visit (a round, or one sweep of it) in ms: warm-up outside; the suite's repeat policy,
    its share per sweep (attnbench.rounds.sweep_policy)."""
    policy = RepeatPolicy(suite.repeats.min, suite.repeats.max, suite.repeats.min_time_s, suite.repeats.target_ci)
    policy = rounds.sweep_policy(policy, suite.sweeps)
    secs = time_fn(
        work.fn,
        device=case.device,
        warmup=suite.warmup,
        policy=policy,
        timeout_s=suite.timeout_s,
        flush_l2=suite.flush_l2 and case.level == "op",
        cuda_graph=suite.cuda_graphs,
    )
    return [s * 1e3 for s in secs]


def latency_rows(ctx: MetricContext) -> list[MetricRow]:
    work = ctx.work
    ctx.samples["latency"] = time_repeats(work, ctx.case, ctx.suite)
    stats, note = rounds.latency_summary(ctx.samples["latency"], ctx.prior)
    rows = [
        MetricRow("latency", stats[stat], "count" if stat == "n" else "ms", note=note, stat=stat) for stat in STAT_ORDER
    ]
    median_s = ctx.median_s = stats["median"] / 1e3
    rows.append(MetricRow("throughput", work.items / median_s, "items/s", stat="median"))
    rows.append(MetricRow("tokens_per_s", work.tokens / median_s, "tokens/s", stat="median"))
    if median_s and ctx.case.device == "cuda":  # clocks/power/temperature right after the timed repeats
        for metric, (value, unit) in gpu_telemetry().items():
            rows.append(MetricRow(metric, value, unit, note="nvidia-smi, read after the timed repeats"))
    return rows


METRIC = Metric("latency", latency_rows, uses_workload=True)
